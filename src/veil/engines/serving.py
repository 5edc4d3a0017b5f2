"""Process plumbing every Veil engine shares: die with the parent, serve only on a private UDS.

An engine holds plaintext prompts and weights, so it must never outlive the gateway that owns it
(an orphan would keep a decrypted model in memory) and must never answer anyone but that gateway
(the socket is created owner-only before it listens, not chmod-ed after).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import stat
import sys
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent thread exits.

    Returns False where unsupported (non-Linux). The signal fires when the *thread* that forked us
    exits, so launchers must spawn engines from a long-lived thread (see launcher.EngineProcess).
    """
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}")
    return True


def parent_already_gone(expected_ppid: int | None) -> bool:
    """True if the parent died before prctl took effect (we were re-parented)."""
    return expected_ppid is not None and os.getppid() != expected_ppid


def bind_unix_socket(path: str | Path, mode: int = 0o600) -> socket.socket:
    """Bind and return a listening-ready AF_UNIX socket that is never wider than ``mode``.

    The umask is tightened around bind() so there is no window in which another user could connect.
    A stale socket file left by a dead engine is replaced; any other existing file is refused.

    Under gVisor (``runsc --host-uds=create``) the socket is created on the host by runsc's gofer,
    and runsc then refuses ``stat``, ``chmod`` and ``unlink`` on it with EPERM. Those refusals are
    tolerated: the guards that matter do not depend on them. (1) The umask set around ``bind()``
    is what gives the socket its mode at creation: the gofer honours it, and the host sees
    ``srw-------`` for the default mode (asserted by tests/test_sandbox_gvisor_engine.py); the
    ``chmod`` after it is only belt and braces (e.g. where a default ACL overrides the umask).
    (2) The socket directory is private: the worker creates its run directory with mode 0700
    (``veil.worker.serve``; tests use ``mkdtemp``, also 0700), so no other user can even reach
    the socket, and the sandbox binds only that directory writable.
    """
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            raise
        # gVisor: a host-backed socket we may not stat (nor unlink); bind() reports EADDRINUSE.
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(str(path))
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, mode)
    except PermissionError as exc:
        if exc.errno != errno.EPERM:
            sock.close()
            raise
        # gVisor refuses chmod on a host-backed socket; the umask above already set ``mode``.
    sock.listen(128)
    return sock


def remove_socket(path: str | Path) -> None:
    """Best-effort removal of the socket file on shutdown.

    Under gVisor the host-backed socket cannot be unlinked from inside (EPERM); the sandbox
    launcher removes it from the host side when the engine exits.
    """
    with contextlib.suppress(FileNotFoundError, PermissionError):
        Path(path).unlink()
