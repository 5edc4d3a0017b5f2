"""A real coordinator process that requires GPUs, and the host's composite worker evidence.

The attacker controls the worker's host: NVML's answers, the collateral cache (RIMs, OCSP
statuses), the evidence JSON, and (on sim-snp) the simulated chip's keys, so it can sign any CPU
report the chip would. The simulated H100 (veil.attest.sim.gpu) signs reports the way a real GPU
does; its roots are the deployment's, trusted by the manifest as simulation roots.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from platform_fixtures import CoordinatorProcess, start_coordinator
from veil.attest import composite
from veil.attest.nvidia import NvidiaEvidence
from veil.attest.sim import SimPlatform, measure_code
from veil.attest.sim.gpu import SimGpu
from veil.manifest import GpuReference, ReferenceValues


def gpu_coordinator(work: Path) -> tuple[CoordinatorProcess, SimPlatform, SimGpu]:
    """A sim-snp coordinator whose manifest requires one simulated H100 with its pinned RIMs."""
    sim = SimPlatform.create(work / "sim")
    gpu = SimGpu.load_or_create(work / "gpu")
    coordinator = start_coordinator("sim-snp", sim.directory, work)
    cpu = ReferenceValues(platform="sim-snp", measurements=[measure_code().hex()])
    workers = [cpu.model_copy(update={"require_gpu": True, "gpu": GpuReference(allowed_rim_digests=gpu.rim_digests())})]
    coordinator.set_manifest(workers, [cpu], [sim.root_fingerprint, *gpu.simulation_roots])
    return coordinator, sim, gpu


def composite_worker(sim: SimPlatform, gpus: Callable[[bytes], list[NvidiaEvidence]]):  # type: ignore[no-untyped-def]
    """``evidence_for(nonce, key)``: the CPU report binding whatever GPU evidence ``gpus(gpu_nonce)`` gives."""

    def evidence(nonce: bytes, key: bytes) -> dict:  # type: ignore[type-arg]
        items = gpus(composite.gpu_nonce(nonce, key))
        ev = sim.attest(composite.worker_report_data(nonce, key, items), measurement=measure_code())
        return {"platform": "sim-snp", "snp": ev.to_json(), "gpus": [g.to_json() for g in items]}

    return evidence
