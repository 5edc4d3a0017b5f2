"""NVIDIA GPU evidence (SPDM report, chain, RIMs, OCSP statuses) behind the one attestation API.

The binding is the SPDM nonce the GPU signed. ``verify`` does every cryptographic check: the
report (chain to the pinned NVIDIA Device Identity CA, signature, nonce, FWID), each RIM (XML
signature, chain to the pinned RIM root, validity at ``as_of``) and which firmware it describes,
and every OCSP status that came with the evidence. ``validate`` applies the manifest's
``GpuReference`` (RIMs and revocation required, golden measurements, allowlists).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from veil.attest.api import Check, VerifiedEvidence, VerifyOptions
from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.revocation import check_chain
from veil.attest.nvidia.rim import VerifiedRim, verify_rim
from veil.attest.nvidia.validate import GpuVerified, NvidiaPolicy, claims_from, platform_of, validate
from veil.attest.nvidia.verify import CERT_ERRORS, VerifiedReport, fingerprint, verify_report
from veil.errors import ParseError, PolicyError, VerificationError

if TYPE_CHECKING:
    from veil.manifest import ReferenceValues


def _assign_rims(verified: VerifiedReport, rims: list[VerifiedRim]) -> tuple[VerifiedRim | None, VerifiedRim | None]:
    """(driver RIM, VBIOS RIM): each RIM must describe this GPU's chip and one of its two versions."""
    _, chip = platform_of(verified)
    driver = (verified.report.driver_version or "").lower()
    vbios = (verified.report.vbios_version or "").lower()
    found: dict[str, VerifiedRim] = {}
    for rim in rims:
        version = rim.rim.version.lower()
        kind = "driver" if version == driver else "vbios" if version == vbios else None
        if kind is None or rim.rim.product.upper() != chip:
            raise VerificationError(
                "nvidia.rim_version_mismatch",
                f"a RIM for {rim.rim.product} {rim.rim.version} "
                f"does not describe this GPU ({chip}, driver {driver}, VBIOS {vbios})",
            )
        if kind in found:
            raise VerificationError("nvidia.rim_version_mismatch", f"two {kind} RIMs for one GPU")
        found[kind] = rim
    return found.get("driver"), found.get("vbios")


def verify_evidence(evidence: NvidiaEvidence, options: VerifyOptions) -> VerifiedEvidence:
    """Report, chain, RIMs and revocation; raises a typed VeilError."""
    if options.binding.expected is None:
        raise ParseError("cli.missing_input", "NVIDIA evidence is checked against a nonce: give one")
    trust, now = options.trust, options.now
    roots = trust.nvidia | trust.simulation
    try:
        verified = verify_report(
            evidence.parse(), evidence.cert_chain_pem, expected_nonce=options.binding.expected, as_of=now, trusted_roots=roots
        )
        revocation, missing = check_chain(verified.chain, evidence.ocsp, now=now, trusted_roots=roots, skip_leaf=True)
        rims = [verify_rim(r, trust=trust, now=now, ocsp=evidence.ocsp, source=f"RIM {i}") for i, r in enumerate(evidence.rims)]
    except CERT_ERRORS as exc:  # a certificate `cryptography` could not use, found late
        raise VerificationError("nvidia.chain_invalid", f"unusable certificate: {exc}") from None
    driver_rim, vbios_rim = _assign_rims(verified, rims)
    simulated = fingerprint(verified.chain[-1]) not in trust.nvidia or any(r.simulated for r in rims)
    gpu = GpuVerified(
        verified,
        now,
        tuple(rims),
        driver_rim,
        vbios_rim,
        tuple(revocation) + tuple(s for r in rims for s in r.revocation),
        tuple(missing) + tuple(m for r in rims for m in r.revocation_missing),
        evidence.host_cc,
    )
    root = "a SIMULATION root" if simulated else "the pinned NVIDIA Device Identity CA"
    checks = [
        Check("report signature", "ECDSA P-384/SHA-384 by the GPU's attestation key: valid"),
        Check("certificate chain", f"{len(verified.chain)} certificates to {root}"),
        Check("binding", "the GPU signed the expected SPDM nonce"),
        Check("firmware id", "the FWID certified in the leaf equals the report's"),
        Check(
            "RIM signatures",
            f"{len(rims)} RIM(s) XML-DSig signed by a chain to the "
            f"{'SIMULATION' if any(r.simulated for r in rims) else 'pinned NVIDIA'} RIM root, valid now, and "
            "describing this GPU's driver and VBIOS"
            if rims
            else "NOT CHECKED: the evidence carries no RIM",
        ),
        Check(
            "revocation (OCSP)",
            f"{len(gpu.revocation)} signed OCSP status(es) good"
            + (f"; {len(gpu.revocation_missing)} certificate(s) without a status" if gpu.revocation_missing else ""),
        ),
    ]
    return VerifiedEvidence(claims_from(gpu, simulated), tuple(checks), native=gpu)


class NvidiaVerifier:
    policy_model = NvidiaPolicy

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
        return verify_evidence(NvidiaEvidence.from_json(evidence.get("nvidia")), options)

    def policy(self, reference: ReferenceValues) -> NvidiaPolicy:
        if reference.gpu is None:
            raise PolicyError(
                "evidence.gpu_reference_missing", f"the manifest has no GPU reference values for {reference.platform} workers"
            )
        return reference.gpu

    def validate(self, verified: VerifiedEvidence, policy: NvidiaPolicy) -> list[Check]:
        gpu: GpuVerified = verified.native
        return validate(gpu, verified.claims, policy)


NVIDIA = NvidiaVerifier()
