"""Appraise evidence in Veil's wire form against a manifest's reference values.

What the coordinator (checking a worker) and the client (checking the coordinator) call: the
platform's verifier through the registry, the binding, then the reference values. Both raise a
typed ``VeilError`` with a reason code; a ``Verdict`` is made only at the edges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from veil.attest import api
from veil.attest.api import Binding, VerifiedEvidence, VerifyOptions
from veil.attest.trust import TrustRoots
from veil.errors import ParseError, PolicyError
from veil.manifest import ReferenceValues


def trust_for(simulation_roots: Iterable[str] = ()) -> TrustRoots:
    """The production roots plus the simulation roots a manifest or client policy names."""
    return TrustRoots.production().with_simulation(*simulation_roots)


def appraise_evidence(
    evidence: Mapping[str, Any],
    references: Sequence[ReferenceValues],
    *,
    expected_report_data: bytes,
    trust: TrustRoots,
    as_of: datetime | None = None,
) -> VerifiedEvidence:
    """Verify ``evidence`` (bound to ``expected_report_data``) and check it against the references."""
    options = VerifyOptions(Binding.to(expected_report_data), trust, as_of)
    return api.appraise(evidence, references, options)


def appraise_worker_evidence(
    evidence: Mapping[str, Any],
    references: Sequence[ReferenceValues],
    *,
    challenge: bytes,
    public_key: bytes,
    trust: TrustRoots,
    as_of: datetime | None = None,
    sandbox: bytes = b"",
) -> VerifiedEvidence:
    """A worker's CPU evidence, and its GPUs' evidence when present, bound together.

    ``sandbox`` is the sandbox binding the evidence must carry (``veil.manifest.sandbox_binding``
    of the manifest's settings): a worker enforcing another profile fails the report_data check.

    GPU evidence is judged against the GPU reference values of the reference set that accepted
    the CPU evidence (``evidence.gpu_reference_missing`` when it has none: fail closed). With GPUs,
    the CPU report_data binds the digest of every GPU's SPDM report, and each GPU
    signed a nonce derived from the same challenge and worker key (veil.attest.composite), so the
    GPUs cannot be swapped for others or replayed from another registration.
    """
    from veil.attest import binding, composite
    from veil.attest.nvidia import NvidiaEvidence

    raw_gpus = (evidence.get("gpus") or []) if isinstance(evidence, Mapping) else []
    if not isinstance(raw_gpus, list):
        raise ParseError("evidence.malformed", "gpus must be a list")
    gpus = [NvidiaEvidence.from_json(g) for g in raw_gpus]
    platform = api.platform_of(evidence)
    if not gpus and any(r.require_gpu for r in references if r.platform == platform):
        raise PolicyError("evidence.gpu_required", "the manifest requires GPU evidence from workers")
    expected = (
        composite.worker_report_data(challenge, public_key, gpus, sandbox)
        if gpus
        else binding.worker_report_data(challenge, public_key, sandbox=sandbox)
    )
    options = VerifyOptions(Binding.to(expected), trust, as_of)
    verified = api.appraise(evidence, references, options)
    if not gpus:
        return verified
    from veil.attest.nvidia.platform import NVIDIA

    assert verified.reference is not None  # validate() names the reference set that accepted
    return composite.verify_composite(
        verified,
        gpus,
        challenge_nonce=challenge,
        worker_public_key=public_key,
        options=options,
        policy=NVIDIA.policy(verified.reference),
        sandbox=sandbox,
    )
