"""The engine's seccomp filter, compiled to a classic BPF program for ``bwrap --seccomp FD``.

Namespaces already cut the network off; the filter is the second wall, so a kernel bug in one of
them is not enough. It is built with libseccomp (through the ``pyseccomp`` ctypes binding), which
handles the architecture check (AUDIT_ARCH_X86_64 / AARCH64 and the x32 trap) for us. Denied calls
fail with EPERM rather than killing the process, so a confused engine sees a clean error.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from typing import Any

# Syscalls the engine never needs and that widen the kernel's attack surface or escape confinement.
DENIED_SYSCALLS: tuple[str, ...] = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",  # bypasses seccomp for its own ops
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",  # reading other processes' memory
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "mount_setattr",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "unshare",
    "setns",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "syslog",
    # watching the read-only trees shared with other sandboxes would show their file opens
    "inotify_init",
    "inotify_init1",
    "inotify_add_watch",
    "fanotify_init",
)

# Namespace flags refused in clone(): no nested namespaces from inside the sandbox.
_CLONE_NEW_FLAGS: tuple[int, ...] = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
_TIOCSTI = 0x5412  # pushing keystrokes into the controlling terminal


def seccomp_unavailable() -> str | None:
    """Why a filter cannot be built here, or None when libseccomp and its binding load."""
    try:
        import pyseccomp  # noqa: F401
    except ImportError:
        return "the pyseccomp binding is not installed (pip install pyseccomp)"
    except Exception as exc:  # noqa: BLE001 - binding present, libseccomp.so.2 missing or broken
        return f"libseccomp cannot be loaded (Debian package libseccomp2): {exc}"
    return None


def build_filter() -> Any:  # pyseccomp.SyscallFilter (an untyped module)
    """The filter: allow by default, EPERM for the calls and socket families listed here."""
    import pyseccomp as sc

    deny = sc.ERRNO(errno.EPERM)
    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    # Only Unix sockets: every other family (INET, INET6, PACKET, NETLINK, VSOCK...) is refused.
    flt.add_rule(deny, "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    flt.add_rule(deny, "socketpair", sc.Arg(0, sc.NE, socket.AF_UNIX))
    for name in DENIED_SYSCALLS:
        try:
            flt.add_rule(deny, name)
        except (OSError, RuntimeError, ValueError):
            continue  # not a syscall on this architecture
    for flag in _CLONE_NEW_FLAGS:
        flt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes flags in memory the filter cannot read: ENOSYS makes libc fall back to clone.
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
    return flt


def compile_bpf() -> bytes:
    """The filter as the raw ``struct sock_filter`` array that bwrap's ``--seccomp`` reads."""
    with tempfile.TemporaryFile() as out:
        build_filter().export_bpf(out)
        out.seek(0)
        return out.read()


def bpf_memfd() -> int:
    """An inheritable, sealed-in-practice memfd holding the compiled filter, positioned at 0."""
    program = compile_bpf()
    fd = os.memfd_create("veil-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def oci_seccomp() -> dict[str, object]:
    """The same policy in the OCI runtime-spec form, for runsc ``--oci-seccomp`` (gVisor)."""
    import platform

    arch = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}.get(platform.machine())
    eperm = {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    rules: list[dict[str, object]] = [
        {"names": ["socket", "socketpair"], **eperm, "args": [{"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_NE"}]},
        {"names": list(DENIED_SYSCALLS), **eperm},
        # No clone3 rule: runsc (2022) ignores errnoRet, and EPERM there would stop libc from
        # falling back to clone(); gVisor's own kernel handles namespace flags in any case.
        {
            "names": ["ioctl"],
            **eperm,
            "args": [{"index": 1, "value": 0xFFFFFFFF, "valueTwo": _TIOCSTI, "op": "SCMP_CMP_MASKED_EQ"}],
        },
    ]
    rules += [
        {"names": ["clone"], **eperm, "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
        for flag in _CLONE_NEW_FLAGS
    ]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch] if arch else [], "syscalls": rules}
