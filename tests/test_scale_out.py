"""`veil up --workers 3 --coordinators 3` as a user runs it: three workers (each with its own
sandboxed engine) and three coordinators on one private PostgreSQL, behind a real HAProxy
(deploy/haproxy/balancer.cfg), and what happens when replicas die:

* a coordinator killed with SIGKILL while clients verify and workers re-register: no client
  verification fails, the workers move to the others and take a newer manifest set after the
  kill, and the coordinator restarted on the same database rejoins with the same state;
* a worker killed with SIGKILL mid-stream: the client's stream ends in an error (never a silently
  short answer), new requests succeed on the other workers at once, and the balancer marks the
  dead one DOWN and sends it nothing more.

One deployment serves the whole module (start-up dominates: three engines load the model).
Without PostgreSQL the worker tests run against one coordinator and the HA test skips (in CI,
VEIL_REQUIRE_POSTGRES=1 makes that a failure).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from haproxy_fixtures import require_haproxy
from veil.testing import free_port

pytestmark = pytest.mark.slow

WORKERS, COORDINATORS = 3, 3
REREGISTER_SECONDS = 2.0


@dataclass
class Deployment:
    state: Path
    proc: subprocess.Popen[str]
    db_url: str | None
    coordinators: int

    @property
    def policy_path(self) -> Path:
        return self.state / "client-policy.json"

    def policy(self):  # -> ClientPolicy
        from veil.client.policy import ClientPolicy

        return ClientPolicy.load(self.policy_path)

    def stats(self) -> dict[str, dict[str, str]]:
        from veil.balancer import HAProxy

        return HAProxy("", {}, self.state / "haproxy", stats_socket=self.state / "haproxy" / "haproxy.sock").server_states()

    def replica_pid(self, role: str, port: int) -> int:
        """The pid of the `veil <role> ... --port <port>` process of this deployment."""
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv]
            if (
                "veil" in args
                and role in args
                and str(self.state) in " ".join(args)
                and args[args.index("--port") + 1] == str(port)
            ):
                return int(proc.name)
        raise AssertionError(f"no {role} on port {port}")

    def log(self, name: str) -> str:
        return (self.state / "logs" / f"{name}.log").read_text(errors="replace")


def _wait_for(condition, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str | None]:
    """A private PostgreSQL database (tests/test_coordinator_postgres.py's server), or None."""
    from test_coordinator_postgres import REQUIRE, PgServer, _pg_bindir

    bindir = _pg_bindir()
    if bindir is None:
        if REQUIRE:
            pytest.fail("VEIL_REQUIRE_POSTGRES=1 but PostgreSQL is not installed")
        yield None
        return
    server = PgServer(bindir)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired):
        server.stop()
        if REQUIRE:
            raise
        yield None
        return
    yield server.create_database()
    server.stop()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, postgres_url) -> Iterator[Deployment]:
    require_haproxy()
    state = tmp_path_factory.mktemp("scale") / "state"
    coordinators = COORDINATORS if postgres_url else 1
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil",
            "up",
            "--state-dir",
            str(state),
            "--coordinator-port",
            str(free_port()),
            "--worker-port",
            str(free_port()),
            "--workers",
            str(WORKERS),
            "--coordinators",
            str(coordinators),
            "--reregister-seconds",
            str(REREGISTER_SECONDS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200", **({"VEIL_DB": postgres_url} if postgres_url else {})},
    )
    seen = ""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line and proc.poll() is not None:
            break
        seen += line
        if "Press Ctrl-C to stop" in line:
            break
    else:
        proc.kill()
    if "Press Ctrl-C to stop" not in seen:
        proc.kill()
        raise AssertionError(f"veil up did not come up:\n{seen}")
    assert "HAProxy in front of" in seen
    yield Deployment(state, proc, postgres_url, coordinators)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()


def _chat(client, content: str, max_tokens: int = 4) -> str:  # type: ignore[no-untyped-def]
    resp = client.chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": content}], max_tokens=max_tokens
    )
    return resp.choices[0].message.content or ""


def _server_ports(stats: dict[str, dict[str, str]], backend: str) -> dict[str, int]:
    return {k.split("/")[1]: int(v["addr"].rsplit(":", 1)[1]) for k, v in stats.items() if k.startswith(backend + "/")}


def test_the_client_policy_names_the_balancer_and_every_worker_serves(deployment) -> None:
    from veil.client.sdk import Client

    policy = deployment.policy()
    stats = deployment.stats()
    workers = {k: v for k, v in stats.items() if k.startswith("gateways/")}
    assert len(workers) == WORKERS and all(v["status"] == "UP" for v in workers.values())
    # the policy names the balancer's ports, not any replica's
    assert str(policy.gateway_url).rsplit(":", 1)[1] not in {str(p) for p in _server_ports(stats, "gateways").values()}
    before = {k: int(v["stot"]) for k, v in workers.items()}
    with Client(deployment.policy_path) as client:
        for i in range(2 * WORKERS):
            assert _chat(client, f"Say {i}.")
    after = {k: int(v["stot"]) for k, v in deployment.stats().items() if k.startswith("gateways/")}
    assert all(after[k] > before[k] for k in before), f"least-connection spreads sequential requests: {before} -> {after}"


def test_a_killed_coordinator_loses_nothing_and_a_restarted_one_rejoins(deployment) -> None:
    if deployment.coordinators == 1:
        pytest.skip("PostgreSQL is not available: one coordinator only")
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from veil import admin as admin_ops
    from veil.client.sdk import Client
    from veil.client.verify import verify_coordinator
    from veil.manifest import SignedManifest, sign_manifest

    policy = deployment.policy()
    ports = _server_ports(deployment.stats(), "coordinators")
    victim_name, victim_port = sorted(ports.items())[0]
    victim_pid = deployment.replica_pid("coordinator", victim_port)
    victim_cmd = (Path("/proc") / str(victim_pid) / "cmdline").read_bytes().split(b"\0")[:-1]

    failures: list[str] = []
    verified = [0]
    stop = threading.Event()

    def verify_loop() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    verify_coordinator(policy, http=http)
                    verified[0] += 1
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    failures.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=verify_loop)
    thread.start()
    try:
        _wait_for(lambda: verified[0] >= 5, 30, "client verifications to run")
        os.kill(victim_pid, signal.SIGKILL)  # mid-flight: clients verify, workers re-register
        killed_at = verified[0]
        _wait_for(
            lambda: deployment.stats()[f"coordinators/{victim_name}"]["status"].startswith("DOWN"),
            20,
            "the balancer to mark it DOWN",
        )
        _wait_for(lambda: verified[0] >= killed_at + 20, 60, "verifications after the kill")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == [], failures[:3]

    # a newer manifest set after the kill reaches every worker through the surviving coordinators
    admin = load_pem_private_key((deployment.state / "admin.key").read_bytes(), password=None)
    head = SignedManifest.parse(httpx.get(f"{policy.coordinator_url}/v1/manifest", timeout=10).content)
    newer = sign_manifest(
        head.manifest.model_copy(update={"settings": {**head.manifest.settings, "scale-test": 1}}), [admin], head.digest.hex()
    )
    admin_ops.publish_manifest(policy.coordinator_url, newer)
    mark = f"now serves under manifest {newer.digest.hex()[:16]}"
    _wait_for(
        lambda: all(mark in deployment.log(f"worker-{i}") for i in range(1, WORKERS + 1)),
        20 * REREGISTER_SECONDS + 30,
        "every worker to re-register and take the newer manifest",
        interval=0.5,
    )
    with Client(deployment.policy_path) as client:
        assert client.attestation.manifest.digest == newer.digest
        assert _chat(client, "Say yes.")

    # the killed coordinator, restarted on the same database, rejoins with the same state
    restarted = subprocess.Popen(
        [a.decode() for a in victim_cmd],
        env={**os.environ, "VEIL_DB": deployment.db_url or ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: deployment.stats()[f"coordinators/{victim_name}"]["status"] == "UP", 60, "the restarted coordinator to be UP"
        )
        direct = verify_coordinator(policy.model_copy(update={"coordinator_url": f"http://127.0.0.1:{victim_port}"}))
        through_balancer = verify_coordinator(policy)
        assert direct.manifest.digest == newer.digest  # it sees what was set while it was dead
        assert [c.encode() for c in direct.key_configs] == [c.encode() for c in through_balancer.key_configs]
        assert direct.public_key == through_balancer.public_key
        history = httpx.get(f"http://127.0.0.1:{victim_port}/v1/manifest/history", timeout=10).json()
        assert [SignedManifest.parse(json.dumps(h)).digest for h in history][-2:] == [head.digest, newer.digest]
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=30)


def test_a_worker_killed_mid_stream_is_an_error_and_the_others_take_over(deployment) -> None:
    from veil.client.sdk import Client

    ports = _server_ports(deployment.stats(), "gateways")
    with Client(deployment.policy_path) as client:
        stream = client.chat.completions.create(
            model="smollm2-135m-instruct",
            max_tokens=400,
            stream=True,
            messages=[{"role": "user", "content": "Count from 1 to 300, separated by commas."}],
        )
        received, finished = "", None
        chunks = iter(stream)
        while not received:  # the stream is under way
            chunk = next(chunks)
            if chunk.choices and chunk.choices[0].delta.content:
                received += chunk.choices[0].delta.content
        busy = [k.split("/")[1] for k, v in deployment.stats().items() if k.startswith("gateways/") and int(v["scur"]) > 0]
        assert len(busy) == 1, busy
        victim = busy[0]
        os.kill(deployment.replica_pid("worker", ports[victim]), signal.SIGKILL)
        with pytest.raises(Exception) as info:  # the client sees the break: no silently short answer
            for chunk in chunks:
                if chunk.choices:
                    received += chunk.choices[0].delta.content or ""
                    finished = chunk.choices[0].finish_reason or finished
        assert finished is None
        assert not isinstance(info.value, StopIteration)

        # new requests succeed at once (a connection refused by the dead one is retried elsewhere)
        for i in range(WORKERS * 2):
            assert _chat(client, f"Say {i}.")
        _wait_for(
            lambda: deployment.stats()[f"gateways/{victim}"]["status"].startswith("DOWN"),
            20,
            "the balancer to mark the worker DOWN",
        )
        sent_to_dead = int(deployment.stats()[f"gateways/{victim}"]["stot"])
        for i in range(WORKERS * 2):
            assert _chat(client, f"Say {i} again.")
        after = deployment.stats()
        assert int(after[f"gateways/{victim}"]["stot"]) == sent_to_dead, "nothing more goes to the dead worker"
        assert sum(int(v["stot"]) for k, v in after.items() if k.startswith("gateways/") and k != f"gateways/{victim}") > 0
    assert deployment.proc.poll() is None, "veil up serves on with the remaining workers"
