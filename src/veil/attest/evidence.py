"""Verify evidence in Veil's wire form against a manifest's reference values.

One entry point for coordinator (checking workers) and client (checking the coordinator): it
picks the platform verifier, turns reference values into that platform's policy, checks the
report_data binding, and returns a ``Verdict`` — never raising for bad evidence.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from veil.attest.claims import Verdict
from veil.errors import ParseError, PolicyError, VeilError
from veil.manifest import ReferenceValues

SNP_PLATFORMS = ("sim-snp", "sev-snp")


def verify_evidence(
    evidence: dict[str, Any],
    references: list[ReferenceValues],
    *,
    expected_report_data: bytes,
    simulation_roots: list[str] = (),  # type: ignore[assignment]
    as_of: datetime | None = None,
) -> Verdict:
    """Verify ``evidence`` and check it against the reference values for its platform."""
    try:
        platform = evidence.get("platform") if isinstance(evidence, dict) else None
        if not isinstance(platform, str):
            raise ParseError("evidence.malformed", "evidence names no platform")
        refs = [r for r in references if r.platform == platform]
        if not refs:
            raise PolicyError(
                "evidence.platform_not_allowed", f"the manifest has no reference values for {platform}"
            )
        if platform in SNP_PLATFORMS:
            return _verify_snp(evidence, refs, expected_report_data, list(simulation_roots), as_of)
        raise PolicyError("evidence.platform_unsupported", f"platform {platform} is not supported here")
    except VeilError as err:
        return Verdict.reject(err)


def _verify_snp(
    evidence: dict[str, Any],
    refs: list[ReferenceValues],
    expected_report_data: bytes,
    simulation_roots: list[str],
    as_of: datetime | None,
) -> Verdict:
    from veil.attest.snp import SnpEvidence, SnpPolicy, TrustRoots
    from veil.attest.snp import verify_evidence as verify_snp
    from veil.attest.snp.validate import MinimumTcb

    snp = SnpEvidence.from_json(evidence.get("snp"))
    trust = TrustRoots.default().with_simulation(*simulation_roots)
    verdict: Verdict | None = None
    for ref in refs:  # any matching reference value set accepts
        policy = SnpPolicy(
            measurements=ref.measurements,
            allow_debug=ref.allow_debug,
            minimum_tcb=MinimumTcb(**ref.min_tcb),
        )
        verdict = verify_snp(
            snp, policy, trust=trust, as_of=as_of, expected_report_data=expected_report_data
        )
        if verdict.accepted:
            claims = verdict.claims
            if claims is None or claims.platform != evidence["platform"]:
                return Verdict.reject(
                    PolicyError(
                        "evidence.platform_mismatch",
                        f"evidence claims {evidence['platform']} but verifies as "
                        f"{claims.platform if claims else 'nothing'}",
                    ),
                    claims,
                )
            return verdict
    assert verdict is not None
    return verdict


def verify_worker_evidence(
    evidence: dict[str, Any],
    references: list[ReferenceValues],
    *,
    challenge: bytes,
    public_key: bytes,
    simulation_roots: list[str] = (),  # type: ignore[assignment]
    as_of: datetime | None = None,
) -> Verdict:
    """A worker's CPU evidence, and its GPUs' evidence when present, bound together.

    With GPUs, the CPU report_data binds the digest of every GPU's SPDM report, and each GPU
    signed a nonce derived from the same challenge and worker key (veil.attest.composite), so the
    GPUs cannot be swapped for others or replayed from another registration.
    """
    from veil.attest import binding, composite
    from veil.attest.nvidia import NvidiaEvidence
    from veil.attest.nvidia.verify import TRUSTED_ROOTS

    try:
        raw_gpus = (evidence.get("gpus") or []) if isinstance(evidence, dict) else []
        if not isinstance(raw_gpus, list):
            raise ParseError("evidence.malformed", "gpus must be a list")
        gpus = [NvidiaEvidence.from_json(g) for g in raw_gpus]
        platform = evidence.get("platform") if isinstance(evidence, dict) else None
        if not gpus and any(r.require_gpu for r in references if r.platform == platform):
            raise PolicyError("evidence.gpu_required", "the manifest requires GPU evidence from workers")
    except VeilError as err:
        return Verdict.reject(err)
    expected = (
        composite.worker_report_data(challenge, public_key, gpus)
        if gpus
        else binding.worker_report_data(challenge, public_key)
    )
    verdict = verify_evidence(
        evidence, references, expected_report_data=expected, simulation_roots=simulation_roots, as_of=as_of
    )
    if not verdict.accepted or not gpus:
        return verdict
    assert verdict.claims is not None
    return composite.verify_composite(
        verdict.claims, gpus, challenge_nonce=challenge, worker_public_key=public_key, as_of=as_of,
        trusted_roots=set(TRUSTED_ROOTS) | set(simulation_roots),
    )
