"""Several gateway processes on one port (veil.worker.pool): keys reach every process, a rotation
and a stop reach every process at once, and the shared table holds across real processes.

Real processes: the pool's children under uvicorn with SO_REUSEPORT, asked on fresh connections
(so the kernel spreads them over the processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from veil.httpserver import GATEWAY_LIMITS
from veil.keyrelease import export_ohttp_keys
from veil.manifest import TenantEntry
from veil.ohttp.keyconfig import KeyPair, KeyStore, decode_key_config_list
from veil.testing import free_port, listeners
from veil.wire import GATEWAY_PATH
from veil.worker.pool import GatewayPool, GatewaySpec
from veil.worker.shared_state import SharedState
from veil.worker.tenants import Tenancy

ASKS = 12  # fresh connections per look: all on one of two processes has probability 2**-11


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[tuple[GatewayPool, str]]:
    port = free_port()
    spec = GatewaySpec(
        host="127.0.0.1",
        port=port,
        engine_socket=str(tmp_path / "no-engine.sock"),  # key discovery needs no engine
        key_records=export_ohttp_keys(KeyStore([KeyPair.generate(1)])),
        salt_secret=os.urandom(32),
        limits=GATEWAY_LIMITS,
    )
    shared = SharedState.create(1024)
    made = GatewayPool(3, spec, shared.fd)  # the test process stands for gateway 0: two children
    try:
        deadline = time.monotonic() + 60
        while listeners(port) < 2:
            assert time.monotonic() < deadline and all(p.poll() is None for p, _ in made.children), "children did not start"
            time.sleep(0.05)
        yield made, f"http://127.0.0.1:{port}"
    finally:
        made.close()


def _key_ids(url: str) -> set[tuple[int, ...]]:
    seen = set()
    for _ in range(ASKS):
        with httpx.Client(timeout=10) as http:  # a new connection each time
            r = http.get(url + GATEWAY_PATH)
            seen.add(tuple(c.key_id for c in decode_key_config_list(r.content)))
    return seen


def _until(check: object, seconds: float = 10.0) -> float:
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - start < seconds, "not within the bound"
        time.sleep(0.05)
    return time.monotonic() - start


def test_a_rotation_and_a_stop_reach_every_gateway_process(pool: tuple[GatewayPool, str]) -> None:
    gateways, url = pool
    assert _key_ids(url) == {(1,)}
    gateways.keys(export_ohttp_keys(KeyStore([KeyPair.generate(2)])))  # a re-registration's rotation
    took = _until(lambda: _key_ids(url) == {(2,)})
    assert took < 5  # at once, well inside one re-attestation interval (60 s by default)

    gateways.stop("worker.reattestation_failed")  # the worker failed closed
    _until(lambda: all(p.poll() is not None for p, _ in gateways.children))
    assert listeners(int(url.rsplit(":", 1)[1])) == 0


def test_a_child_stops_when_the_worker_is_gone(pool: tuple[GatewayPool, str]) -> None:
    gateways, _ = pool
    gateways._done.set()  # the worker is gone, and its watcher with it
    for _, channel in gateways.children:
        channel.close()  # what the worker's death does to the channel
    _until(lambda: all(p.poll() is not None for p, _ in gateways.children))


def test_replay_claims_hold_across_real_processes() -> None:
    """Two processes claim the same 300 keys at once: each key is granted exactly once."""
    shared = SharedState.create(1 << 14)  # 2,048 buckets: 300 keys never fill one of 8 ways
    script = textwrap.dedent("""
        import sys, time
        from veil.worker.shared_state import SharedState
        table = SharedState.attach(int(sys.argv[1]))
        now = time.monotonic()
        won = sum(table.claim(table.digest(b"enc %d" % i), i, now, now + 60) for i in range(300))
        print(won)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(shared.fd)], pass_fds=(shared.fd,), stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    won = [int(p.communicate(timeout=60)[0]) for p in procs]
    assert sum(won) == 300 and shared.live(time.monotonic()) == 300


def test_tenant_buckets_are_shared_by_every_process() -> None:
    """A tenant allowed 3 requests a minute gets 3 in all, however they are spread."""
    from veil.admin import create_tenant
    from veil.ohttp import bhttp
    from veil.worker.refusals import Refusal

    key, entry = create_tenant("t", 3)
    assert isinstance(entry, TenantEntry)
    shared = SharedState.create(16)
    one = Tenancy([entry], salt_secret=b"s" * 32, shared=shared)
    other = Tenancy([entry], salt_secret=b"s" * 32, shared=SharedState.attach(shared.fd))  # another mapping
    req = bhttp.Request("POST", "https", "api", "/v1/models", [("authorization", f"Bearer {key}")], b"")
    for tenancy in (one, other, one):
        tenancy.admit(req)
    for tenancy in (one, other):
        with pytest.raises(Refusal) as refused:
            tenancy.admit(req)
        assert refused.value.reason == "tenant.rate_limited"


def test_a_worker_never_joins_another_servers_port() -> None:
    """SO_REUSEPORT lets same-user sockets share a port: the worker's own bind must still find the
    port taken by an earlier server (here, another worker's gateway sockets) and fail as any
    server does, while its own gateway processes join its sockets."""
    import errno

    from veil.worker.pool import reuseport_socket

    port = free_port()
    earlier = reuseport_socket("127.0.0.1", port, first=True)
    try:
        with pytest.raises(OSError) as taken:
            reuseport_socket("127.0.0.1", port, first=True)
        assert taken.value.errno == errno.EADDRINUSE
        reuseport_socket("127.0.0.1", port).close()  # a gateway process of the same worker joins
    finally:
        earlier.close()


def test_one_process_per_core_respects_the_cgroup_cpu_quota(tmp_path: Path) -> None:
    """``--gateway-processes 0`` in a pod limited to 1.5 CPUs on a larger node starts 2, not one
    per node core; without a quota it is the affinity."""
    from veil.worker.serve import gateway_process_count

    cores = len(os.sched_getaffinity(0))
    assert gateway_process_count(3, tmp_path) == 3
    assert gateway_process_count(0, tmp_path) == cores  # no cgroup files: the affinity
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert gateway_process_count(0, tmp_path) == cores
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert gateway_process_count(0, tmp_path) == min(cores, 2)
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")  # cgroup v1: half a CPU
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert gateway_process_count(0, tmp_path) == 1


def _pids_until_replaced(gateways: GatewayPool, port: int, gone: int) -> list[int]:
    """Wait for ``gone`` to be replaced and the replacement to listen; the children's pids then."""
    _until(lambda: gone not in gateways.pids() and len(gateways.pids()) == 2, seconds=20)
    _until(lambda: listeners(port) == 2, seconds=60)
    return gateways.pids()


def test_a_dead_child_is_replaced_with_the_keys_the_worker_holds_now(pool: tuple[GatewayPool, str]) -> None:
    """A child killed after a rotation comes back serving the rotated keys only: the replacement
    starts from what the worker holds now, so a rotated-out key cannot return with it."""
    import signal

    gateways, url = pool
    port = int(url.rsplit(":", 1)[1])
    gateways.keys(export_ohttp_keys(KeyStore([KeyPair.generate(2)])))
    _until(lambda: _key_ids(url) == {(2,)})
    victim = gateways.pids()[0]
    os.kill(victim, signal.SIGKILL)  # a crash, or the OOM killer
    _pids_until_replaced(gateways, port, victim)
    assert _key_ids(url) == {(2,)}  # the key the worker started with (1) is not served again
    gateways.keys(export_ohttp_keys(KeyStore([KeyPair.generate(3)])))  # the replacement follows on
    _until(lambda: _key_ids(url) == {(3,)})


def test_replacements_stop_past_the_budget_and_after_a_stop(pool: tuple[GatewayPool, str]) -> None:
    import signal

    gateways, url = pool
    port = int(url.rsplit(":", 1)[1])
    gateways.MAX_RESTARTS = 1  # type: ignore[misc]
    first = gateways.pids()[0]
    os.kill(first, signal.SIGKILL)
    _pids_until_replaced(gateways, port, first)
    second = gateways.pids()[-1]
    os.kill(second, signal.SIGKILL)  # past the budget: dropped, not replaced
    _until(lambda: len(gateways.pids()) == 1, seconds=20)
    assert second not in gateways.pids()
    assert listeners(port) == 1  # the other child serves on
    gateways.stop("worker.reattestation_failed")
    _until(lambda: all(p.poll() is not None for p, _ in gateways.children))
    time.sleep(3 * gateways.CHECK_SECONDS)
    assert all(p.poll() is not None for p, _ in gateways.children)  # nothing replaced after a stop
    assert listeners(port) == 0
