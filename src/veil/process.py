"""Process lifetime: every Veil process that holds secrets dies with the process that started it.

An engine holds plaintext prompts and weights, a worker holds released keys, a sandbox launcher
holds a bundle with the engine's view of the filesystem: none may outlive its parent (an orphan
would keep decrypted state in memory with nobody left to stop it). Engines, the sandbox launchers
and ``veil up`` all ask Linux for that here, in one place. Hand-written on ``prctl(2)`` through
ctypes: the standard library exposes no parent-death signal.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent thread exits (0 clears it).

    Returns False where unsupported (non-Linux). The signal fires when the *thread* that forked us
    exits, so launchers must spawn children from a long-lived thread (see launcher.EngineProcess).
    Safe in a ``preexec_fn``: the setting survives exec.
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
