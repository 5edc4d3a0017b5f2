"""Attack: the coordinator's host launches its TD in debug mode, or boots another kernel command
line, and lets clients attest it.

The attacker controls the coordinator's host: the TD's launch attributes (TUD.DEBUG lets the host
read and write the TD's memory) and the firmware, kernel and command line RTMR0-2 measure; on
sim-tdx it also holds the simulated TDX module's keys, so it can produce any quote a real machine
would produce for the TD it launched. Defences, in the client's verification of the coordinator:
dcap-qvl refuses a TD with TUD.DEBUG and Veil's TDX policy refuses it again unless the reference
values allow debug (``tdx.debug_forbidden``); a client whose reference values pin RTMR2 refuses any
other command line (``tdx.rtmr_not_allowed``). The target is a real coordinator (uvicorn on
loopback, sim-tdx) with the host's attester; the control run attests the TD launched as pinned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from veil.attest.attester import SimTdxAttester
from veil.attest.sim.tdx import DEFAULT_RTMRS, SimTdxPlatform
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.errors import VeilError
from veil.manifest import ReferenceValues, TdxReference
from veil.testing import ServerThread

OTHER_CMDLINE = hashlib.sha384(b"console=ttyS0 init=/bin/sh").digest()  # what the host booted instead


class HostsLaunch(SimTdxAttester):
    """The coordinator's attester on the TD the host launched: its attributes and RTMRs."""

    def __init__(self, platform_dir: Path, **launch: Any) -> None:
        super().__init__(platform_dir)
        self.launch = launch

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        ev = self._sim.evidence(report_data, mr_td=self.measurement, **self.launch)
        return {"platform": self.platform, "tdx": ev.to_json()}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimTdxPlatform:
    return SimTdxPlatform.create(tmp_path_factory.mktemp("tdx-coordinator-launch") / "sim")


def _attest(sim: SimTdxPlatform, **launch: Any) -> str:
    attester = HostsLaunch(sim.directory, **launch)
    ref = ReferenceValues(
        platform="sim-tdx", measurements=[attester.measurement.hex()], tdx=TdxReference(rtmr2=[DEFAULT_RTMRS[2].hex()])
    )
    with ServerThread(create_app(CoordinatorState.generate(), attester)) as server:
        policy = ClientPolicy(
            coordinator_url=server.url, coordinator=[ref], trust_simulated=True, simulation_roots=[sim.root_fingerprint]
        )
        try:
            verify_coordinator(policy, require_manifest=False)
        except VeilError as err:
            return err.reason
    return "ok"


@pytest.fixture(scope="module")
def control(sim: SimTdxPlatform) -> str:
    return _attest(sim)


def test_control_td_launched_as_pinned_is_accepted(control: str) -> None:
    assert control == "ok"


def test_debug_td_refused(sim: SimTdxPlatform, control: str) -> None:
    assert _attest(sim, debug=True) == "tdx.debug_forbidden"


def test_other_kernel_command_line_refused(sim: SimTdxPlatform, control: str) -> None:
    rtmrs = (DEFAULT_RTMRS[0], DEFAULT_RTMRS[1], OTHER_CMDLINE, DEFAULT_RTMRS[3])
    assert _attest(sim, rtmrs=rtmrs) == "tdx.rtmr_not_allowed"
