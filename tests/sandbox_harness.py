"""Run tests/hostile_engine.py the way the worker runs an engine, and judge what leaked.

``hostile_report(name)`` starts the hostile engine through the real ``EngineProcess`` under one of
``PROFILES`` (bubblewrap, bubblewrap with Landlock off, gvisor) with what a worker hands a real
engine: a sealed memfd as stdin (weights), the launcher's environment carrying ``VEIL_*``
secrets and a ``PYTHONPATH`` entry that is someone's home directory, a socket directory of its
own, and small cgroup ceilings. ``hostile_report(None)`` is the control: the same engine as a
plain process with none of the protections (stdout to a log file in the state directory, as the
launcher once did; an inherited directory descriptor; the same environment), so every probe is
seen to detect its leak when there is one. Each run is made once per test session and shared by
the modules that read it (tests/system/test_sandbox_hostile.py and the tests/attacks/test_engine_*.py).

The host judges what the engine cannot: files and socket names left behind, a daemon outliving
the sandbox, what the worker kept of the engine's output, and its listeners (anything reaching
them is a leak, whichever attempt did it).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from veil.engines.launcher import EngineProcess
from veil.sandbox import SandboxError, SandboxProfile, check_enforceable
from veil.sealing.memfd import MemFile

HERE = Path(__file__).resolve().parent
HOSTILE = HERE / "hostile_engine.py"
PROFILES = {
    "bubblewrap": SandboxProfile(name="bubblewrap"),
    "bubblewrap-no-landlock": SandboxProfile(name="bubblewrap", landlock=False),
    "gvisor": SandboxProfile(name="gvisor"),
}
PIDS_MAX = 64
# bubblewrap: the engine's own ceiling. gVisor: the cgroup holds the whole runtime (runsc, gofer,
# Sentry), whose memory also holds what the engine freed, so it gets more room.
MEMORY_MAX = {"gvisor": 1 << 30}
# Judged by the host from what is left after the engine stopped.
LEFT_BEHIND = {
    "write_model_dir": "model/{m}",
    "write_state_dir": "state/{m}",
    "write_tmp": "/tmp/{m}",
    "write_var_tmp": "/var/tmp/{m}",
    "write_dev_shm": "/dev/shm/{m}",
    "write_socket_dir_file": "sock/{m}.txt",
    "write_socket_dir_subdir": "sock/{m}.d",
    "mkfifo_socket_dir": "sock/{m}.fifo",
    "symlink_socket_dir": "sock/{m}.lnk",
    "socket_names_in_socket_dir": "sock/{m}-0",
}


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
        self.victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker], env=env)

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


def files_with(roots: list[Path], needle: bytes) -> list[str]:
    """Regular files under ``roots`` whose bytes contain ``needle``."""
    hits = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    if os.path.isfile(path) and needle in Path(path).read_bytes():
                        hits.append(path)
                except OSError:
                    continue
    return hits


def _get(sock: Path, path: str, method: str = "GET") -> dict:
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://engine", timeout=60) as client:
        return client.request(method, path).json()


def _control(argv: list[str], env: dict[str, str], sock: Path, state: Path) -> subprocess.Popen:
    """The hostile engine with none of the protections, as a plain process."""
    log = open(state / "engine.log", "wb")  # what the launcher used to do
    directory = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = subprocess.Popen([*argv, "--safe-only"], env=env, stdout=log, stderr=log, pass_fds=(directory,))
    finally:
        log.close()
        os.close(directory)
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "control engine never served"
        time.sleep(0.05)
    return proc


@functools.lru_cache(maxsize=None)
def hostile_report(name: str | None) -> dict[str, dict]:
    """Run the hostile engine once (under ``PROFILES[name]``, or unprotected for None)."""
    base = Path(tempfile.mkdtemp(prefix="veil-hostile-"))
    try:
        return _run(base, None if name is None else PROFILES[name])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(base: Path, profile: SandboxProfile | None) -> dict[str, dict]:
    marker = f"veil-leak-{uuid.uuid4().hex[:12]}"
    memory_max = MEMORY_MAX.get(profile.name if profile else "", 256 << 20)
    model_dir, state_dir, sock_dir, home = (base / n for n in ("model", "state", "sock", "home"))
    for d in (model_dir, state_dir, home):
        d.mkdir()
    (model_dir / "model.gguf").write_bytes(b"GGUF not really")
    (home / "secret.txt").write_text(marker)
    traps = HostTraps(base, marker)
    sock = sock_dir / "engine.sock"
    args = [
        "--marker",
        marker,
        "--model-dir",
        str(model_dir),
        "--state-dir",
        str(state_dir),
        "--host-socket",
        traps.unix_path,
        "--abstract",
        traps.abstract,
        "--secret-home",
        str(home),
        "--host-pid",
        str(os.getpid()),
        "--victim-pid",
        str(traps.victim.pid),
        "--tcp-port",
        str(traps.port),
        "--pids-max",
        str(PIDS_MAX),
        "--memory-max",
        str(memory_max),
    ]
    env = {**os.environ, "HOSTILE_TEST_SECRET": marker, "VEIL_API_KEY": marker, "PYTHONPATH": str(home)}
    weights = MemFile.create()
    weights.write_all(memoryview(marker.encode() * 64))
    weights.seal()
    engine = None
    try:
        if profile is None:
            sock_dir.mkdir()
            proc = _control([sys.executable, str(HOSTILE), "--socket", str(sock), *args], env, sock, state_dir)
        else:
            limited = profile.model_copy(update={"pids_max": PIDS_MAX, "memory_max": memory_max})
            engine = EngineProcess(
                sock,
                engine_module=str(HOSTILE),
                sandbox=limited,
                ro_binds=[str(model_dir)],
                extra_args=args,
                env=env,
                stdin_fd=weights.fd,
                startup_timeout=180,
            )
            engine.start()
        report = {r["name"]: r for r in _get(sock, "/report")["attempts"]}
        try:
            memory = _get(sock, "/memory", "POST")
        except httpx.TransportError as exc:  # the whole sandbox was killed at its ceiling
            memory = {
                "name": "memory_past_ceiling",
                "succeeded": False,
                "judged_by": "engine",
                "detail": f"the engine was killed at its memory ceiling ({exc!r})",
            }
        report["memory_past_ceiling"] = memory
        while_running = sorted(os.listdir(sock_dir))
    finally:
        if engine is not None:
            engine.stop()
            kept = engine.log_text()
            cgroup_note = engine.cgroup_unavailable
        else:
            proc.terminate()
            proc.wait(30)
            kept = (state_dir / "engine.log").read_bytes().decode("utf-8", "replace")
            cgroup_note = "control run: no cgroup"
        weights.close()
    time.sleep(0.3)  # let a straggling daemon show up in /proc if it survived
    survivors = processes_with(marker, exclude={traps.victim.pid, os.getpid()})
    for pid in survivors:
        os.kill(pid, 9)
    traps.close()
    for name, template in LEFT_BEHIND.items():
        path = Path(template.format(m=marker))
        path = path if path.is_absolute() else base / path
        if name in report:
            leaked = os.path.lexists(path)
            report[name]["host_saw"] = f"{path} exists" if leaked else f"{path} absent"
            report[name]["leaked"] = leaked
        if path.is_file() and str(path).startswith(("/tmp/", "/var/tmp/", "/dev/shm/")):
            path.unlink()
    if "daemon_outlives_sandbox" in report:
        report["daemon_outlives_sandbox"]["host_saw"] = f"surviving pids: {survivors}"
        report["daemon_outlives_sandbox"]["leaked"] = bool(survivors)
    on_disk = files_with([state_dir, sock_dir], marker.encode())
    report["output_flood_with_secret"].update(
        leaked=marker in kept or bool(on_disk), host_saw=f"the worker kept {kept[:200]!r}; files holding the secret: {on_disk}"
    )
    caps = report["tmpfs_without_size_cap"]
    if profile is not None and profile.name == "gvisor" and cgroup_note is None:
        # runsc ignores the size of its /dev (docs/sandbox.md): what the engine writes there is
        # Sentry memory, held under the engine's memory cgroup. Any other uncapped one leaks.
        others = [m for m in caps["detail"].split("[", 1)[-1].split(",") if "/dev=" not in m]
        caps["leaked"] = caps["succeeded"] and bool(others)
        caps["host_saw"] = "gVisor's /dev is bounded by the engine's memory cgroup"
    for r in report.values():
        r.setdefault("leaked", r["succeeded"])
    report["_host_traps"] = {"name": "_host_traps", "leaked": bool(traps.hits), "detail": f"host listeners saw: {traps.hits}"}
    report["_socket_dir_while_running"] = {
        "name": "_socket_dir_while_running",
        "leaked": False,
        "detail": json.dumps(while_running),
    }
    report["_cgroup"] = {"name": "_cgroup", "leaked": False, "detail": cgroup_note or "applied"}
    return report


ROOT_ONLY = {
    "sysctl_open_core_pattern_for_write",
    "sysctl_open_overcommit_for_write",
    "read_proc_kpageflags",
    "read_proc_slabinfo",
    "read_proc_vmallocinfo",
    "read_proc_timer_list",
    "read_proc_keys",
    "read_proc_key_users",
}


def contained(name: str, probe: str) -> None:
    """Assert the hostile engine's ``probe`` leaked nothing under profile ``name``."""
    require(PROFILES[name])
    result = hostile_report(name)[probe]
    print(f"{name} {probe}: detail={result['detail']!r} host={result.get('host_saw', '-')}")
    assert not result["leaked"], result


def control_detects(probe: str) -> None:
    """Assert the same probe *does* see the leak with the protections absent (the control)."""
    if probe in ROOT_ONLY and os.geteuid() != 0:
        pytest.skip("the control reads root-only files: run as root to see it detect")
    result = hostile_report(None)[probe]
    assert result["leaked"], result
