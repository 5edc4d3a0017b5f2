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
from veil.attest.snp.abi import Report, SigningKey, parse_report
from veil.attest.snp.evidence import SnpEvidence
from veil.attest.snp.validate import MinimumTcb, SnpPolicy, validate_report
from veil.attest.snp.verify import VerifiedReport, load_certificate, product_of_certificate, verify_report
from veil.errors import VerificationError
from veil.manifest import SnpReference

if TYPE_CHECKING:
    from veil.manifest import ReferenceValues


def _short(fingerprint: str) -> str:
    return f"{fingerprint[:8]}…{fingerprint[-6:]}"


def _required_crl(evidence: SnpEvidence, report: Report, options: VerifyOptions) -> bytes:
    """The ARK-signed CRL: the one the evidence carries, else the verifier's collateral cache's.

    Revocation is never optional: without a CRL the evidence is refused (``snp.crl_missing``).
    """
    if evidence.crl is not None:
        return evidence.crl
    product = report.product or product_of_certificate(evidence.vcek)
    kind = "vlek" if report.signing_key == SigningKey.VLEK else "vcek"
    crl = options.collateral.read_crl(product, kind) if (options.collateral is not None and product) else None
    if crl is None:
        raise VerificationError(
            "snp.crl_missing",
            f"no ARK-signed CRL for {product or 'this product'} ({kind}): the evidence carries none and the "
            "collateral cache has none (run `veil collateral fetch --report ...` online)",
        )
    return crl


def verify_evidence(evidence: SnpEvidence, options: VerifyOptions) -> VerifiedEvidence:
    """Every cryptographic check of SNP evidence, revocation included, then the binding; raises a
    typed VeilError."""
    report = parse_report(evidence.report)
    load_certificate(evidence.vcek)  # a malformed VCEK says so before anything is looked up for it
    crl = _required_crl(evidence, report, options)
    verified = verify_report(report, evidence.vcek, evidence.chain_pem or None, trust=options.trust, as_of=options.now, crl=crl)
    chain = verified.chain
    key = chain.key_kind.upper()
    inter = "ASVK" if chain.key_kind == "vlek" else "ASK"
    root = (
        f"SIMULATED root {_short(chain.root_fingerprint)} (trusted explicitly)"
        if chain.simulated
        else f"AMD ARK-{chain.product} {_short(chain.root_fingerprint)} (pinned)"
    )
    source = "as sent" if evidence.chain_pem else "AMD's, shipped with Veil"
    tcb = verified.reported_tcb.to_json()
    assert chain.crl is not None
    crl_info = chain.crl
    next_update = crl_info.next_update.date().isoformat() if crl_info.next_update else "?"
    checks = [
        Check("report signature", f"ECDSA P-384/SHA-384 by the {key}: valid"),
        Check("certificate chain", f"{key} <- {inter} <- ARK ({source}), RSASSA-PSS signatures valid, root {root}"),
        Check("certificate validity", f"every certificate valid at {options.now.isoformat(timespec='seconds')}"),
        Check(
            "revocation (CRL)",
            f"ARK-signed CRL #{crl_info.number} issued {crl_info.last_update.date().isoformat()}, "
            f"next update {next_update} ({(options.now - crl_info.last_update).days} days old, "
            f"{crl_info.revoked} revoked): no certificate of the chain revoked",
        ),
        Check("chip and TCB", f"the {key} certifies this chip and reported TCB " + " ".join(f"{k}={v}" for k, v in tcb.items())),
        options.binding.check(report.report_data),
    ]
    return VerifiedEvidence(verified.claims(), tuple(checks), native=verified)


def policy_from_reference(ref: ReferenceValues) -> SnpPolicy:
    """The manifest's reference values for one SNP platform entry, as an ``SnpPolicy``."""
    snp = ref.snp or SnpReference()
    return SnpPolicy(
        measurements=list(ref.measurements),
        allow_debug=ref.allow_debug,
        minimum_tcb=MinimumTcb(**ref.min_tcb),
        max_vmpl=snp.max_vmpl,
        host_data=list(snp.host_data),
        chip_ids=list(snp.chip_ids),
        products=list(snp.products),
        minimum_guest_svn=snp.minimum_guest_svn,
        id_key_digests=list(snp.id_key_digests),
        author_key_digests=list(snp.author_key_digests),
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
