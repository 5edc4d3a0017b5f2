"""A hostile engine tries to leak from inside the sandbox; every attempt must fail.

One run per profile (bubblewrap, bubblewrap with Landlock off, gvisor), started through the real
``EngineProcess`` (tests/sandbox_harness.py), then one test per attempt so the report shows each
outcome. A control run *outside* the sandbox shows the same probes do detect a leak when one
exists. The attacks of issues 9.5 and 15 have their own modules in tests/attacks/.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
from sandbox_harness import HOSTILE, PROFILES, hostile_report, require

from veil.engines.launcher import EngineProcess

ATTEMPTS = [
    "tcp_connect_host_loopback",
    "tcp_connect_remote_10.255.255.1",
    "tcp6_connect_loopback",
    "udp_send_host_loopback",
    "udp_connect_remote",
    "dns_resolution",
    "network_interface_other_than_lo",
    "raw_icmp_socket",
    "packet_socket",
    "netlink_route_socket",
    "vsock_socket",
    "unix_connect_host_socket",
    "unix_connect_host_abstract",
    "unix_connect_syslog_/dev/log",
    "io_uring_setup",
    "ptrace_traceme",
    "ptrace_attach_parent",
    "unshare_net",
    "unshare_user",
    "bpf_map_create",
    "mount_tmpfs",
    "read_host_pid_environ",
    "read_host_pid_mem_maps",
    "read_victim_environ_secret",
    "read_victim_cmdline_secret",
    "read_pid1_environ_secret",
    "read_parent_environ_secret",
    "signal_victim",
    "write_model_dir",
    "write_state_dir",
    "write_tmp",
    "write_var_tmp",
    "write_dev_shm",
    "write_socket_dir_file",
    "write_socket_dir_subdir",
    "mkfifo_socket_dir",
    "symlink_socket_dir",
    "daemon_outlives_sandbox",
]


@pytest.fixture(scope="module", params=list(PROFILES))
def sandboxed_report(request) -> dict[str, dict]:
    require(PROFILES[request.param])
    return hostile_report(request.param)


def test_every_attempt_was_made(sandboxed_report: dict[str, dict]) -> None:
    assert set(ATTEMPTS) <= set(sandboxed_report)


@pytest.mark.parametrize("name", [*ATTEMPTS, "_host_traps"])
def test_attempt_failed(sandboxed_report: dict[str, dict], name: str) -> None:
    result = sandboxed_report[name]
    print(f"{name}: leaked={result['leaked']} detail={result['detail']!r} host={result.get('host_saw', '-')}")
    assert not result["leaked"], result


def test_control_run_unsandboxed_detects_leaks() -> None:
    """Outside the sandbox the same probes succeed, so a pass above means something."""
    report = hostile_report(None)
    leaked = {name for name, r in report.items() if r["leaked"]}
    assert {
        "tcp_connect_host_loopback",
        "read_victim_environ_secret",
        "write_state_dir",
        "write_tmp",
        "write_socket_dir_file",
        "unix_connect_host_abstract",
        "_host_traps",
    } <= leaked, report


@pytest.mark.parametrize("name", list(PROFILES))
def test_http_over_unix_socket_reaches_host(name: str, tmp_path: Path) -> None:
    """The one channel that must work: the host talks HTTP to the engine's Unix socket."""
    profile = PROFILES[name]
    require(profile)
    sock = tmp_path / "sock" / "engine.sock"
    engine = EngineProcess(sock, engine_module=str(HOSTILE), sandbox=profile, extra_args=["--serve-only"], startup_timeout=120)
    with engine:
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://engine") as client:
            reply = client.get("/v1/models", timeout=10)
        assert reply.status_code == 200
        assert reply.json()["ok"] is True
        assert os.listdir(sock.parent) == ["engine.sock"]  # nothing else in its directory
    deadline = time.monotonic() + 10
    while os.listdir(sock.parent) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(sock.parent) == []  # wiped at stop
