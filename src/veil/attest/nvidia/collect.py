"""Collect GPU evidence on a live machine through NVML (``nvidia-ml-py``, imported lazily).

The GPU must be in confidential-computing mode: NVML then returns an SPDM GET_MEASUREMENTS report
over a caller-chosen 32-byte nonce and the GPU's attestation certificate chain (PEM, leaf first).

Status: exercised only against an injected fake NVML object in the tests; it has NOT run on a
real H100/H200 in CC mode in this project yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from veil.attest.nvidia.abi import NONCE_LEN
from veil.errors import VeilError

if TYPE_CHECKING:
    from veil.attest.nvidia import NvidiaEvidence

NVML_CC_SYSTEM_FEATURE_ENABLED = 1


def _load_nvml() -> Any:
    try:
        import pynvml  # provided by the nvidia-ml-py package
    except ImportError as exc:
        raise VeilError("nvidia.no_gpu", "nvidia-ml-py (pynvml) is not installed") from exc
    return pynvml


def _bytes(buffer: Any, size: int) -> bytes:
    """NVML returns fixed ctypes arrays with a separate size; keep only the used part."""
    return bytes(bytearray(buffer)[: int(size)])


def collect_evidence(nonce: bytes, *, nvml: Any | None = None) -> list[NvidiaEvidence]:
    """Evidence of every GPU on this machine over ``nonce``; ``nvidia.no_gpu`` when none attests.

    ``nvml`` is the ``pynvml`` module or a fake with the same functions (tests).
    """
    from veil.attest.nvidia import NvidiaEvidence

    if len(nonce) != NONCE_LEN:
        raise ValueError("the SPDM nonce is 32 bytes")
    nvml = nvml if nvml is not None else _load_nvml()
    error = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error as exc:
        raise VeilError("nvidia.no_gpu", f"NVML is not available: {exc}") from exc
    try:
        state = nvml.nvmlSystemGetConfComputeState()
        if getattr(state, "ccFeature", 0) != NVML_CC_SYSTEM_FEATURE_ENABLED:
            raise VeilError("nvidia.no_gpu", "confidential computing is not enabled on this system")
        count = nvml.nvmlDeviceGetCount()
        if count < 1:
            raise VeilError("nvidia.no_gpu", "no NVIDIA GPU found")
        out: list[NvidiaEvidence] = []
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            certs = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            out.append(
                NvidiaEvidence(
                    report=_bytes(report.attestationReport, report.attestationReportSize),
                    cert_chain_pem=_bytes(
                        certs.attestationCertChain, certs.attestationCertChainSize
                    ),
                )
            )
        return out
    except VeilError:
        raise
    except error as exc:
        raise VeilError("nvidia.collect_failed", f"NVML refused attestation: {exc}") from exc
    finally:
        try:
            nvml.nvmlShutdown()
        except error:
            pass
