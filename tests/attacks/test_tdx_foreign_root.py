"""Attack: a worker's host signs TDX evidence under a root of its own, or passes simulated
evidence off as hardware.

The attacker controls the worker's host and everything it sends: it can build a whole Intel-shaped
hierarchy (root CA, PCK, TCB signing, collateral) of its own and sign any quote with it, and it can
relabel evidence ``tdx`` whatever signed it. Defence: the collateral's chains must end in a
trusted root (Intel's pinned SGX Root CA, or a simulation root the manifest names):
``tdx.collateral_root_untrusted``; and evidence chaining to a simulation root verifies as
``sim-tdx`` only, never as ``tdx`` (``evidence.platform_mismatch``). The target is a real
coordinator process whose manifest admits sim-tdx workers of one deployment and tdx workers;
the control run registers that deployment's honest worker.
"""

from __future__ import annotations

import pytest

from platform_fixtures import reason, start_coordinator
from veil.attest.binding import worker_report_data
from veil.attest.sim import measure_code
from veil.attest.sim.tdx import SimTdxPlatform
from veil.manifest import ReferenceValues


@pytest.fixture(scope="module")
def target(tmp_path_factory):  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("tdx-root-attack")
    sim = SimTdxPlatform.create(work / "sim")
    attacker = SimTdxPlatform.create(work / "attacker")  # the host's own, untrusted hierarchy
    coordinator = start_coordinator("sim-tdx", sim.directory, work)
    code = measure_code().hex()
    workers = [ReferenceValues(platform="sim-tdx", measurements=[code]), ReferenceValues(platform="tdx", measurements=[code])]
    coordinator.set_manifest(workers, workers[:1], [sim.root_fingerprint])
    yield coordinator, sim, attacker
    coordinator.stop()


def _signed_by(platform: SimTdxPlatform, label: str):  # type: ignore[no-untyped-def]
    def evidence(nonce: bytes, key: bytes) -> dict:  # type: ignore[type-arg]
        ev = platform.evidence(worker_report_data(nonce, key), mr_td=measure_code())
        return {"platform": label, "tdx": ev.to_json()}

    return evidence


def test_control_trusted_simulation_root_registers(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, _ = target
    assert reason(coordinator.register(_signed_by(sim, "sim-tdx"))) == "ok"


def test_hosts_own_root_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, _, attacker = target
    assert reason(coordinator.register(_signed_by(attacker, "sim-tdx"))) == "tdx.collateral_root_untrusted"
    assert reason(coordinator.register(_signed_by(attacker, "tdx"))) == "tdx.collateral_root_untrusted"


def test_simulated_evidence_labelled_hardware_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, _ = target
    assert reason(coordinator.register(_signed_by(sim, "tdx"))) == "evidence.platform_mismatch"
