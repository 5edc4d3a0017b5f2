"""SEV-SNP cryptographic verification: report signature, VCEK/VLEK chain to a pinned ARK, CRL, time.

The chain is VCEK <- ASK <- ARK (or VLEK <- ASVK <- ARK); the ARK must be self-signed *and* its
SHA-256 DER fingerprint must be trusted. AMD's ARKs are pinned here; simulation roots are trusted
only when the caller adds them explicitly, and the same code verifies both, so the simulator
exercises exactly the path real hardware takes.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import SignatureAlgorithmOID

from veil.attest.chain import CERT_ERRORS
from veil.attest.claims import Claims
from veil.attest.snp.abi import (
    GENOA,
    MILAN,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    TURIN,
    Report,
    SigningKey,
    TcbVersion,
    tcb_reserved_ok,
)
from veil.attest.trust import TrustRoots
from veil.errors import ParseError, VerificationError

# ---- AMD VCEK/VLEK certificate extensions ---------------------------------------------------
OID_STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
OID_BL_SPL = "1.3.6.1.4.1.3704.1.3.1"
OID_TEE_SPL = "1.3.6.1.4.1.3704.1.3.2"
OID_SNP_SPL = "1.3.6.1.4.1.3704.1.3.3"
OID_UCODE_SPL = "1.3.6.1.4.1.3704.1.3.8"
OID_FMC_SPL = "1.3.6.1.4.1.3704.1.3.9"
OID_HWID = "1.3.6.1.4.1.3704.1.4"
OID_CSP_ID = "1.3.6.1.4.1.3704.1.5"  # VLEK only

# ---- pinned AMD intermediates (SHA-256 of the DER certificate; the ARKs are in veil.attest.trust) --
# fingerprint -> (product, "ask" | "asvk")
AMD_INTERMEDIATE_FINGERPRINTS: dict[str, tuple[str, str]] = {
    "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b": (MILAN, "ask"),
    "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521": (GENOA, "ask"),
    "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185": (TURIN, "ask"),
    "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5": (MILAN, "asvk"),
    "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372": (GENOA, "asvk"),
    "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c": (TURIN, "asvk"),
}
SIMULATED_MARKER = "SIMULATED"  # in every sim certificate subject (see veil.attest.sim)

_PSS_SALT = 48  # AMD signs with RSASSA-PSS, SHA-384, MGF1-SHA-384, 48-byte salt


@dataclass(frozen=True)
class ChainResult:
    """What a verified chain says: the product, whether it is a simulation, the key kind."""

    product: str
    simulated: bool
    key_kind: str  # "vcek" | "vlek"
    root_fingerprint: str
    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate
    tcb_extensions: dict[str, int]
    hwid: bytes | None
    crl: CrlInfo | None = None


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature and chain verified; ``claims()`` normalises it."""

    report: Report
    chain: ChainResult

    @property
    def product(self) -> str:
        return self.chain.product

    @property
    def reported_tcb(self) -> TcbVersion:
        return TcbVersion.decode(self.report.reported_tcb, self.product)

    def claims(self) -> Claims:
        return report_claims(self.report, self.product, simulated=self.chain.simulated, key_kind=self.chain.key_kind)


def report_claims(report: Report, product: str | None, *, simulated: bool = False, key_kind: str | None = None) -> Claims:
    """Normalise a parsed report to ``Claims`` (also used for rejected-but-parsed evidence)."""
    dump = report.to_json(product)
    details: dict[str, Any] = {
        "product": product,
        "version": report.version,
        "policy": dump["policy"],
        "guest_policy": dump["guest_policy"],
        "vmpl": report.vmpl,
        "guest_svn": report.guest_svn,
        "chip_id": dump["chip_id"],
        "host_data": dump["host_data"],
        "id_key_digest": dump["id_key_digest"],
        "author_key_digest": dump["author_key_digest"],
        "family_id": dump["family_id"],
        "image_id": dump["image_id"],
        "report_id": dump["report_id"],
        "platform_info": dump["platform_info"],
        "signing_key": key_kind or dump["signing_key"],
        "firmware": report.firmware,
        "committed_firmware": dump["committed_firmware"],
        "current_tcb": dump["current_tcb"],
        "committed_tcb": dump["committed_tcb"],
        "launch_tcb": dump["launch_tcb"],
    }
    if simulated:
        details["notice"] = "SIMULATED TEE: no hardware protection; for development and tests only"
    return Claims(
        platform="sim-snp" if simulated else "sev-snp",
        measurement=report.measurement.hex(),
        report_data=report.report_data,
        debug=report.debug,
        simulated=simulated,
        tcb=dump["reported_tcb"],
        details=details,
    )


# ---- loading -------------------------------------------------------------------------------


_T = TypeVar("_T")


def _quiet_load(loader: Callable[[bytes], _T], data: bytes) -> _T:
    """AMD VCEKs have serial number 0, which cryptography warns about: silence it here only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return loader(data)


# Parsed certificates are immutable, and the same ASK/ARK/VCEK arrive with every evidence:
# caching the parse saves time and keeps the (process-global) warning filter changes rare.
@functools.lru_cache(maxsize=256)
def _load_one(data: bytes) -> x509.Certificate:
    if data.lstrip().startswith(b"-----BEGIN"):
        return _quiet_load(x509.load_pem_x509_certificate, data)
    return _quiet_load(x509.load_der_x509_certificate, data)


@functools.lru_cache(maxsize=64)
def _load_bundle(pem: bytes) -> tuple[x509.Certificate, ...]:
    return tuple(_quiet_load(x509.load_pem_x509_certificates, pem))


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate, DER or PEM (``snp.malformed_certificate`` otherwise)."""
    try:
        return _load_one(bytes(data))
    except CERT_ERRORS as exc:
        raise ParseError("snp.malformed_certificate", f"cannot read certificate: {exc}") from None


def load_chain(pem: bytes) -> list[x509.Certificate]:
    """All certificates of a PEM bundle (ASK then ARK, as AMD's KDS serves it)."""
    if not pem or b"-----BEGIN CERTIFICATE-----" not in pem:
        raise VerificationError("snp.chain_incomplete", "no ASK/ARK certificates supplied")
    try:
        return list(_load_bundle(bytes(pem)))
    except CERT_ERRORS as exc:
        raise ParseError("snp.malformed_certificate", f"cannot read certificate chain: {exc}") from None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, lower-case hex: how roots are pinned."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


# ---- tiny DER readers for AMD's extension values -------------------------------------------------


def _der_tlv(data: bytes, tag: int) -> bytes:
    if len(data) < 2 or data[0] != tag:
        raise ParseError("snp.malformed_certificate", "unexpected VCEK extension encoding")
    length = data[1]
    off = 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 2 or len(data) < 2 + n:
            raise ParseError("snp.malformed_certificate", "bad DER length in VCEK extension")
        length = int.from_bytes(data[2 : 2 + n], "big")
        off = 2 + n
    if len(data) != off + length:
        raise ParseError("snp.malformed_certificate", "bad DER length in VCEK extension")
    return data[off:]


def _der_uint(data: bytes) -> int:
    body = _der_tlv(data, 0x02)
    if not body or body[0] & 0x80:
        raise ParseError("snp.malformed_certificate", "VCEK SPL extension is not a non-negative INTEGER")
    return int.from_bytes(body, "big")


def vcek_extensions(cert: x509.Certificate) -> dict[str, Any]:
    """AMD's extensions of a VCEK/VLEK: TCB SPLs, hwID (raw bytes), productName."""
    out: dict[str, Any] = {}
    for ext in cert.extensions:
        oid = ext.oid.dotted_string
        value = getattr(ext.value, "value", None)
        if not isinstance(value, bytes):
            continue
        if oid == OID_BL_SPL:
            out["bootloader"] = _der_uint(value)
        elif oid == OID_TEE_SPL:
            out["tee"] = _der_uint(value)
        elif oid == OID_SNP_SPL:
            out["snp"] = _der_uint(value)
        elif oid == OID_UCODE_SPL:
            out["microcode"] = _der_uint(value)
        elif oid == OID_FMC_SPL:
            out["fmc"] = _der_uint(value)
        elif oid == OID_HWID:
            out["hwid"] = value
        elif oid == OID_PRODUCT_NAME:
            out["product_name"] = _der_tlv(value, 0x16).decode("ascii", "replace")
    return out


# ---- signatures ----------------------------------------------------------------------------------


def _check_pss(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    """``cert`` must be signed by ``issuer`` with RSASSA-PSS SHA-384, as AMD does."""
    if cert.issuer != issuer.subject:
        raise VerificationError("snp.chain_signature_invalid", f"{what} was not issued by the next certificate (names differ)")
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationError("snp.wrong_key_type", f"issuer of the {what} does not have an RSA key")
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS or not isinstance(
        cert.signature_hash_algorithm, hashes.SHA384
    ):
        raise VerificationError("snp.chain_signature_invalid", f"{what} is not signed with RSASSA-PSS SHA-384")
    try:
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=_PSS_SALT),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise VerificationError("snp.chain_signature_invalid", f"the {what} signature does not verify") from None


def verify_report_signature(report: Report, key: ec.EllipticCurvePublicKey) -> None:
    """ECDSA P-384 / SHA-384 over bytes 0x000-0x29F with the VCEK or VLEK."""
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise VerificationError(
            "snp.unsupported_signature_algo", f"signature algorithm {report.signature_algo} is not ECDSA P-384 SHA-384"
        )
    if report.signing_key == SigningKey.NONE:
        raise VerificationError("snp.report_unsigned", "the report says no key signed it")
    r, s = report.signature_ints()
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise VerificationError(
            "snp.report_signature_invalid", "the report signature does not verify with the VCEK/VLEK"
        ) from None


def _check_time(cert: x509.Certificate, as_of: datetime, what: str) -> None:
    if as_of < cert.not_valid_before_utc:
        raise VerificationError(
            "snp.certificate_not_yet_valid", f"{what} is valid only from {cert.not_valid_before_utc.isoformat()}"
        )
    if as_of > cert.not_valid_after_utc:
        raise VerificationError("snp.certificate_expired", f"{what} expired on {cert.not_valid_after_utc.isoformat()}")


# AMD issues its ARK-signed CRLs about once a year, each valid a year and a week (Milan: issued
# 2025-05-06, next update 2026-05-12). Besides its own nextUpdate, a CRL older than this is stale.
MAX_CRL_AGE = timedelta(days=400)
CRL_CLOCK_SKEW = timedelta(minutes=10)


@dataclass(frozen=True)
class CrlInfo:
    """What the checked CRL said: for reports."""

    number: int | None
    last_update: datetime
    next_update: datetime | None
    revoked: int


@functools.lru_cache(maxsize=32)
def _load_crl(data: bytes) -> x509.CertificateRevocationList:
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def _check_crl(crl_der: bytes, ark: x509.Certificate, revocable: Iterable[x509.Certificate], as_of: datetime) -> CrlInfo:
    """AMD's KDS CRL is issued by the ARK and lists revoked ASKs/ASVKs (and VCEKs where issued).

    It must verify with the ARK, be current at ``as_of`` (last update <= as_of <= next update) and
    be at most ``MAX_CRL_AGE`` old; then no certificate of the chain it covers may be on it.
    """
    try:
        crl = _load_crl(bytes(crl_der))
    except (ValueError, TypeError) as exc:
        raise ParseError("snp.malformed_crl", f"cannot read CRL: {exc}") from None
    if crl.issuer != ark.subject:
        raise VerificationError("snp.crl_signature_invalid", "the CRL was not issued by the ARK")
    key = ark.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationError("snp.wrong_key_type", "the ARK key is not RSA")
    try:
        valid = crl.is_signature_valid(key)  # honours the CRL's own RSASSA-PSS parameters
    except (ValueError, TypeError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise VerificationError("snp.crl_signature_invalid", "the CRL signature does not verify with the ARK")
    if crl.next_update_utc is not None and as_of > crl.next_update_utc:
        raise VerificationError("snp.crl_expired", f"the CRL expired on {crl.next_update_utc.isoformat()}")
    if as_of + CRL_CLOCK_SKEW < crl.last_update_utc:
        raise VerificationError("snp.crl_not_yet_valid", f"the CRL is issued only on {crl.last_update_utc.isoformat()}")
    if as_of - crl.last_update_utc > MAX_CRL_AGE:
        raise VerificationError(
            "snp.crl_stale",
            f"the CRL was issued on {crl.last_update_utc.isoformat()}, more than {MAX_CRL_AGE.days} days ago",
        )
    for cert in revocable:
        if cert.issuer == crl.issuer and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise VerificationError(
                "snp.revoked", f"certificate {cert.subject.rfc4514_string()} serial {cert.serial_number} is revoked"
            )
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return CrlInfo(number, crl.last_update_utc, crl.next_update_utc, len(crl))


def _product_from_name(name: str | None) -> str | None:
    if not name:
        return None
    head = name.split("-", 1)[0]
    return head if head in (MILAN, GENOA, TURIN) else None


def product_of_certificate(cert: bytes) -> str | None:
    """The product a VCEK/VLEK names in its productName extension (None when unreadable)."""
    try:
        return _product_from_name(vcek_extensions(load_certificate(cert)).get("product_name"))
    except (ValueError, ParseError):
        return None


def _as_of(as_of: datetime | None) -> datetime:
    if as_of is None:
        return datetime.now(timezone.utc)
    if as_of.tzinfo is None:
        return as_of.replace(tzinfo=timezone.utc)
    return as_of


def verify_vcek_chain(
    vcek: bytes | x509.Certificate,
    chain_pem: bytes | None,
    *,
    trust: TrustRoots | None = None,
    as_of: datetime | None = None,
    crl: bytes | None = None,
) -> ChainResult:
    """Verify VCEK/VLEK <- ASK/ASVK <- ARK (signatures, pins, validity windows, CRL).

    Without ``chain_pem`` (or with an empty one), AMD's own ASK/ASVK and ARK for the product the
    certificate names are used (``amd_certificates``), so a VCEK or VLEK alone verifies.
    """
    try:
        return _verify_vcek_chain(vcek, chain_pem, trust=trust, as_of=as_of, crl=crl)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # cryptography parses certificate fields lazily: a corrupt key or extension surfaces here
        raise ParseError("snp.malformed_certificate", f"cannot read a certificate field: {exc}") from None


def _verify_vcek_chain(
    vcek: bytes | x509.Certificate,
    chain_pem: bytes | None,
    *,
    trust: TrustRoots | None,
    as_of: datetime | None,
    crl: bytes | None,
) -> ChainResult:
    trust = trust or TrustRoots.production()
    now = _as_of(as_of)
    leaf = vcek if isinstance(vcek, x509.Certificate) else load_certificate(vcek)
    certs = load_chain(chain_pem or _builtin_chain_for(leaf))
    roots = [c for c in certs if c.subject == c.issuer]
    inters = [c for c in certs if c.subject != c.issuer]
    if len(roots) != 1 or len(inters) != 1:
        raise VerificationError("snp.chain_incomplete", "the chain must hold exactly one ASK/ASVK and one ARK")
    root, inter = roots[0], inters[0]

    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey) or not isinstance(leaf_key.curve, ec.SECP384R1):
        raise VerificationError("snp.wrong_key_type", "the VCEK/VLEK key is not ECDSA P-384")
    for cert, what in ((inter, "ASK/ASVK"), (root, "ARK")):
        key = cert.public_key()
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 4096:
            raise VerificationError("snp.wrong_key_type", f"the {what} key is not RSA-4096")

    fp = fingerprint(root)
    trusted = trust.classify("amd", fp)
    if trusted is None:
        subject = root.subject.rfc4514_string()
        if SIMULATED_MARKER in subject:
            raise VerificationError(
                "snp.untrusted_root",
                f"this evidence comes from a SIMULATED TEE (sim-snp, root {fp}), not from AMD hardware; "
                "it is refused unless you explicitly trust that simulation root",
            )
        raise VerificationError("snp.untrusted_root", f"the ARK {subject} ({fp}) is not a trusted AMD root")
    simulated = trusted == "simulation"
    root_product = None if simulated else trust.amd_product(fp)

    _check_pss(root, root, "ARK (self-signature)")
    _check_pss(inter, root, "ASK/ASVK")
    _check_pss(leaf, inter, "VCEK/VLEK")
    for cert, what in ((leaf, "the VCEK/VLEK"), (inter, "the ASK/ASVK"), (root, "the ARK")):
        _check_time(cert, now, what)
    crl_info = _check_crl(crl, root, (inter, leaf), now) if crl is not None else None

    ext = vcek_extensions(leaf)
    name_product = _product_from_name(ext.get("product_name"))
    product = root_product or name_product
    if product is None:
        raise VerificationError("snp.unknown_product", "cannot tell the product (no productName in the VCEK)")
    if root_product and name_product and name_product != root_product:
        raise VerificationError("snp.product_mismatch", f"VCEK says {name_product} but chains to the {root_product} ARK")

    pinned = AMD_INTERMEDIATE_FINGERPRINTS.get(fingerprint(inter))
    leaf_is_vlek = OID_CSP_ID in {e.oid.dotted_string for e in leaf.extensions}
    key_kind = "vlek" if leaf_is_vlek else "vcek"
    if pinned and (pinned[1] == "asvk") != leaf_is_vlek:
        raise VerificationError("snp.signing_key_mismatch", f"a {key_kind.upper()} cannot be issued by AMD's {pinned[1].upper()}")
    if pinned and pinned[0] != product:
        raise VerificationError("snp.product_mismatch", f"the intermediate is {pinned[0]}'s, not {product}'s")
    tcb: dict[str, int] = {k: ext[k] for k in ("bootloader", "tee", "snp", "microcode", "fmc") if k in ext}
    return ChainResult(product, simulated, key_kind, fp, leaf, inter, root, tcb, ext.get("hwid"), crl_info)


def _builtin_chain_for(leaf: x509.Certificate) -> bytes:
    from veil.attest.snp.amd_certificates import builtin_chain

    product = _product_from_name(vcek_extensions(leaf).get("product_name"))
    kind = "vlek" if OID_CSP_ID in {e.oid.dotted_string for e in leaf.extensions} else "vcek"
    chain = builtin_chain(product, kind) if product else None
    if chain is None:
        raise VerificationError(
            "snp.chain_incomplete", "no ASK/ARK given and the certificate names no product Veil ships AMD's chain for"
        )
    return chain


def check_report_against_vcek(report: Report, chain: ChainResult) -> None:
    """The VCEK certifies one chip at one TCB: its extensions must match the report."""
    product = chain.product
    if report.product and report.product != product:
        raise VerificationError("snp.product_mismatch", f"report CPUID says {report.product}, chain says {product}")
    if not tcb_reserved_ok(report.reported_tcb, product):
        raise ParseError("snp.malformed_report", "reserved bytes of reported_tcb are not zero")
    want = {"vcek": SigningKey.VCEK, "vlek": SigningKey.VLEK}[chain.key_kind]
    if report.signing_key != want:
        raise VerificationError(
            "snp.signing_key_mismatch",
            f"the report says it was signed by the {SigningKey(report.signing_key).name} but the certificate is a {chain.key_kind.upper()}",
        )
    tcb = TcbVersion.decode(report.reported_tcb, product).to_json()
    needed = ["bootloader", "tee", "snp", "microcode"] + (["fmc"] if product == TURIN else [])
    for name in needed:
        if name not in chain.tcb_extensions:
            raise VerificationError("snp.tcb_mismatch", f"the certificate has no {name} SPL extension")
        if chain.tcb_extensions[name] != tcb[name]:
            raise VerificationError(
                "snp.tcb_mismatch",
                f"reported_tcb {name}={tcb[name]} but the certificate is for {name}={chain.tcb_extensions[name]}",
            )
    if chain.key_kind == "vcek":
        hwid = chain.hwid
        if hwid is None:
            raise VerificationError("snp.hwid_mismatch", "the VCEK has no hwID extension")
        expected = report.chip_id[:8] if product == TURIN else report.chip_id
        if report.mask_chip_key or len(hwid) != len(expected) or hwid != expected:
            raise VerificationError("snp.hwid_mismatch", "the report's chip_id is not the chip the VCEK was issued to")


def verify_report(
    report: Report,
    vcek: bytes,
    chain_pem: bytes | None,
    *,
    trust: TrustRoots | None = None,
    as_of: datetime | None = None,
    crl: bytes | None = None,
) -> VerifiedReport:
    """All cryptographic checks of a parsed report; raises VerificationError/ParseError."""
    chain = verify_vcek_chain(vcek, chain_pem, trust=trust, as_of=as_of, crl=crl)
    key = chain.leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("snp.wrong_key_type", "the VCEK/VLEK key is not ECDSA P-384")
    verify_report_signature(report, key)
    check_report_against_vcek(report, chain)
    return VerifiedReport(report, chain)
