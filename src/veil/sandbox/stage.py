"""Make host paths reachable to the engine's unprivileged uid without opening them up on the host.

bubblewrap resolves every bind source as the user that runs it, and the launch trampoline runs it
as the engine's dedicated uid (``hardening``): a model under a 0700 run directory, or a checkout
under root's home, is then out of reach. While still root, the trampoline enters a mount namespace
of its own (slave propagation: nothing it mounts shows on the host or outlives its processes),
opens each source, puts a small tmpfs over /tmp there, and bind-mounts each source onto an entry
of it through the descriptor. bubblewrap then binds from those entries. The host's /tmp is
untouched; bubblewrap's own scratch directory lands in that tmpfs too. Hand-written on
unshare(2)/mount(2) through ctypes: the standard library has no binding (Python 3.11).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

STAGE = "/tmp/veil-stage"
_CLONE_NEWNS = 0x00020000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_SLAVE = 2, 4, 4096, 16384, 1 << 19


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def private_mount_namespace() -> None:
    """Move this (single-threaded, root) process into a mount namespace of its own.

    Propagation is one way (slave): the host's mounts still reach it, nothing it mounts reaches
    the host, and its mounts vanish with its last process, however that process ends.
    """
    if len(os.listdir("/proc/self/task")) != 1:
        raise OSError("a mount namespace of its own needs a single-threaded process")
    libc = ctypes.CDLL(None, use_errno=True)
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None), "mount --make-rslave /")


def stage(paths: Iterable[str]) -> dict[str, str]:
    """Enter a private mount namespace and return {host path: path to bind it from}."""
    libc = ctypes.CDLL(None, use_errno=True)
    fds = {}
    try:
        private_mount_namespace()
        for path in dict.fromkeys(paths):  # opened in the new namespace: bind sources must be
            fds[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
        _check(
            libc.mount(b"veil-stage", b"/tmp", b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=1m,nr_inodes=4096,mode=1777"),
            "mount tmpfs on /tmp",
        )
        os.mkdir(STAGE, 0o755)
        staged = {}
        for index, (path, fd) in enumerate(fds.items()):
            target = f"{STAGE}/{index}"
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(target, 0o755)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o444))
            _check(libc.mount(f"/proc/self/fd/{fd}".encode(), target.encode(), None, _MS_BIND | _MS_REC, None), f"bind {path}")
            staged[path] = target
        return staged
    finally:
        for fd in fds.values():
            os.close(fd)
