"""Attack: a worker's host launches its TD wrongly (debug on, another kernel command line) and
registers it with the coordinator anyway.

The attacker controls the worker's host: the TD's launch parameters (TD attributes, the firmware,
kernel and command line that RTMR0-2 measure) and, on sim-tdx, the simulated TDX module and
quoting enclave keys, so it can produce any quote a real machine would produce for the TD it
launched. Defence: dcap-qvl refuses a TD with TUD.DEBUG (``tdx.debug_forbidden``) and the
manifest's TDX reference values pin RTMR2 (``tdx.rtmr_not_allowed``). The target is a real
coordinator process on sim-tdx; the control run registers the TD launched as the manifest says.
"""

from __future__ import annotations

import hashlib

import pytest

from platform_fixtures import reason, start_coordinator
from veil.attest.binding import worker_report_data
from veil.attest.sim import measure_code
from veil.attest.sim.tdx import DEFAULT_RTMRS, SimTdxPlatform
from veil.manifest import ReferenceValues, TdxReference


@pytest.fixture(scope="module")
def target(tmp_path_factory):  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("tdx-launch-attack")
    sim = SimTdxPlatform.create(work / "sim")
    coordinator = start_coordinator("sim-tdx", sim.directory, work)
    pinned = TdxReference(rtmr2=[DEFAULT_RTMRS[2].hex()])
    refs = [ReferenceValues(platform="sim-tdx", measurements=[measure_code().hex()], tdx=pinned)]
    coordinator.set_manifest(refs, refs, [sim.root_fingerprint])
    yield coordinator, sim
    coordinator.stop()


def _td(sim: SimTdxPlatform, **launch: object):  # type: ignore[no-untyped-def]
    def evidence(nonce: bytes, key: bytes) -> dict:  # type: ignore[type-arg]
        ev = sim.evidence(worker_report_data(nonce, key), mr_td=measure_code(), **launch)
        return {"platform": "sim-tdx", "tdx": ev.to_json()}

    return evidence


def test_control_td_launched_as_pinned_registers(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim = target
    assert reason(coordinator.register(_td(sim))) == "ok"


def test_debug_td_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim = target
    assert reason(coordinator.register(_td(sim, debug=True))) == "tdx.debug_forbidden"


def test_other_kernel_command_line_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim = target
    cmdline = hashlib.sha384(b"console=ttyS0 init=/bin/sh").digest()  # what the host booted instead
    rtmrs = (DEFAULT_RTMRS[0], DEFAULT_RTMRS[1], cmdline, DEFAULT_RTMRS[3])
    assert reason(coordinator.register(_td(sim, rtmrs=rtmrs))) == "tdx.rtmr_not_allowed"
