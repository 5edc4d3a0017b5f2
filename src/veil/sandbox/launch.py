"""The trampoline put before the engine command: ``python -m veil.sandbox.launch [opts] -- argv``.

It exists because the sandbox needs things an argv prefix cannot give: the seccomp filter must reach
bubblewrap as an open descriptor, and the engine must not start as root. In order, it: refuses
inherited descriptors that would give the engine a writable host file (stdio must be pipes: no
log file to fill or fallocate); joins the engine's cgroup; sets RLIMIT_CORE to 0 hard and makes
itself non-dumpable; stages the bind sources in a private mount namespace (``stage``) and drops to
the engine's unprivileged host identity (``hardening``); then *becomes* bwrap (exec), so the
launcher's child pid is the sandbox itself. For gVisor it stays as a small parent that removes the
OCI bundle afterwards (runsc needs root; its sandbox process runs as host ``nobody``). For the
development profile ``none`` it execs the engine directly, unconfined but not root.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import stat
import sys
from collections.abc import Iterable
from dataclasses import dataclass

REFUSED = 125  # the exit status when the sandbox cannot start (as bwrap and runsc use it)
_SEALS_NEEDED = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW


@dataclass(frozen=True)
class LaunchSpec:
    """The parts of a SandboxProfile the launch needs (no pydantic import on this path)."""

    name: str
    allow_gpu: bool
    ro_paths: tuple[str, ...]
    socket_dir: str
    landlock: bool = True
    cgroups: tuple[str, ...] = ()  # cgroup directories to join before anything else
    pids_max: int = 1024  # gVisor: the engine's RLIMIT_NPROC (its processes are not host tasks)


def spec_args(spec: LaunchSpec) -> list[str]:
    """Command-line options that reproduce ``spec`` in the trampoline."""
    args = ["--sandbox", spec.name, "--socket-dir", spec.socket_dir]
    if spec.allow_gpu:
        args.append("--gpu")
    if not spec.landlock:
        args.append("--no-landlock")
    for path in spec.ro_paths:
        args += ["--ro", path]
    for path in spec.cgroups:
        args += ["--cgroup", path]
    return [*args, "--pids-max", str(spec.pids_max)]


def _parse(argv: list[str]) -> tuple[LaunchSpec, list[str]]:
    if "--" not in argv:
        raise SystemExit("usage: python -m veil.sandbox.launch [options] -- COMMAND...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="veil.sandbox.launch")
    parser.add_argument("--sandbox", choices=("bubblewrap", "gvisor", "none"), required=True)
    parser.add_argument("--socket-dir", required=True)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--no-landlock", action="store_true")
    parser.add_argument("--ro", action="append", default=[])
    parser.add_argument("--cgroup", action="append", default=[])
    parser.add_argument("--pids-max", type=int, default=1024)
    ns = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command:
        raise SystemExit("veil.sandbox.launch: no command after --")
    return LaunchSpec(ns.sandbox, ns.gpu, tuple(ns.ro), ns.socket_dir, not ns.no_landlock, tuple(ns.cgroup), ns.pids_max), command


def _inherited() -> list[int]:
    """This process's descriptors that exec passes on (not close-on-exec)."""
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                fds.append(fd)
        except OSError:
            continue  # the descriptor listdir itself used
    return fds


def writable_descriptor(fd: int, identity: tuple[int, int] | None) -> str | None:
    """Why ``fd`` would hand the engine a writable host file (or a way out), or None.

    Pipes, sockets and character devices are fine. A regular file must be a memfd sealed against
    writing and growing (the worker's unsealed weights), or opened read-only with no write
    permission for the engine's uid (a read-only descriptor is re-openable for writing through
    /proc/self/fd). Directories and O_PATH descriptors are refused: ``openat(fd, "..")`` walks
    out of the sandbox's mount namespace. stdout and stderr must not be files at all.
    """
    st = os.fstat(fd)
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    if stat.S_ISDIR(st.st_mode) or flags & getattr(os, "O_PATH", 0o10000000):
        return f"descriptor {fd} is a directory or path handle (a way out of the sandbox)"
    if not stat.S_ISREG(st.st_mode):
        return None
    if fd in (1, 2):
        return f"descriptor {fd} (stdout/stderr) is a file: engine output must go to a pipe"
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = None  # not a memfd
    if seals is not None:
        if seals & _SEALS_NEEDED == _SEALS_NEEDED:
            return None
        return f"descriptor {fd} is a memfd not sealed against writes and growth"
    uid, gid = identity if identity is not None else (os.getuid(), os.getgid())
    writable = (
        flags & os.O_ACCMODE != os.O_RDONLY
        or st.st_mode & stat.S_IWOTH
        or (st.st_uid == uid and st.st_mode & stat.S_IWUSR)
        or (st.st_gid == gid and st.st_mode & stat.S_IWGRP)
    )
    return f"descriptor {fd} is a host file the engine could write" if writable else None


def refuse(reason: str, message: str) -> int:
    """One fixed-shape line (the worker keeps only that a refusal happened) and status 125."""
    print(f"veil.sandbox.launch: refused ({reason}): {message}", file=sys.stderr, flush=True)
    return REFUSED


def _join(cgroups: Iterable[str]) -> None:
    for directory in cgroups:
        with open(os.path.join(directory, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def main(argv: list[str] | None = None) -> int:
    """Set up, then exec bwrap / the engine (or run runsc); exit 125 when it cannot start."""
    spec, command = _parse(sys.argv[1:] if argv is None else argv)
    from veil.sandbox.hardening import drop_privileges, engine_identity, forbid_core_dumps

    try:
        identity = None if spec.name == "gvisor" else engine_identity()
    except OSError as exc:
        return refuse("sandbox.engine_uid", str(exc))
    for fd in _inherited():
        if problem := writable_descriptor(fd, identity):
            return refuse("sandbox.writable_descriptor", problem)
    try:
        _join(spec.cgroups)
        forbid_core_dumps()
    except OSError as exc:
        return refuse("sandbox.setup_failed", str(exc))
    if spec.name == "gvisor":
        from veil.sandbox.gvisor import run_in_gvisor

        return run_in_gvisor(spec, command)
    from veil.sandbox.bwrap import engine_environ

    env = engine_environ(os.environ, spec.socket_dir)
    if spec.name == "none":
        try:
            if identity is not None:
                drop_privileges(*identity)
            os.execvpe(command[0], command, env)
        except OSError as exc:
            return refuse("sandbox.setup_failed", f"cannot start {command[0]}: {exc}")
    from veil.sandbox.bwrap import etc_copies, read_only_binds, wrap_command
    from veil.sandbox.seccomp import bpf_memfd
    from veil.sandbox.stage import stage

    try:
        # Everything that reads the host's files (the bind list, the seccomp library, /etc) comes
        # before staging, which hides the host's /tmp: a venv or checkout there would vanish.
        binds = read_only_binds(spec, ())
        seccomp_fd, etc_fds = bpf_memfd(), etc_copies()
        staged = {} if identity is None else stage([*binds, spec.socket_dir])
        cmd = wrap_command(
            spec, command, socket_dir=spec.socket_dir, seccomp_fd=seccomp_fd, staged=staged, etc_fds=etc_fds, binds=binds
        )
        if identity is not None:
            drop_privileges(*identity)
        os.execve(cmd[0], cmd, env)
    except (OSError, ValueError) as exc:
        return refuse("sandbox.setup_failed", str(exc))
    return REFUSED


if __name__ == "__main__":
    sys.exit(main())
