"""Collect GPU evidence on a live machine through NVML (``nvidia-ml-py``, imported lazily).

The GPU must be in confidential-computing mode: NVML then returns an SPDM GET_MEASUREMENTS report
over a caller-chosen 32-byte nonce and the GPU's attestation certificate chain (PEM, leaf first).
The driver and VBIOS RIMs and the OCSP statuses of both chains come from the collateral cache
(``veil collateral fetch-gpu`` fills it, online), so verifiers judge the GPU offline; NVML's CC
state (CC feature, dev-tools mode) goes along as what the host reported.

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


def with_cached_collateral(evidence: NvidiaEvidence, cache: Any) -> NvidiaEvidence:
    """``evidence`` with the cached RIMs for its driver and VBIOS and the cached OCSP statuses of
    its chain and the RIMs' chains (whatever the cache lacks is simply absent: the verifier's
    policy decides what is required)."""
    import dataclasses

    from veil.attest.nvidia.rim import rim_ids, signing_chain
    from veil.attest.nvidia.verify import fingerprint, load_chain
    from veil.errors import ParseError

    try:
        report = evidence.parse()
        ids = rim_ids(report.driver_version or "", report.vbios_version or "", report.decoded_opaque())
        rims = tuple(r for r in (cache.read_rim(i) for i in ids) if r is not None)
        certs = load_chain(evidence.cert_chain_pem)[1:-1]
        for rim in rims:
            certs += signing_chain(rim)[:-1]
    except ParseError:
        return evidence  # the verifier says what is wrong with it
    unique = {fingerprint(c): c for c in certs}  # both RIMs usually share their signer
    ocsp = tuple(r for r in (cache.read_ocsp(fp) for fp in unique) if r is not None)
    return dataclasses.replace(evidence, rims=rims, ocsp=ocsp)


def collect_evidence(nonce: bytes, *, nvml: Any | None = None, cache: Any | None = None) -> list[NvidiaEvidence]:
    """Evidence of every GPU on this machine over ``nonce``; ``nvidia.no_gpu`` when none attests.

    ``nvml`` is the ``pynvml`` module or a fake with the same functions (tests); ``cache`` the
    collateral cache (default: the default directory).
    """
    from veil.attest.collateral import CollateralCache

    cache = cache if cache is not None else CollateralCache()
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
        host_cc = {"cc_feature": int(getattr(state, "ccFeature", 0)), "dev_tools_mode": int(getattr(state, "devToolsMode", 1))}
        count = nvml.nvmlDeviceGetCount()
        if count < 1:
            raise VeilError("nvidia.no_gpu", "no NVIDIA GPU found")
        out: list[NvidiaEvidence] = []
        for i in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            report = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)
            certs = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            gpu = NvidiaEvidence(
                report=_bytes(report.attestationReport, report.attestationReportSize),
                cert_chain_pem=_bytes(certs.attestationCertChain, certs.attestationCertChainSize),
                host_cc=host_cc,
            )
            out.append(with_cached_collateral(gpu, cache))
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
