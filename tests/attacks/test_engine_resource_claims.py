"""Attack: the engine breaks the sandbox's resource claims (issue 15.7).

The attacker controls the engine process under every sandbox profile, and the descriptors it
inherits (a sealed memfd of weights as stdin). It fills memory file systems (any uncapped tmpfs,
/dev/shm past its 64 MiB cap), grows or writes an inherited file (fallocate reserved host disk
through the old log descriptor), walks out through an inherited directory descriptor, forks past
its process ceiling, allocates past its memory ceiling, and raises RLIMIT_CORE to dump its
memory (prompts, weights) through a core_pattern helper. Contained: every tmpfs has a size, the
launch trampoline refuses any writable host file or directory descriptor
(``sandbox.writable_descriptor``), a cgroup per engine holds pids, memory (no swap) and CPU
where the host offers one, and RLIMIT_CORE is 0 hard with the worker and engine non-dumpable.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from sandbox_harness import HOSTILE, PROFILES, contained, control_detects, hostile_report, require

from veil.engines.launcher import EngineProcess
from veil.sandbox import sandbox_prefix, socketdir
from veil.sandbox.hardening import engine_identity

PROBES = [
    "tmpfs_without_size_cap",
    "fill_dev_shm_past_cap",
    "fallocate_inherited_descriptor",
    "write_inherited_descriptor",
    "directory_descriptor_escape",
    "fork_past_pids_ceiling",
    "memory_past_ceiling",
    "raise_core_dump_limit",
]
CGROUP_PROBES = {"fork_past_pids_ceiling", "memory_past_ceiling"}


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_resource_claims_hold(profile: str, probe: str) -> None:
    require(PROFILES[profile])
    if probe in CGROUP_PROBES and (note := hostile_report(profile)["_cgroup"]["detail"]) != "applied":
        pytest.skip(f"this host offers the engine no cgroup: {note}")
    contained(profile, probe)


@pytest.mark.parametrize("probe", PROBES)
def test_control_sees_it_without_the_protections(probe: str) -> None:
    control_detects(probe)


def _refused(tmp_path, **popen) -> subprocess.CompletedProcess:
    profile = PROFILES["bubblewrap"]
    require(profile)
    sock_dir = tmp_path / "sock"
    socketdir.prepare(sock_dir, "engine.sock", engine_identity())
    try:
        return subprocess.run(
            [*sandbox_prefix(profile, socket_dir=str(sock_dir)), sys.executable, "-c", "print('started')"],
            capture_output=True,
            timeout=60,
            **popen,
        )
    finally:
        socketdir.clear(sock_dir)


def _unsealed_memfd(tmp_path) -> int:
    return os.memfd_create("weights")


def _directory(tmp_path) -> int:
    return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)


def _writable_file(tmp_path) -> int:
    return os.open(tmp_path / "disk", os.O_RDWR | os.O_CREAT, 0o600)


@pytest.mark.parametrize(
    ("opener", "why"), [(_unsealed_memfd, b"not sealed"), (_directory, b"directory"), (_writable_file, b"could write")]
)
def test_a_writable_or_escaping_descriptor_is_refused(tmp_path, opener, why) -> None:
    """Handed to the engine, each would be storage the host can read, or a way out."""
    fd = opener(tmp_path)
    try:
        proc = _refused(tmp_path, pass_fds=(fd,))
    finally:
        os.close(fd)
    assert proc.returncode == 125 and b"started" not in proc.stdout
    assert b"(sandbox.writable_descriptor)" in proc.stderr and why in proc.stderr


def _limits(pid: int) -> str:
    return next(line for line in open(f"/proc/{pid}/limits") if line.startswith("Max core"))


def test_the_real_engine_cannot_dump_core(tmp_path) -> None:
    """From the host: the engine (llama.cpp's process) has RLIMIT_CORE 0/0 and is non-dumpable."""
    pytest.importorskip("llama_cpp")
    profile = PROFILES["bubblewrap"]
    require(profile)
    from veil.engines.models import default_model_path

    engine = EngineProcess(
        tmp_path / "sock" / "engine.sock", default_model_path(), sandbox=profile, n_ctx=256, threads=1, startup_timeout=180
    )
    with engine:
        python = [
            pid for pid in _tree(engine.pid) if _cmdline(pid).startswith(sys.executable) and "veil.engines" in _cmdline(pid)
        ]
        assert python, "the engine process was not found"
        for pid in python:
            assert _limits(pid).split()[4:6] == ["0", "0"], _limits(pid)
            # non-dumpable: /proc/<pid> files belong to root, not to the engine's uid
            assert os.stat(f"/proc/{pid}/environ").st_uid == 0


def _cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _tree(root: int | None) -> list[int]:
    from attacks.test_engine_host_root import _descendants

    assert root is not None
    return [root, *_descendants(root)]
