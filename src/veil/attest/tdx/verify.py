"""TDX quote verification: signatures, PCK chain, CRLs, collateral and time, through dcap-qvl.

dcap-qvl (Phala Network's Rust DCAP verifier) checks, against Intel's SGX Root CA: the TCB info and
QE identity signatures and validity windows, the PCK chain and CRLs, the QE report signature and its
binding of the attestation key, the quote signature, and the platform's TCB level. It reports
failures as English strings; ``_reason`` turns them into stable reason codes. Policy (which TCB
statuses are fine, debug, reference values) is not decided here: see validate.py.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from veil.attest.chain import CERT_ERRORS
from veil.attest.claims import Claims
from veil.attest.tdx.abi import TdxQuote, parse_quote
from veil.attest.trust import TrustRoots
from veil.errors import ParseError, VerificationError

SIMULATED_MARKER = "SIMULATED"  # in every sim-tdx certificate subject (see veil.attest.sim.tdx)

COLLATERAL_FIELDS = (
    "pck_crl_issuer_chain",
    "root_ca_crl",
    "pck_crl",
    "tcb_info_issuer_chain",
    "tcb_info",
    "tcb_info_signature",
    "qe_identity_issuer_chain",
    "qe_identity",
    "qe_identity_signature",
)
_CHAIN_FIELDS = ("pck_crl_issuer_chain", "tcb_info_issuer_chain", "qe_identity_issuer_chain")

# dcap-qvl message fragment -> reason code; first match wins, so order matters.
_REASONS: tuple[tuple[str, str], ...] = (
    ("issue date is in the future", "tdx.collateral_not_yet_valid"),
    ("notvalidyet", "tdx.collateral_not_yet_valid"),
    ("crlexpired", "tdx.collateral_expired"),
    ("expired", "tdx.collateral_expired"),
    ("no matching tcb level", "tdx.no_tcb_level"),
    ("tcb status is invalid", "tdx.tcb_revoked"),
    ("revoked", "tdx.pck_revoked"),
    ("isv enclave report signature", "tdx.quote_signature_invalid"),
    ("qe report hash mismatch", "tdx.qe_binding_invalid"),
    ("signature is invalid for qe_report", "tdx.qe_report_signature_invalid"),
    ("signature is invalid for tcb_info", "tdx.collateral_signature_invalid"),
    ("signature is invalid for qe_identity", "tdx.collateral_signature_invalid"),
    ("invalidcrlsignature", "tdx.collateral_signature_invalid"),
    ("failed to decode tcbinfo", "tdx.collateral_malformed"),
    ("failed to decode qeidentity", "tdx.collateral_malformed"),
    ("crl", "tdx.collateral_malformed"),
    ("qe identity", "tdx.qe_identity_mismatch"),
    ("qe mrsigner", "tdx.qe_identity_mismatch"),
    ("qe isvprodid", "tdx.qe_identity_mismatch"),
    ("qe miscselect", "tdx.qe_identity_mismatch"),
    ("qe attributes", "tdx.qe_identity_mismatch"),
    ("fmspc", "tdx.collateral_mismatch"),
    ("pck", "tdx.pck_chain_invalid"),
    ("certificate", "tdx.pck_chain_invalid"),
    ("debug mode", "tdx.debug_forbidden"),
    ("decode quote", "tdx.quote_malformed"),
    ("unsupported", "tdx.unsupported_quote"),
)


def _reason(message: str) -> str:
    low = message.lower().replace(" ", "")
    for fragment, reason in _REASONS:
        if fragment.replace(" ", "") in low:
            return reason
    return "tdx.verification_failed"


@dataclass(frozen=True)
class TdxVerified:
    """A quote whose signatures, chain and collateral checked out, with its TCB evaluation."""

    quote: TdxQuote
    tcb_status: str
    advisory_ids: tuple[str, ...]
    fmspc: str
    tcb_date: str | None
    collateral_expires: datetime | None
    simulated: bool = False
    root_fingerprint: str = ""
    collateral_issued: datetime | None = None  # the latest issue date of TCB info, QE identity, CRLs
    crl_numbers: tuple[int, int] = (0, 0)  # (root CA CRL, PCK CRL)
    qe_status: str = ""
    qe_isvsvn: int | None = None


def to_timestamp(as_of: datetime | None) -> int:
    """Seconds since the epoch for ``as_of`` (None: now; naive datetimes are taken as UTC)."""
    if as_of is None:
        as_of = datetime.now(timezone.utc)
    elif as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=timezone.utc)
    return int(as_of.timestamp())


@dataclass(frozen=True)
class LoadedCollateral:
    """PCS collateral in dcap-qvl's form, with the root all its chains end in."""

    collateral: "dcap_qvl.QuoteCollateralV3"
    root_der: bytes
    root_fingerprint: str
    simulated: bool


def load_collateral(collateral: dict[str, Any], trust: TrustRoots | None = None) -> LoadedCollateral:
    """Check Veil's collateral JSON (Intel PCS field names) and that every chain in it ends in one
    trusted root (Intel's pinned SGX Root CA, or a simulation root the caller trusts)."""
    trust = trust or TrustRoots.production()
    if not isinstance(collateral, dict):
        raise ParseError("tdx.collateral_malformed", "collateral must be a JSON object")
    missing = [f for f in COLLATERAL_FIELDS if not isinstance(collateral.get(f), str)]
    if missing:
        raise ParseError("tdx.collateral_malformed", f"collateral lacks {', '.join(missing)}")
    parsed = _parse_collateral(tuple(collateral[f] for f in COLLATERAL_FIELDS))
    kind = trust.classify("intel", parsed.root_fingerprint)
    root_der, fingerprint = parsed.root_der, parsed.root_fingerprint
    if kind is None:
        subject = x509.load_der_x509_certificate(root_der).subject.rfc4514_string()
        if SIMULATED_MARKER in subject:
            raise VerificationError(
                "tdx.collateral_root_untrusted",
                f"this evidence comes from a SIMULATED TEE (sim-tdx, root {fingerprint}), not from Intel "
                "hardware; it is refused unless you explicitly trust that simulation root",
            )
        raise VerificationError(
            "tdx.collateral_root_untrusted", f"the collateral does not end in the Intel SGX Root CA ({subject})"
        )
    return LoadedCollateral(parsed.collateral, root_der, fingerprint, kind == "simulation")


@dataclass(frozen=True)
class _Parsed:
    collateral: "dcap_qvl.QuoteCollateralV3"
    root_der: bytes
    root_fingerprint: str


@functools.lru_cache(maxsize=32)
def _parse_collateral(fields: tuple[str, ...]) -> _Parsed:
    """Parse once per distinct collateral (the same PCS collateral arrives with every quote of a
    platform): the chains' common root, and dcap-qvl's form. Trust is decided by the caller."""
    values = dict(zip(COLLATERAL_FIELDS, fields))
    roots: set[bytes] = set()
    for field in _CHAIN_FIELDS:
        try:
            certs = x509.load_pem_x509_certificates(values[field].encode())
        except CERT_ERRORS as exc:
            raise ParseError("tdx.collateral_malformed", f"{field}: {exc}") from exc
        roots.add(certs[-1].public_bytes(Encoding.DER))
    if len(roots) != 1:
        raise VerificationError("tdx.collateral_root_untrusted", "the collateral's chains end in different roots")
    root_der = roots.pop()
    try:
        loaded = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(values))
    except (ValueError, TypeError) as exc:
        raise ParseError("tdx.collateral_malformed", str(exc)) from exc
    return _Parsed(loaded, root_der, hashlib.sha256(root_der).hexdigest())


def _pck_listed_in_crl(quote: TdxQuote, collateral: dict[str, Any]) -> bool:
    """Why dcap-qvl refused the PCK chain, when the reason is revocation: it reports any chain
    failure as one message. Only names the reason of a refusal dcap-qvl already made; the CRL
    counts only when signed by the PCK CA of the collateral's (already trusted) chain."""
    try:
        pck = x509.load_pem_x509_certificates(quote.qe_cert.pck_chain)[0] if quote.qe_cert else None
        issuer = x509.load_pem_x509_certificates(collateral["pck_crl_issuer_chain"].encode())[0]
        raw = collateral["pck_crl"]
        crl = x509.load_der_x509_crl(bytes.fromhex(raw)) if not raw.startswith("-----") else x509.load_pem_x509_crl(raw.encode())
        if pck is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            return False
    except (*CERT_ERRORS, KeyError):
        return False
    return crl.get_revoked_certificate_by_serial_number(pck.serial_number) is not None


def _utc(seconds: Any) -> datetime | None:
    return datetime.fromtimestamp(seconds, timezone.utc) if isinstance(seconds, int) else None


def verify_quote(
    quote: bytes | TdxQuote,
    collateral: dict[str, Any],
    *,
    as_of: datetime | None = None,
    trust: TrustRoots | None = None,
) -> TdxVerified:
    """Verify a TDX quote against PCS collateral as of ``as_of``; raise VeilError on failure.

    dcap-qvl verifies against the root the collateral's chains end in, once that root is known
    to be trusted: Intel's for hardware, a simulation root (``verify_with_root_ca``) for sim-tdx.
    """
    parsed = quote if isinstance(quote, TdxQuote) else parse_quote(quote)
    loaded = load_collateral(collateral, trust)
    now = to_timestamp(as_of)
    try:
        # claims_only: every cryptographic and time check, but no TCB-status policy here.
        raw = dcap_qvl.QuoteVerifier(loaded.root_der).verify_with_policy(
            parsed.raw, loaded.collateral, now, dcap_qvl.QuotePolicy.claims_only(now)
        )
        out = json.loads(raw.to_json())
    except ValueError as exc:
        msg = str(exc).replace("\n", " ")
        code = _reason(msg)
        if code == "tdx.pck_chain_invalid" and _pck_listed_in_crl(parsed, collateral):
            raise VerificationError("tdx.pck_revoked", f"the PCK CRL revokes this quote's PCK certificate ({msg})") from exc
        raise VerificationError(code, msg) from exc
    report: dict[str, Any] = next(iter(out.get("report", {}).values()), {})
    report = {**report.get("base", {}), **report}  # a TD 1.5 body nests the TD 1.0 fields under "base"
    # Belt and braces: the fields Veil exposes must be those dcap-qvl verified.
    if report.get("mr_td") != parsed.body.mr_td.hex() or report.get("report_data") != parsed.body.report_data.hex():
        raise VerificationError("tdx.parser_mismatch", "verified report differs from parsed quote")
    tcb = out.get("tcb", {})
    status = str(tcb.get("status", ""))
    if status == "Revoked":
        raise VerificationError("tdx.tcb_revoked", "Intel has revoked this platform's TCB")
    platform = out.get("platform", {})
    qe = out.get("qe", {})
    return TdxVerified(
        quote=parsed,
        tcb_status=status,
        advisory_ids=tuple(str(a) for a in tcb.get("advisory_ids", [])),
        fmspc=bytes(platform.get("pck", {}).get("fmspc", [])).hex(),
        tcb_date=platform.get("tcb_level", {}).get("tcbDate"),
        collateral_expires=_utc(out.get("earliest_expiration_date")),
        simulated=loaded.simulated,
        root_fingerprint=loaded.root_fingerprint,
        collateral_issued=_utc(out.get("latest_issue_date")),
        crl_numbers=(int(platform.get("root_ca_crl_num", 0)), int(platform.get("pck_crl_num", 0))),
        qe_status=str(qe.get("tcb_level", {}).get("tcbStatus", "")),
        qe_isvsvn=qe.get("report", {}).get("isv_svn"),
    )


def td_claims(quote: TdxQuote) -> dict[str, Any]:
    """The report-body part of TDX claims, shared with Azure TDX CVMs."""
    b = quote.body
    details: dict[str, Any] = {
        "quote_version": quote.header.version,
        "mr_seam": b.mr_seam.hex(),
        "mr_signer_seam": b.mr_signer_seam.hex(),
        "seam_attributes": b.seam_attributes.hex(),
        "td_attributes": b.td_attributes.hex(),
        "xfam": b.xfam.hex(),
        "mr_config_id": b.mr_config_id.hex(),
        "mr_owner": b.mr_owner.hex(),
        "mr_owner_config": b.mr_owner_config.hex(),
        **{f"rtmr{i}": r.hex() for i, r in enumerate(b.rtmrs)},
    }
    if b.mr_service_td is not None:
        details["mr_service_td"] = b.mr_service_td.hex()
    return details


def to_claims(verified: TdxVerified, platform: str | None = None) -> Claims:
    """Normalise a verified quote into Veil's Claims (MRTD is the measurement)."""
    platform = platform or ("sim-tdx" if verified.simulated else "tdx")
    b = verified.quote.body
    tcb: dict[str, Any] = {
        "status": verified.tcb_status,
        "advisory_ids": list(verified.advisory_ids),
        "tee_tcb_svn": b.tee_tcb_svn.hex(),
        "fmspc": verified.fmspc,
        "tcb_date": verified.tcb_date,
    }
    if b.tee_tcb_svn2 is not None:
        tcb["tee_tcb_svn2"] = b.tee_tcb_svn2.hex()
    details = td_claims(verified.quote)
    if verified.collateral_expires is not None:
        details["collateral_expires"] = verified.collateral_expires.isoformat()
    if verified.simulated:
        details["notice"] = "SIMULATED TEE: no hardware protection; for development and tests only"
    return Claims(
        platform=platform,
        measurement=b.mr_td.hex(),
        report_data=b.report_data,
        debug=b.debug,
        simulated=verified.simulated,
        tcb=tcb,
        details=details,
    )
