"""Attack: keep the engine under the old sandbox after the admins changed it (issue 15.3).

Who benefits is the untrusted engine (and a host that prefers it less confined): the admins
tighten the manifest's sandbox — say from bubblewrap to gVisor — and the old worker reported the
new manifest while its engine kept running under the old profile. Against a real coordinator and
worker process re-attesting every second: the worker binds the sandbox settings it enforces into
its evidence, restarts the engine under the new profile before it applies the manifest, and
stops when it cannot enforce one (``sandbox.unavailable``); and the coordinator refuses evidence
that binds any other settings than the manifest's (``binding.report_data_mismatch``) — a worker
that keeps its old profile cannot register under the new manifest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from worker_fixtures import WorkerStack, wait_for

from veil.manifest import SandboxSettings, sandbox_binding
from veil.sandbox.profile import SandboxError, SandboxProfile, check_enforceable
from veil.worker.registration import RegistrationRefused, register

pytestmark = pytest.mark.slow
SLACK = 60.0  # one interval, a registration, and an engine start under gVisor on a loaded machine


def _gvisor_or_skip() -> None:
    try:
        check_enforceable(SandboxProfile(name="gvisor"))
    except SandboxError as exc:
        if "gvisor" in os.environ.get("VEIL_REQUIRE_SANDBOX", "").split(","):
            pytest.fail(f"gvisor required by VEIL_REQUIRE_SANDBOX but refused: {exc}")
        pytest.skip(f"gvisor cannot run here: {exc}")


def _engine_profile(worker_pid: int) -> str | None:
    """The sandbox of the engine the worker runs, read from its child's command line: bubblewrap
    replaces the launcher with ``bwrap``; the gVisor launcher stays and runs ``runsc``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid != worker_pid:
            continue
        if argv[0].endswith(b"bwrap"):
            return "bubblewrap"
        if b"veil.sandbox.launch" in argv and b"--sandbox" in argv:
            return argv[argv.index(b"--sandbox") + 1].decode()
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    s = WorkerStack(Path(tmp_path_factory.mktemp("sandbox-change")), interval=1.0)
    yield s
    s.stop()


def test_the_coordinator_refuses_evidence_binding_another_sandbox(stack: WorkerStack) -> None:
    """The attacker here is a worker build that would register under a gVisor manifest while its
    engine stays under bubblewrap (the old worker did exactly that): its evidence binds what it
    enforces, and a real coordinator refuses it."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from deployment_fixtures import launched_attester

    from veil.coordinator.app import create_app
    from veil.coordinator.state import CoordinatorState
    from veil.manifest import public_key_hex, sign_manifest
    from veil.testing import ServerThread

    admin = Ed25519PrivateKey.generate()
    attester = launched_attester(stack.sim.directory, admin)
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(admin))
    gvisor = stack.manifest.model_copy(
        update={
            "sandbox": SandboxSettings(profile="gvisor"),
            "admin_keys": [public_key_hex(admin)],
            "coordinator_identity": state.identity,
        }
    )
    with ServerThread(create_app(state, attester)) as coordinator, httpx.Client(timeout=30) as http:
        http.post(
            f"{coordinator.url}/v1/manifest", content=sign_manifest(gvisor, [admin], None).model_dump_json()
        ).raise_for_status()
        with pytest.raises(RegistrationRefused) as refused:
            register(coordinator.url, attester, http, sandbox=sandbox_binding(SandboxSettings(profile="bubblewrap")))
        assert refused.value.reason == "binding.report_data_mismatch"
        register(coordinator.url, attester, http, sandbox=sandbox_binding(gvisor.sandbox))  # what it must bind


def test_a_sandbox_change_restarts_the_engine_under_the_new_profile(stack: WorkerStack) -> None:
    _gvisor_or_skip()
    assert _engine_profile(stack.worker.pid) == "bubblewrap"
    stack.publish(stack.manifest.model_copy(update={"sandbox": SandboxSettings(profile="gvisor")}))
    wait_for(lambda: "engine restarted under gvisor" in stack.output(), SLACK, "the engine to restart under gVisor")
    assert _engine_profile(stack.worker.pid) == "gvisor" and stack.worker.poll() is None
    with stack.client() as http:
        wait_for(lambda: http.get("/v1/models").status_code == 200, SLACK, "the engine under gVisor to answer")


def test_a_sandbox_the_worker_cannot_enforce_stops_it(stack: WorkerStack) -> None:
    profile = stack.manifest.sandbox.profile
    stack.publish(stack.manifest.model_copy(update={"sandbox": SandboxSettings(profile=profile, allow_gpu=True)}))  # no GPU here
    wait_for(lambda: stack.worker.poll() is not None, SLACK, "the worker to stop")
    out = stack.output()
    assert "sandbox.unavailable" in out, out[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.gateway}/.well-known/ohttp-gateway", timeout=2)
