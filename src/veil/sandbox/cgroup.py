"""One cgroup per engine: a memory, process-count and CPU ceiling the engine cannot lift.

Where the host offers cgroup v2 with the memory, pids and cpu controllers, the engine gets a child
of the worker's own cgroup with ``memory.max``, ``memory.swap.max = 0`` (engine memory holds
prompts: it must not be written to swap), ``pids.max`` and ``cpu.max``. If the worker's cgroup
still holds processes, the v2 "no internal processes" rule forbids enabling controllers for
children; the worker then moves itself into a ``veil-worker`` leaf first, as systemd's delegation
model expects of a service with ``Delegate=yes``. Hosts that still bind those controllers to cgroup
v1 (hybrid hierarchies, such as the machine these tests run on) get the same ceilings through the
v1 files (``memory.limit_in_bytes`` and ``memory.memsw.limit_in_bytes``, ``pids.max``,
``cpu.cfs_quota_us``). Where neither is writable, ``create`` raises ``CgroupUnavailable`` with the
reason, and the caller says so plainly: the engine then runs without a ceiling.

The launch trampoline joins the directories before it drops root or execs the sandbox, so every
process the engine ever forks is inside; at stop everything left in them is killed and they go.
Hand-written on the cgroup file interface: no maintained Python library covers v1 and v2 both.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu")
_PERIOD_US = 100_000


class CgroupUnavailable(OSError):
    """This host offers the engine no cgroup with the controllers it needs (the reason inside)."""


@dataclass(frozen=True)
class Limits:
    """The ceilings one engine runs under."""

    memory_max: int  # bytes (RAM; swap none)
    pids_max: int  # processes and threads
    cpus: float  # CPU time, in CPUs


@dataclass(frozen=True)
class EngineCgroup:
    """The directories of one engine's cgroup (one for v2, one per hierarchy for v1)."""

    version: int
    directories: tuple[str, ...]
    limits: Limits

    def pids(self) -> set[int]:
        found: set[int] = set()
        for directory in self.directories:
            try:
                found |= {int(p) for p in Path(directory, "cgroup.procs").read_text().split()}
            except OSError:
                continue
        return found

    def remove(self, timeout: float = 5.0) -> None:
        """Kill whatever is left inside (an escaped daemon included), then remove the cgroup."""
        kill = Path(self.directories[0], "cgroup.kill")
        deadline = time.monotonic() + timeout
        while (left := self.pids()) and time.monotonic() < deadline:
            if self.version == 2 and kill.exists():
                kill.write_text("1")
            else:
                for pid in left:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)
        for directory in self.directories:
            try:
                os.rmdir(directory)
            except OSError:
                pass  # still busy (a process in uninterruptible sleep): the kernel frees it later


_PREFIX = "veil-engine-"


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """(mount point, mount root, fstype, super options) of every cgroup mount."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, fs = line.partition(" - ")
            parts, fs_parts = fields.split(), fs.split()
            if len(fs_parts) >= 3 and fs_parts[0] in ("cgroup", "cgroup2"):
                point = parts[4].encode().decode("unicode_escape")
                found.append((point, parts[3], fs_parts[0], set(fs_parts[2].split(","))))
    return found


def _own_paths() -> dict[str, str]:
    """Hierarchy key ('' for v2, else the controller list) -> this process's cgroup path."""
    paths = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            paths[controllers] = path
    return paths


def _below(point: str, root: str, path: str) -> str:
    relative = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
    return os.path.normpath(os.path.join(point, relative))


def _remove_stale(parent: str) -> None:
    """Empty engine cgroups a worker left when it died without stopping its engine.

    Only those of dead workers: the name carries the creating worker's pid, and a live worker's
    cgroup is empty between its creation and the engine joining it (another worker on the same
    host removing it then would make that engine's start fail).
    """
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(_PREFIX):
            continue
        owner = name[len(_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and os.path.exists(f"/proc/{owner}"):
            continue  # a live worker's (possibly not yet joined) cgroup
        try:
            os.rmdir(os.path.join(parent, name))  # only succeeds when nothing is inside
        except OSError:
            pass


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _v2(limits: Limits, name: str) -> EngineCgroup:
    paths = _own_paths()
    mounts = [m for m in _mounts() if m[2] == "cgroup2"]
    if "" not in paths or not mounts:
        raise CgroupUnavailable("no cgroup v2 hierarchy is mounted")
    point, root, _, _ = mounts[0]
    parent = _below(point, root, paths[""])
    offered = set(Path(parent, "cgroup.controllers").read_text().split())
    if missing := [c for c in CONTROLLERS if c not in offered]:
        raise CgroupUnavailable(
            f"cgroup v2 at {parent} offers [{' '.join(sorted(offered))}]: {', '.join(missing)} "
            "not delegated to it (bound to cgroup v1 on this host, or not delegated by systemd)"
        )
    control = os.path.join(parent, "cgroup.subtree_control")
    wanted = " ".join(f"+{c}" for c in CONTROLLERS)
    try:
        _write(control, wanted)
    except OSError:  # EBUSY: processes in the parent; move this worker into a leaf of its own
        leaf = os.path.join(parent, "veil-worker")
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), str(os.getpid()))
        _write(control, wanted)
    _remove_stale(parent)
    directory = os.path.join(parent, name)
    os.mkdir(directory)
    try:
        _write(os.path.join(directory, "memory.max"), str(limits.memory_max))
        if os.path.exists(os.path.join(directory, "memory.swap.max")):
            _write(os.path.join(directory, "memory.swap.max"), "0")
        _write(os.path.join(directory, "pids.max"), str(limits.pids_max))
        _write(os.path.join(directory, "cpu.max"), f"{max(1000, int(limits.cpus * _PERIOD_US))} {_PERIOD_US}")
    except OSError:
        os.rmdir(directory)
        raise
    return EngineCgroup(2, (directory,), limits)


def _v1(limits: Limits, name: str) -> EngineCgroup:
    paths = _own_paths()
    made: list[str] = []
    try:
        for controller in CONTROLLERS:
            mount = next((m for m in _mounts() if m[2] == "cgroup" and controller in m[3]), None)
            key = next((k for k in paths if controller in k.split(",")), None)
            if mount is None or key is None:
                raise CgroupUnavailable(f"no cgroup v1 hierarchy has the {controller} controller")
            parent = _below(mount[0], mount[1], paths[key])
            _remove_stale(parent)
            directory = os.path.join(parent, name)
            if directory not in made:
                os.mkdir(directory)
                made.append(directory)
            if controller == "memory":
                _write(os.path.join(directory, "memory.limit_in_bytes"), str(limits.memory_max))
                memsw = os.path.join(directory, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):  # RAM + swap = RAM: no swap
                    _write(memsw, str(limits.memory_max))
                _write(os.path.join(directory, "memory.swappiness"), "0")
            elif controller == "pids":
                _write(os.path.join(directory, "pids.max"), str(limits.pids_max))
            else:
                _write(os.path.join(directory, "cpu.cfs_period_us"), str(_PERIOD_US))
                _write(os.path.join(directory, "cpu.cfs_quota_us"), str(max(1000, int(limits.cpus * _PERIOD_US))))
    except OSError:
        for directory in made:
            try:
                os.rmdir(directory)
            except OSError:
                pass
        raise
    return EngineCgroup(1, tuple(made), limits)


def create(limits: Limits) -> EngineCgroup:
    """A new cgroup for one engine, v2 where the host offers it, else v1.

    Raises ``CgroupUnavailable`` saying why neither works here (both reasons).
    """
    name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    try:
        return _v2(limits, name)
    except OSError as v2_error:
        try:
            return _v1(limits, name)
        except OSError as v1_error:
            raise CgroupUnavailable(f"{v2_error}; cgroup v1: {v1_error}") from None


def default_limits(memory_max: int | None, pids_max: int, cpus: float | None) -> Limits:
    """Fill the profile's unset ceilings: 80% of RAM (the worker keeps the rest), all CPUs."""
    if memory_max is None:
        memory_max = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)
    if cpus is None:
        cpus = float(len(os.sched_getaffinity(0)))
    return Limits(memory_max, pids_max, cpus)
