"""Landlock rules applied inside the sandbox, just before the engine starts.

Why a third layer: the socket directory is the one writable host path bwrap must give the engine,
and a bind mount cannot say "sockets only". Landlock can: inside, the engine may create Unix
sockets there and nothing else, write only to its private /tmp and /dev, open no TCP port (ABI 4+),
and neither reach abstract Unix sockets nor signal processes outside its domain (ABI 6+).
Landlock forbids mount(), so it cannot be applied before bwrap has built the mounts; it runs as
``python -I -S .../landlock.py --socket-dir D --writable /tmp -- argv`` as the first thing inside,
then execs the engine. It imports only the standard library, so it runs without ``site``.
Raw syscalls through ctypes: the stdlib has no binding, and the ABI is three calls and two structs.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446  # x86_64 and aarch64 alike
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

WRITE_FILE, REMOVE_DIR, REMOVE_FILE = 1 << 1, 1 << 4, 1 << 5
MAKE_CHAR, MAKE_DIR, MAKE_REG, MAKE_SOCK = 1 << 6, 1 << 7, 1 << 8, 1 << 9
MAKE_FIFO, MAKE_BLOCK, MAKE_SYM, REFER, TRUNCATE = 1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14
_WRITES_V1 = (
    WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_BLOCK | MAKE_SYM
)
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    if platform.machine() not in ("x86_64", "aarch64"):
        return 0
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def _writes(abi: int) -> int:
    return _WRITES_V1 | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0)


def restrict(socket_dir: str, writable: tuple[str, ...]) -> int:
    """Confine this process and its children for good; returns the ABI used. Raises OSError."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel")
    writes = _writes(abi)
    attr = _RulesetAttr(
        writes, _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0, _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    )
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        rules = [(socket_dir, MAKE_SOCK | REMOVE_FILE)] + [(p, writes) for p in writable]
        for path, access in rules:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = _PathBeneath(access, fd)
                _syscall(
                    _SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)
                )
            finally:
                os.close(fd)
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        _syscall(_SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return abi


def main(argv: list[str]) -> int:
    """``--socket-dir D [--writable P]... -- COMMAND...``: restrict, exec COMMAND (125: refused)."""
    if "--" not in argv:
        print("usage: landlock.py --socket-dir D [--writable P]... -- CMD...", file=sys.stderr)
        return 125
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    pairs = dict.fromkeys(("--socket-dir", "--writable"))
    socket_dir, writable = None, []
    for flag, value in zip(options[::2], options[1::2], strict=True):
        if flag not in pairs:
            print(f"veil.sandbox.landlock: unknown option {flag}", file=sys.stderr)
            return 125
        if flag == "--socket-dir":
            socket_dir = value
        else:
            writable.append(value)
    if socket_dir is None or not command:
        print("veil.sandbox.landlock: --socket-dir and a command are required", file=sys.stderr)
        return 125
    try:
        restrict(socket_dir, tuple(writable))
        os.execvp(command[0], command)
    except OSError as exc:
        print(f"veil.sandbox.landlock: refusing to start the engine: {exc}", file=sys.stderr)
    return 125


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
