"""Who the engine runs as on the host, and the process settings no engine may undo.

A worker runs as root in `veil up` and in confidential VM images. bubblewrap started by root maps
the sandbox's uid to host uid 0: the kernel then sees global root (without capabilities), which
reads root-only /proc files and, where Landlock is off, writes host sysctls such as core_pattern.
So the launch trampoline drops to a dedicated unprivileged host identity before it starts the
sandbox: ``ENGINE_UID``/``ENGINE_GID``, a fixed pair that needs no passwd entry (Debian reserves
65000-65533, so no package is given it). A host that names that uid for another account is
refused rather than shared with it. Not root: the engine runs as the invoking user, which
bubblewrap's user namespace cannot turn into root.

Core dumps: a dump holds the process's memory (prompts, plaintext weights), and a core_pattern
pipe helper would carry it to host disk. RLIMIT_CORE is set to 0 *hard* (an engine cannot raise a
hard limit) and the process is made non-dumpable. Standard library only: the trampoline imports
this before it execs bubblewrap, where start-up time matters.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import resource

ENGINE_UID = 65500
ENGINE_GID = 65500
ENGINE_USER = "veil-engine"  # the name an image may give ENGINE_UID in /etc/passwd
_PR_SET_DUMPABLE, _PR_GET_DUMPABLE = 4, 3


def engine_identity() -> tuple[int, int] | None:
    """The host (uid, gid) to drop to before starting an engine, or None when not root.

    Raises ``OSError`` when ``ENGINE_UID`` belongs to another account on this host.
    """
    if os.geteuid() != 0:
        return None
    try:
        owner = pwd.getpwuid(ENGINE_UID).pw_name
    except KeyError:
        owner = ENGINE_USER
    if owner != ENGINE_USER:
        raise OSError(f"uid {ENGINE_UID} belongs to {owner!r} here; the engine needs it to itself")
    return ENGINE_UID, ENGINE_GID


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` for good: no supplementary groups, real = effective = saved."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise OSError("privileges were not dropped")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise OSError("root could be regained after dropping privileges")


def forbid_core_dumps() -> None:
    """RLIMIT_CORE 0 (soft and hard) and PR_SET_DUMPABLE 0 for this process and what it execs.

    The limit is inherited across fork and exec; the dumpable flag is reset by exec, so each
    process that holds secrets (the worker, an engine) calls this itself as well.
    """
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(err)}")


def harden_worker() -> str | None:
    """What a worker calls first, while single-threaded: no core dumps, and (as root) a mount
    namespace of its own, so the engine's socket-directory tmpfs dies with the worker however it
    ends (uvicorn re-raises SIGTERM after its shutdown, so a worker's cleanup code may never run).
    Returns why the namespace could not be made, or None."""
    forbid_core_dumps()
    if os.geteuid() != 0:
        return None
    from veil.sandbox.stage import private_mount_namespace

    try:
        private_mount_namespace()
    except OSError as exc:
        return str(exc)
    return None


def core_dumps_forbidden() -> bool:
    """True when this process can never write a core dump (hard limit 0 and not dumpable)."""
    libc = ctypes.CDLL(None, use_errno=True)
    return resource.getrlimit(resource.RLIMIT_CORE) == (0, 0) and libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
