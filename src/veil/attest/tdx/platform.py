"""Intel TDX (and its simulated twin, sim-tdx) behind the one attestation API.

``verify_evidence`` runs dcap-qvl on the quote with the collateral the evidence carries (or, when
it carries none, the verifier's collateral cache for the quote's FMSPC) and lists what was checked.
The root the collateral's chains end in (Intel's pinned SGX Root CA, or a trusted simulation root)
decides whether the evidence is ``tdx`` or ``sim-tdx``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from veil.attest.api import Check, VerifiedEvidence, VerifyOptions
from veil.attest.tdx.abi import parse_quote
from veil.attest.tdx.evidence import TdxEvidence
from veil.attest.tdx.validate import TdxPolicy, statuses_at_least, validate_claims
from veil.attest.tdx.verify import to_claims, verify_quote
from veil.errors import ParseError
from veil.manifest import TdxReference

if TYPE_CHECKING:
    from veil.manifest import ReferenceValues


def _short(fingerprint: str) -> str:
    return f"{fingerprint[:8]}…{fingerprint[-6:]}"


def _collateral(evidence: TdxEvidence, options: VerifyOptions) -> dict[str, Any]:
    if evidence.collateral is not None:
        return evidence.collateral
    import dcap_qvl

    try:
        fmspc = dcap_qvl.parse_quote(parse_quote(evidence.quote).raw).fmspc()
    except ValueError as exc:
        raise ParseError("tdx.quote_malformed", f"cannot read the quote's FMSPC: {exc}") from None
    cached = options.collateral.read_tdx(fmspc) if options.collateral is not None else None
    if cached is None:
        raise ParseError(
            "tdx.collateral_missing",
            f"the evidence carries no PCS collateral and none is cached for FMSPC {fmspc.lower()}",
        )
    return cached


def verify_evidence(evidence: TdxEvidence, options: VerifyOptions) -> VerifiedEvidence:
    """Every cryptographic and collateral check of a TDX quote, then the binding."""
    verified = verify_quote(evidence.quote, _collateral(evidence, options), as_of=options.now, trust=options.trust)
    claims = to_claims(verified)
    root = (
        f"SIMULATED root {_short(verified.root_fingerprint)} (trusted explicitly)"
        if verified.simulated
        else f"Intel SGX Root CA {_short(verified.root_fingerprint)} (pinned)"
    )
    issued = verified.collateral_issued.isoformat(timespec="seconds") if verified.collateral_issued else "?"
    expires = verified.collateral_expires.isoformat(timespec="seconds") if verified.collateral_expires else "?"
    checks = (
        Check("quote signature", f"ECDSA P-256 by the quote's attestation key: valid (quote v{verified.quote.header.version})"),
        Check(
            "QE report",
            "signed by the PCK certificate, binds the attestation key; QE identity "
            f"{verified.qe_status or 'matched'} (ISVSVN {verified.qe_isvsvn})",
        ),
        Check("certificate chain", f"PCK <- PCK CA <- {root}; TCB info and QE identity signed by the TCB signing certificate"),
        Check(
            "revocation (CRL)",
            f"root CA CRL #{verified.crl_numbers[0]} and PCK CRL #{verified.crl_numbers[1]}: "
            "no certificate of the chains revoked",
        ),
        Check(
            "collateral times",
            f"PCS collateral for FMSPC {verified.fmspc} issued up to {issued}, "
            f"valid until {expires}, checked at {options.now.isoformat(timespec='seconds')}",
        ),
        Check("TCB level", f"{verified.tcb_status} (TCB date {verified.tcb_date or '?'})"),
        options.binding.check(verified.quote.body.report_data),
    )
    return VerifiedEvidence(claims, checks, native=verified)


def policy_from_reference(ref: ReferenceValues) -> TdxPolicy:
    """The manifest's reference values for one TDX platform entry, as a ``TdxPolicy``: MRTD from
    ``measurements``, the rest from ``ref.tdx`` (debug is refused unless ``allow_debug``)."""
    tdx = ref.tdx or TdxReference()
    return TdxPolicy(
        mrtd=list(ref.measurements),
        rtmr0=tdx.rtmr0,
        rtmr1=tdx.rtmr1,
        rtmr2=tdx.rtmr2,
        rtmr3=tdx.rtmr3,
        mr_config_id=tdx.mr_config_id,
        mr_owner=tdx.mr_owner,
        mr_seam=tdx.mr_seam,
        allow_debug=ref.allow_debug,
        allowed_tcb_statuses=statuses_at_least(tdx.min_tcb_status),
        allowed_advisories=frozenset(tdx.allowed_advisory_ids) if tdx.allowed_advisory_ids is not None else None,
        td_attributes_mask=tdx.td_attributes_mask,
        td_attributes_expected=tdx.td_attributes_expected,
        xfam_mask=tdx.xfam_mask,
        xfam_expected=tdx.xfam_expected,
    )


class TdxVerifier:
    """The registry's verifier for ``tdx`` and ``sim-tdx``."""

    policy_model = TdxPolicy

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
        return verify_evidence(TdxEvidence.from_json(evidence.get("tdx")), options)

    def policy(self, reference: ReferenceValues) -> TdxPolicy:
        return policy_from_reference(reference)

    def validate(self, verified: VerifiedEvidence, policy: TdxPolicy) -> list[Check]:
        return validate_claims(verified.claims, policy)


TDX = TdxVerifier()

__all__ = ["TDX", "TdxVerifier", "policy_from_reference", "verify_evidence"]
