"""Attack: a worker's host edits the GPU's RIM so that its own firmware's measurements pass.

The attacker controls the worker's host, so its collateral cache and the evidence JSON: it can
hand the coordinator any RIM. It runs firmware that is not NVIDIA's (here: a changed measurement)
and rewrites the RIM's golden value to match, or re-signs the RIM with its own key. Defence: RIMs
count only when their XML signature verifies (signxml) with a signer whose chain ends at the
pinned RIM root (``nvidia.rim_signature_invalid``, ``nvidia.rim_untrusted_root``), and the
manifest pins the RIM documents it allows. The target is a real coordinator process; the control
run sends the untouched RIMs.
"""

from __future__ import annotations

import dataclasses

import pytest

from gpu_fixtures import composite_worker, gpu_coordinator
from platform_fixtures import reason
from veil.attest.sim.gpu import SimGpu, golden_blocks

EVIL = bytes([0xEE]) * 48  # the measurement of the host's own firmware (block 2)


@pytest.fixture(scope="module")
def target(tmp_path_factory):  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = gpu_coordinator(tmp_path_factory.mktemp("gpu-rim"))
    yield coordinator, sim, gpu
    coordinator.stop()


def _evil_gpu(gpu: SimGpu) -> SimGpu:
    return dataclasses.replace(gpu, blocks={**golden_blocks(), 2: EVIL})


def test_control_untouched_rims_register(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    assert reason(coordinator.register(composite_worker(sim, lambda n: [gpu.evidence(n)]))) == "ok"


def test_foreign_firmware_with_honest_rims_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    evil = _evil_gpu(gpu)
    assert reason(coordinator.register(composite_worker(sim, lambda n: [evil.evidence(n)]))) == "nvidia.measurement_mismatch"


def test_rim_edited_to_match_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    evil = _evil_gpu(gpu)
    golden = golden_blocks()[2].hex().encode()

    def forged(nonce: bytes):  # type: ignore[no-untyped-def]
        ev = evil.evidence(nonce)
        return [dataclasses.replace(ev, rims=tuple(r.replace(golden, EVIL.hex().encode()) for r in ev.rims))]

    assert reason(coordinator.register(composite_worker(sim, forged))) == "nvidia.rim_signature_invalid"


def test_rim_resigned_by_the_host_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, gpu = target
    resigner = SimGpu(blocks={**golden_blocks(), 2: EVIL})  # the host's own RIM root and signer

    def forged(nonce: bytes):  # type: ignore[no-untyped-def]
        ev = _evil_gpu(gpu).evidence(nonce)
        return [dataclasses.replace(ev, rims=tuple(resigner.rims().values()))]

    assert reason(coordinator.register(composite_worker(sim, forged))) == "nvidia.rim_untrusted_root"
