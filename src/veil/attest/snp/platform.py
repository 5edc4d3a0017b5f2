"""SEV-SNP (and its simulated twin, sim-snp) behind the one attestation API.

``verify_evidence`` runs the crypto of :mod:`veil.attest.snp.verify` on wire evidence and lists
every check it made; ``SEV_SNP`` is the registry's verifier for both ``sev-snp`` and ``sim-snp``:
the root the chain ends in (a pinned AMD ARK or a trusted simulation root) decides which one the
evidence is, never the evidence's own label.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from veil.attest.api import Check, VerifiedEvidence, VerifyOptions
from veil.attest.snp.abi import parse_report
from veil.attest.snp.evidence import SnpEvidence
from veil.attest.snp.validate import MinimumTcb, SnpPolicy, validate_report
from veil.attest.snp.verify import VerifiedReport, verify_report

if TYPE_CHECKING:
    from veil.manifest import ReferenceValues


def _short(fingerprint: str) -> str:
    return f"{fingerprint[:8]}…{fingerprint[-6:]}"


def verify_evidence(evidence: SnpEvidence, options: VerifyOptions) -> VerifiedEvidence:
    """Every cryptographic check of SNP evidence, then the binding; raises a typed VeilError."""
    report = parse_report(evidence.report)
    verified = verify_report(
        report, evidence.vcek, evidence.chain_pem, trust=options.trust, as_of=options.now, crl=evidence.crl
    )
    chain = verified.chain
    key = chain.key_kind.upper()
    inter = "ASVK" if chain.key_kind == "vlek" else "ASK"
    root = (
        f"SIMULATED root {_short(chain.root_fingerprint)} (trusted explicitly)"
        if chain.simulated
        else f"AMD ARK-{chain.product} {_short(chain.root_fingerprint)} (pinned)"
    )
    tcb = verified.reported_tcb.to_json()
    checks = [
        Check("report signature", f"ECDSA P-384/SHA-384 by the {key}: valid"),
        Check("certificate chain", f"{key} <- {inter} <- ARK, RSASSA-PSS signatures valid, root {root}"),
        Check("certificate validity", f"every certificate valid at {options.now.isoformat(timespec='seconds')}"),
        _crl_check(evidence),
        Check("chip and TCB", f"the {key} certifies this chip and reported TCB "
              + " ".join(f"{k}={v}" for k, v in tcb.items())),
        options.binding.check(report.report_data),
    ]
    return VerifiedEvidence(verified.claims(), tuple(checks), native=verified)


def _crl_check(evidence: SnpEvidence) -> Check:
    if evidence.crl is None:
        return Check("revocation (CRL)", "NOT CHECKED: the evidence carries no CRL")
    return Check("revocation (CRL)", "ARK-signed CRL current; no certificate of the chain revoked")


def policy_from_reference(ref: ReferenceValues) -> SnpPolicy:
    """The manifest's reference values for one SNP platform entry, as an ``SnpPolicy``."""
    return SnpPolicy(
        measurements=list(ref.measurements),
        allow_debug=ref.allow_debug,
        minimum_tcb=MinimumTcb(**ref.min_tcb),
    )


class SnpVerifier:
    """The registry's verifier for ``sev-snp`` and ``sim-snp``."""

    policy_model = SnpPolicy

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
        return verify_evidence(SnpEvidence.from_json(evidence.get("snp")), options)

    def policy(self, reference: ReferenceValues) -> SnpPolicy:
        return policy_from_reference(reference)

    def validate(self, verified: VerifiedEvidence, policy: SnpPolicy) -> list[Check]:
        native: VerifiedReport = verified.native
        return validate_report(native.report, policy, native.product)


SEV_SNP = SnpVerifier()

__all__ = ["SEV_SNP", "SnpVerifier", "policy_from_reference", "verify_evidence"]
