"""Attack: the engine acts as host root (issue 15.1).

The attacker controls the engine: any code in its process, under every sandbox profile
(bubblewrap with Landlock on and off, gVisor). A worker started as root used to give bubblewrap's
sandbox uid the host uid 0: root-only /proc files (kernel page flags, slab and vmalloc maps,
timers, root's keyrings) were readable, and with Landlock off host sysctls such as core_pattern
were writable, a path to running a command as host root. The launch trampoline now drops to the
dedicated unprivileged host uid ``ENGINE_UID`` before starting the sandbox, /proc/sys is
read-only and the sensitive entries are masked (``veil.sandbox.masks``). Refused by the kernel
(EACCES / masked); a host whose ``ENGINE_UID`` belongs to another account is refused with
``sandbox.engine_uid``.
"""

from __future__ import annotations

import os

import pytest
from sandbox_harness import HOSTILE, PROFILES, ROOT_ONLY, contained, control_detects, require

from veil.engines.launcher import EngineProcess
from veil.sandbox import SandboxError, hardening

PROBES = sorted(ROOT_ONLY | {"sysrq_trigger_open_for_write", "read_proc_sched_debug", "read_proc_kallsyms_addresses"})


@pytest.mark.parametrize("probe", PROBES)
@pytest.mark.parametrize("profile", list(PROFILES))
def test_root_only_files_and_sysctls_are_out_of_reach(profile: str, probe: str) -> None:
    contained(profile, probe)


@pytest.mark.parametrize("probe", sorted(ROOT_ONLY))
def test_control_sees_them_without_the_protections(probe: str) -> None:
    control_detects(probe)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _uid(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("Uid:"):
            return int(line.split()[2])  # effective
    raise AssertionError(pid)


def test_the_engine_process_is_not_host_root(tmp_path) -> None:
    """From the host: every process of a bubblewrap engine runs as the engine's own uid."""
    profile = PROFILES["bubblewrap"]
    require(profile)
    engine = EngineProcess(
        tmp_path / "sock" / "engine.sock", engine_module=str(HOSTILE), sandbox=profile, extra_args=["--serve-only"]
    )
    with engine:
        assert engine.pid is not None
        uids = {_uid(pid) for pid in [engine.pid, *_descendants(engine.pid)]}
    expected = hardening.ENGINE_UID if os.geteuid() == 0 else os.getuid()
    assert uids == {expected}, uids


def test_a_taken_engine_uid_is_refused(monkeypatch, tmp_path) -> None:
    """A host account already owns ENGINE_UID: sharing it would let it signal or read the engine."""
    if os.geteuid() != 0:
        pytest.skip("the engine identity is only chosen when the worker is root")
    import pwd

    taken = pwd.struct_passwd(("postgres", "x", hardening.ENGINE_UID, 1, "", "/", "/bin/sh"))
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: taken)
    engine = EngineProcess(
        tmp_path / "sock" / "engine.sock", engine_module=str(HOSTILE), sandbox=PROFILES["bubblewrap"], extra_args=["--serve-only"]
    )
    try:
        with pytest.raises(SandboxError) as refused:
            engine.start()
    finally:
        engine.stop()
    assert refused.value.reason == "sandbox.engine_uid"
