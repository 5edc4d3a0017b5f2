"""Attack: a worker's host runs its GPU in CC dev-tools mode (debuggable) and registers it anyway.

The attacker controls the worker's host: NVML (so the CC state it reports), the evidence JSON and
the simulated CPU's keys. A GPU in dev-tools mode lets the host's tools read GPU memory, so its
keys must never be released. Defence: the coordinator refuses a GPU whose CC state says dev-tools
(``nvidia.devtools_mode``) and, because the host may lie about that, requires the report's
measurements to equal the golden values of NVIDIA-signed RIMs: dev-tools mode measures the GPU's
configuration differently (``nvidia.measurement_mismatch``). The target is a real coordinator
process; the control run registers the same GPU in CC production mode.
"""

from __future__ import annotations

import dataclasses

import pytest

from gpu_fixtures import composite_worker, gpu_coordinator
from platform_fixtures import reason


@pytest.fixture(scope="module")
def target(tmp_path_factory):  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = gpu_coordinator(tmp_path_factory.mktemp("gpu-devtools"))
    yield coordinator, sim, gpu
    coordinator.stop()


def test_control_cc_production_mode_registers(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    assert reason(coordinator.register(composite_worker(sim, lambda n: [gpu.evidence(n)]))) == "ok"


def test_devtools_mode_reported_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    devtools = dataclasses.replace(gpu, devtools=True)
    assert reason(coordinator.register(composite_worker(sim, lambda n: [devtools.evidence(n)]))) == "nvidia.devtools_mode"


def test_devtools_mode_hidden_by_the_host_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    lying = dataclasses.replace(gpu, devtools=True, host_says_devtools=False)
    got = reason(coordinator.register(composite_worker(sim, lambda n: [lying.evidence(n)])))
    assert got == "nvidia.measurement_mismatch"
