"""The engine's socket directory: fresh at every start, private, and holding nothing but the socket.

It is the one host path the engine can write to. Landlock lets a bubblewrap engine create only
sockets there, but socket *names* are storage too, and under gVisor (or with Landlock off) the
engine can create any file. So the directory never outlives the engine's run with content in it:
as root it is a fresh, size-capped tmpfs (memory, not disk; a few inodes) mounted for each start
and unmounted at stop; otherwise a private (0700) directory that must be empty at start and is
emptied at stop. Because nothing else lives there, Landlock's REMOVE_FILE right on it (needed to
replace a stale socket) can delete nothing that matters. Mounting is hand-written on mount(2)
through ctypes: the standard library has no binding.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
from pathlib import Path

from veil.sandbox.profile import SandboxError

FS_SOURCE = "veil-engine-socket"  # how our tmpfs shows up in /proc/self/mountinfo
SIZE = 1 << 20
INODES = 64
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MNT_DETACH = 2, 4, 8, 2


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unescape(field: str) -> str:
    return field.encode().decode("unicode_escape")  # mountinfo writes spaces as \040


def our_mount(directory: Path) -> bool:
    """True when ``directory`` is a tmpfs this module mounted (possibly by a crashed worker)."""
    target = os.path.realpath(directory)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, fs = line.partition(" - ")
            parts, fs_parts = fields.split(), fs.split()
            if (
                len(parts) > 4
                and _unescape(parts[4]) == target
                and len(fs_parts) > 1
                and fs_parts[0] == "tmpfs"
                and fs_parts[1] == FS_SOURCE
            ):
                return True
    return False


def _umount(directory: Path) -> None:
    if _libc().umount2(str(directory).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise SandboxError("sandbox.socket_dir", f"cannot unmount {directory}: {os.strerror(err)}")


def prepare(directory: Path, socket_name: str, owner: tuple[int, int] | None) -> str:
    """Make ``directory`` a fresh private socket directory for an engine running as ``owner``.

    Returns ``"tmpfs"`` or ``"directory"`` (what it could be here). Refuses
    (``sandbox.socket_dir``) a directory that holds anything but a stale socket of ours, or is
    someone else's mount point: it is the engine's alone.
    """
    if our_mount(directory):
        _umount(directory)  # left by a worker that died without stopping its engine
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise SandboxError("sandbox.socket_dir", f"{directory} is not a directory")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.path.ismount(directory):
        raise SandboxError("sandbox.socket_dir", f"{directory} is another file system's mount point")
    for entry in os.scandir(directory):
        if entry.name == socket_name and stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
            os.unlink(entry.path)  # a stale socket from an engine that died
            continue
        raise SandboxError(
            "sandbox.socket_dir",
            f"{directory} holds {entry.name!r}: the engine's socket directory must "
            "hold nothing else (it is wiped at every start and stop)",
        )
    uid, gid = owner if owner is not None else (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        options = f"size={SIZE},nr_inodes={INODES},mode=0700,uid={uid},gid={gid}"
        flags = _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
        if _libc().mount(FS_SOURCE.encode(), str(directory).encode(), b"tmpfs", flags, options.encode()) == 0:
            return "tmpfs"
    os.chown(directory, uid, gid)
    os.chmod(directory, 0o700)
    return "directory"


def clear(directory: Path) -> None:
    """Remove what the engine left: unmount our tmpfs, or empty the private directory."""
    if our_mount(directory):
        _umount(directory)
        return
    if not directory.is_dir() or directory.is_symlink():
        return
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass
