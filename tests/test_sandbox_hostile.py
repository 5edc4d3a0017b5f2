"""A hostile engine tries to leak from inside the sandbox; every attempt must fail.

One sandboxed run per profile (module-scoped), then one test per attempt so the report shows each
outcome. A control run *outside* the sandbox shows the same probes do detect a leak when one exists.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from veil.sandbox import SandboxError, SandboxProfile, check_enforceable, run_sandboxed

HERE = Path(__file__).resolve().parent
HOSTILE = HERE / "hostile_engine.py"
ATTEMPTS = [
    "tcp_connect_host_loopback", "tcp_connect_remote_10.255.255.1", "tcp6_connect_loopback",
    "udp_send_host_loopback", "udp_connect_remote", "dns_resolution",
    "network_interface_other_than_lo", "raw_icmp_socket", "packet_socket", "netlink_route_socket",
    "vsock_socket", "unix_connect_host_socket", "unix_connect_host_abstract",
    "unix_connect_syslog_/dev/log", "io_uring_setup", "ptrace_traceme", "ptrace_attach_parent",
    "unshare_net", "unshare_user", "bpf_map_create", "mount_tmpfs", "read_host_pid_environ",
    "read_host_pid_mem_maps", "read_victim_environ_secret", "read_victim_cmdline_secret",
    "read_pid1_environ_secret", "read_parent_environ_secret", "signal_victim", "write_model_dir",
    "write_state_dir", "write_tmp", "write_var_tmp", "write_dev_shm", "write_socket_dir_file",
    "write_socket_dir_subdir", "mkfifo_socket_dir", "symlink_socket_dir", "daemon_outlives_sandbox",
]
PROFILES = ["bubblewrap", "gvisor"]


def require(profile: SandboxProfile) -> None:
    """Skip where the profile cannot run; fail instead when VEIL_REQUIRE_SANDBOX names it (CI)."""
    try:
        check_enforceable(profile)
    except SandboxError as exc:
        required = os.environ.get("VEIL_REQUIRE_SANDBOX", "").split(",")
        if profile.name in required:
            pytest.fail(f"{profile.name} required by VEIL_REQUIRE_SANDBOX but refused: {exc}")
        pytest.skip(f"{profile.name} cannot run here: {exc}")


class HostTraps:
    """Host-side listeners and a victim process: anything reaching them is a leak."""

    def __init__(self, root: Path, marker: str) -> None:
        self.marker = marker
        self.hits: list[str] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.unix_path = str(root / "host.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        self.abstract = f"veil-hostile-{marker}"
        self.abs = socket.socket(socket.AF_UNIX)
        self.abs.bind(b"\0" + self.abstract.encode())
        self.abs.listen()
        for sock in (self.tcp, self.unix, self.abs):
            threading.Thread(target=self._accept, args=(sock,), daemon=True).start()
        threading.Thread(target=self._recv_udp, daemon=True).start()
        env = {**os.environ, "HOSTILE_TEST_SECRET": marker}
        self.victim = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)", marker], env=env
        )

    def _accept(self, sock: socket.socket) -> None:
        try:
            while True:
                conn, _ = sock.accept()
                self.hits.append(f"connection on {sock.getsockname()!r}")
                conn.close()
        except OSError:
            return

    def _recv_udp(self) -> None:
        try:
            while True:
                data, _ = self.udp.recvfrom(4096)
                self.hits.append(f"UDP datagram {data!r}")
        except OSError:
            return

    def close(self) -> None:
        self.victim.kill()
        self.victim.wait()
        for sock in (self.tcp, self.udp, self.unix, self.abs):
            sock.close()


def processes_with(marker: str, exclude: set[int]) -> list[int]:
    """Host pids whose command line carries ``marker`` (a daemon that escaped)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude:
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry))
    return found


def run_attack(tmp: Path, profile: SandboxProfile | None) -> dict[str, dict]:
    """Run the hostile engine (sandboxed, or unsandboxed when profile is None) and judge it."""
    marker = f"veil-leak-{uuid.uuid4().hex[:12]}"
    model_dir, state_dir, socket_dir = tmp / "model", tmp / "state", tmp / "sock"
    for d in (model_dir, state_dir, socket_dir):
        d.mkdir()
    (model_dir / "model.gguf").write_bytes(b"GGUF not really")
    traps = HostTraps(tmp, marker)
    argv = [sys.executable, str(HOSTILE), "attack", "--marker", marker,
            "--model-dir", str(model_dir), "--state-dir", str(state_dir),
            "--socket-dir", str(socket_dir), "--host-socket", traps.unix_path,
            "--abstract", traps.abstract, "--host-pid", str(os.getpid()),
            "--victim-pid", str(traps.victim.pid), "--tcp-port", str(traps.port)]
    env = {**os.environ, "HOSTILE_TEST_SECRET": marker}
    try:
        if profile is None:
            proc = subprocess.Popen([*argv, "--safe-only"], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        else:
            proc = run_sandboxed(profile, argv, socket_dir=str(socket_dir),
                                 ro_binds=[str(HERE), str(model_dir)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        report = {r["name"]: r for r in json.loads(out)["attempts"]}
        time.sleep(0.3)  # let a straggling daemon show up in /proc if it survived
        survivors = processes_with(marker, exclude={traps.victim.pid, os.getpid()})
        left = {
            "write_model_dir": model_dir / marker,
            "write_state_dir": state_dir / marker,
            "write_tmp": Path("/tmp") / marker,
            "write_var_tmp": Path("/var/tmp") / marker,
            "write_dev_shm": Path("/dev/shm") / marker,
            "write_socket_dir_file": socket_dir / f"{marker}.txt",
            "write_socket_dir_subdir": socket_dir / f"{marker}.d",
            "mkfifo_socket_dir": socket_dir / f"{marker}.fifo",
            "symlink_socket_dir": socket_dir / f"{marker}.lnk",
        }
        for name, path in left.items():
            if name in report:
                leaked = os.path.lexists(path)
                report[name]["host_saw"] = f"{path} exists" if leaked else f"{path} absent"
                report[name]["leaked"] = leaked
        if "daemon_outlives_sandbox" in report:
            report["daemon_outlives_sandbox"]["host_saw"] = f"surviving pids: {survivors}"
            report["daemon_outlives_sandbox"]["leaked"] = bool(survivors)
        for r in report.values():
            r.setdefault("leaked", r["succeeded"])
        # Anything reaching the host's listeners is a leak, whichever attempt did it.
        report["_host_traps"] = {"name": "_host_traps", "leaked": bool(traps.hits),
                                 "detail": f"host listeners saw: {traps.hits}"}
        for pid in survivors:
            os.kill(pid, 9)
        for path in left.values():
            if path.is_file() and str(path).startswith(("/tmp/", "/var/tmp/", "/dev/shm/")):
                path.unlink()
        return report
    finally:
        traps.close()


@pytest.fixture(scope="module", params=PROFILES)
def sandboxed_report(request, tmp_path_factory) -> Iterator[dict[str, dict]]:
    profile = SandboxProfile(name=request.param)
    require(profile)
    yield run_attack(tmp_path_factory.mktemp(request.param), profile)


def test_every_attempt_was_made(sandboxed_report: dict[str, dict]) -> None:
    assert set(ATTEMPTS) <= set(sandboxed_report)


@pytest.mark.parametrize("name", [*ATTEMPTS, "_host_traps"])
def test_attempt_failed(sandboxed_report: dict[str, dict], name: str) -> None:
    result = sandboxed_report[name]
    print(f"{name}: leaked={result['leaked']} detail={result['detail']!r} "
          f"host={result.get('host_saw', '-')}")
    assert not result["leaked"], result


def test_control_run_unsandboxed_detects_leaks(tmp_path: Path) -> None:
    """Outside the sandbox the same probes succeed, so a pass above means something."""
    report = run_attack(tmp_path, None)
    leaked = {name for name, r in report.items() if r["leaked"]}
    assert {"tcp_connect_host_loopback", "read_victim_environ_secret", "write_state_dir",
            "write_tmp", "write_socket_dir_file", "unix_connect_host_abstract",
            "_host_traps"} <= leaked, report


@pytest.mark.parametrize("name", PROFILES)
def test_http_over_unix_socket_reaches_host(name: str, tmp_path: Path) -> None:
    """The one channel that must work: the host talks HTTP to the engine's Unix socket."""
    profile = SandboxProfile(name=name)
    require(profile)
    sock = tmp_path / "engine.sock"
    proc = run_sandboxed(profile, [sys.executable, str(HOSTILE), "serve", "--socket", str(sock)],
                         socket_dir=str(tmp_path), ro_binds=[str(HERE)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "engine socket never appeared"
            time.sleep(0.02)
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://engine") as client:
            reply = client.get("/v1/models", timeout=10)
        assert reply.status_code == 200
        assert reply.json()["ok"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=10)
