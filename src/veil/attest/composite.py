"""Composite CPU + GPU evidence of a worker: one CPU report that vouches for its GPUs.

The worker answers a challenge (nonce ``n``) with its ephemeral public key ``pk`` as follows:

1. GPU nonce: ``g = SHA-256(len ‖ "veil/gpu-nonce/v1" ‖ len ‖ n ‖ len ‖ pk)`` (u32 big-endian
   length prefixes, as in :mod:`veil.attest.binding`). Every GPU signs an SPDM report over ``g``,
   so the GPU evidence is fresh for this challenge and this key.
2. GPU evidence digest: ``d = SHA-256`` over a canonical encoding of the GPU evidence list
   (see :func:`gpu_evidence_digest`).
3. CPU report_data: ``binding.worker_report_data(n, pk, d)``.

The verifier checks the CPU report first (platform verifier), then hands its claims here: the
report_data must bind ``n``, ``pk`` and ``d``, and every GPU report must verify with nonce ``g``.
Substituting, dropping, adding or replaying a GPU report changes ``d`` or fails its nonce.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

from veil.attest import binding
from veil.attest.api import Binding, Check, VerifiedEvidence, VerifyOptions
from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.platform import NVIDIA
from veil.attest.nvidia.platform import verify_evidence as verify_gpu
from veil.attest.nvidia.validate import NvidiaPolicy
from veil.errors import PolicyError, VeilError

GPU_NONCE_CONTEXT = b"veil/gpu-nonce/v1"
GPU_EVIDENCE_CONTEXT = b"veil/gpu-evidence/v1"


def _lp(h: Any, *values: bytes) -> None:
    """Feed each value to the hash as a u32 big-endian length, then the bytes."""
    for value in values:
        h.update(len(value).to_bytes(4, "big"))
        h.update(value)


def gpu_nonce(challenge_nonce: bytes, worker_public_key: bytes) -> bytes:
    """The 32-byte SPDM nonce a worker's GPUs sign for this challenge and key."""
    h = hashlib.sha256()
    _lp(h, GPU_NONCE_CONTEXT, challenge_nonce, worker_public_key)
    return h.digest()


def _as_list(evidence: NvidiaEvidence | Sequence[NvidiaEvidence]) -> list[NvidiaEvidence]:
    return [evidence] if isinstance(evidence, NvidiaEvidence) else list(evidence)


def gpu_evidence_digest(evidence: NvidiaEvidence | Sequence[NvidiaEvidence]) -> bytes:
    """SHA-256(len-prefixed context ‖ u32 count ‖ per GPU: len ‖ report ‖ len ‖ chain PEM).

    The bytes hashed are exactly the bytes transported (raw binary report, PEM as sent), so the
    digest needs no re-encoding; one GPU and a one-element list hash the same.
    """
    items = _as_list(evidence)
    h = hashlib.sha256()
    _lp(h, GPU_EVIDENCE_CONTEXT)
    h.update(len(items).to_bytes(4, "big"))
    for item in items:
        _lp(h, item.report, item.cert_chain_pem)
    return h.digest()


def worker_report_data(
    challenge_nonce: bytes,
    worker_public_key: bytes,
    evidence: NvidiaEvidence | Sequence[NvidiaEvidence],
    sandbox: bytes = b"",
) -> bytes:
    """What the worker puts in its CPU report_data when it has GPUs."""
    return binding.worker_report_data(challenge_nonce, worker_public_key, gpu_evidence_digest(evidence), sandbox)


def collect_gpu_evidence(
    challenge_nonce: bytes, worker_public_key: bytes, *, nvml: Any | None = None, cache: Any | None = None
) -> tuple[list[NvidiaEvidence], bytes]:
    """Worker side: every GPU's evidence over the derived nonce (with its cached RIMs and OCSP
    statuses), and the CPU report_data to use."""
    from veil.attest.nvidia.collect import collect_evidence

    evidence = collect_evidence(gpu_nonce(challenge_nonce, worker_public_key), nvml=nvml, cache=cache)
    return evidence, worker_report_data(challenge_nonce, worker_public_key, evidence)


def verify_composite(
    cpu: VerifiedEvidence,
    gpu_evidence: NvidiaEvidence | Sequence[NvidiaEvidence],
    *,
    challenge_nonce: bytes,
    worker_public_key: bytes,
    options: VerifyOptions,
    policy: NvidiaPolicy,
    expected_gpu_nonce: bytes | None = None,
    sandbox: bytes = b"",
) -> VerifiedEvidence:
    """Check the CPU report_data binding, then every GPU; raises a typed VeilError.

    ``cpu`` is already verified CPU evidence; ``policy`` is the manifest's GPU reference values of
    the reference set that accepted it. ``expected_gpu_nonce`` overrides the derived
    :func:`gpu_nonce` (only for evidence whose GPU nonce was fixed elsewhere, such as published
    test vectors). The CPU claims come back with ``details["gpus"]``.
    """
    items = _as_list(gpu_evidence)
    if not items:
        raise PolicyError("composite.no_gpu_evidence", "no GPU evidence to bind")
    binding.check_report_data(cpu.claims.report_data, worker_report_data(challenge_nonce, worker_public_key, items, sandbox))
    nonce = expected_gpu_nonce if expected_gpu_nonce is not None else gpu_nonce(challenge_nonce, worker_public_key)
    gpu_options = dataclasses.replace(options, binding=Binding.to(nonce))
    gpus: list[dict[str, Any]] = []
    gpu_checks: list[Check] = []
    for i, item in enumerate(items):
        try:
            verified = verify_gpu(item, gpu_options)
            gpu_checks += [Check(f"GPU {i}: {c.name}", c.result) for c in (*verified.checks, *NVIDIA.validate(verified, policy))]
        except VeilError as err:
            raise type(err)(err.reason, f"GPU {i}: {err.message}") from None
        device = verified.claims.details["leaf_fingerprint"]  # the GPU's own certificate
        if any(g["details"]["leaf_fingerprint"] == device for g in gpus):
            raise PolicyError("composite.duplicate_gpu", f"GPU {i} repeats an earlier GPU's report")
        gpus.append(verified.claims.to_json())
    details = {**cpu.claims.details, "gpus": gpus}
    # a simulated GPU makes the whole worker simulated, whatever its CPU
    simulated = cpu.claims.simulated or any(g["simulated"] for g in gpus)
    return dataclasses.replace(
        cpu,
        claims=dataclasses.replace(cpu.claims, details=details, simulated=simulated),
        checks=cpu.checks
        + tuple(gpu_checks)
        + (
            Check(
                "GPU evidence",
                f"{len(items)} GPU report(s) verified, bound into the CPU report_data and signed over this challenge's GPU nonce",
            ),
        ),
    )
