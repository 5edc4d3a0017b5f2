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
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from veil.attest import binding
from veil.attest.claims import Claims, Verdict
from veil.attest.nvidia import NvidiaEvidence, NvidiaPolicy, verify_evidence
from veil.attest.nvidia.rim import ReferenceMeasurement
from veil.attest.nvidia.validate import DEFAULT_POLICY
from veil.attest.nvidia.verify import TRUSTED_ROOTS
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
) -> bytes:
    """What the worker puts in its CPU report_data when it has GPUs."""
    return binding.worker_report_data(
        challenge_nonce, worker_public_key, gpu_evidence_digest(evidence)
    )


def collect_gpu_evidence(
    challenge_nonce: bytes, worker_public_key: bytes, *, nvml: Any | None = None
) -> tuple[list[NvidiaEvidence], bytes]:
    """Worker side: every GPU's evidence over the derived nonce, and the CPU report_data to use."""
    from veil.attest.nvidia.collect import collect_evidence

    evidence = collect_evidence(gpu_nonce(challenge_nonce, worker_public_key), nvml=nvml)
    return evidence, worker_report_data(challenge_nonce, worker_public_key, evidence)


def verify_composite(
    cpu_claims: Claims,
    gpu_evidence: NvidiaEvidence | Sequence[NvidiaEvidence],
    *,
    challenge_nonce: bytes,
    worker_public_key: bytes,
    policy: NvidiaPolicy = DEFAULT_POLICY,
    as_of: datetime | None = None,
    rim_references: dict[int, ReferenceMeasurement] | None = None,
    expected_gpu_nonce: bytes | None = None,
    trusted_roots: Collection[str] = TRUSTED_ROOTS,
) -> Verdict:
    """Check the CPU report_data binding, then every GPU; never raises for bad evidence.

    ``cpu_claims`` must come from an accepted CPU verdict. ``expected_gpu_nonce`` overrides the
    derived :func:`gpu_nonce` (only for evidence whose GPU nonce was fixed elsewhere, such as
    published test vectors). On success the CPU claims come back with ``details["gpus"]``.
    """
    items = _as_list(gpu_evidence)
    try:
        if not items:
            raise PolicyError("composite.no_gpu_evidence", "no GPU evidence to bind")
        binding.check_report_data(
            cpu_claims.report_data,
            worker_report_data(challenge_nonce, worker_public_key, items),
        )
    except VeilError as err:
        return Verdict.reject(err, cpu_claims)
    nonce = (
        expected_gpu_nonce
        if expected_gpu_nonce is not None
        else gpu_nonce(challenge_nonce, worker_public_key)
    )
    gpus: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        verdict = verify_evidence(
            item,
            policy,
            expected_nonce=nonce,
            as_of=as_of,
            rim_references=rim_references,
            trusted_roots=trusted_roots,
        )
        if not verdict.accepted:
            return Verdict(False, verdict.reason, f"GPU {i}: {verdict.message}", cpu_claims)
        assert verdict.claims is not None
        device = verdict.claims.details["leaf_fingerprint"]  # the GPU's own certificate
        if any(g["details"]["leaf_fingerprint"] == device for g in gpus):
            return Verdict.reject(
                PolicyError("composite.duplicate_gpu", f"GPU {i} repeats an earlier GPU's report"),
                cpu_claims,
            )
        gpus.append(verdict.claims.to_json())
    details = {**cpu_claims.details, "gpus": gpus}
    return Verdict.accept(
        dataclasses.replace(cpu_claims, details=details), "CPU and GPU evidence verified"
    )
