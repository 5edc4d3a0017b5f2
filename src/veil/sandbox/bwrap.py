"""Bubblewrap command lines for the engine: every namespace unshared, almost nothing mounted.

Inside, the engine sees a read-only root made of the system libraries, the Python runtime, Veil's
code and the model; private copies of the three /etc files loading needs; a private scratch tmpfs
(/tmp) that vanishes with it; a /dev built by hand on a size-capped tmpfs; a fresh /proc showing
only its own processes, with /proc/sys read-only and the sensitive entries masked (``masks``);
and one writable host directory, the socket directory. It has no network interface but loopback
(in its own namespace), no capabilities, no way to gain privileges, a seccomp filter, and (by
default) Landlock rules that let it create only sockets in that directory. Every tmpfs has a size.

When the trampoline drops root, it first stages every bind source (``stage``), so the engine's
unprivileged host uid needs no access to the paths leading to them (a socket directory under a
0700 run directory, say).
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from veil.sandbox.masks import MASKED_DIRS, MASKED_FILES, READONLY, present


class ProfileLike(Protocol):
    """What the command builder reads from a ``SandboxProfile`` (kept pydantic-free for speed)."""

    @property
    def allow_gpu(self) -> bool: ...
    @property
    def ro_paths(self) -> tuple[str, ...]: ...
    @property
    def landlock(self) -> bool: ...


# System directories the dynamic loader and Python need; symlinks (merged /usr) are recreated.
SYSTEM_DIRS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The only /etc files loading programs needs, copied in (a private inode: nothing to lock or watch
# in common with another sandbox): no hosts, resolv.conf, ssl keys, shadow...
ETC_FILES: tuple[str, ...] = ("/etc/ld.so.cache", "/etc/passwd", "/etc/group", "/etc/localtime")
ETC_MAX = 1 << 20  # an /etc file larger than this is not copied
# The only host variables passed to the engine, by exact name; everything else is dropped.
ENV_ALLOW: tuple[str, ...] = ("LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
ENV_FIXED: dict[str, str] = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
DEVICES: tuple[str, ...] = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_LANDLOCK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "landlock.py")
# Every tmpfs is memory; each has a size (the kernel default would be half of RAM).
ROOT_SIZE = 4 << 20  # the empty root that holds mount points and the /etc copies, then read-only
DEV_SIZE = 1 << 20  # /dev: device nodes and links only
SHM_SIZE = 64 << 20  # /dev/shm (POSIX semaphores and shared memory)
TMP_SIZE = 1 << 30  # the private scratch tmpfs
MASK_SIZE = 4096  # the empty read-only tmpfs over a masked directory


def beneath(path: str, parent: str) -> bool:
    """True when ``path`` is ``parent`` or lies below it (string check on absolute paths)."""
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def scratch_dir(socket_dir: str) -> str:
    """The engine's private writable tmpfs: /tmp, unless the socket directory lies under /tmp.

    Landlock grants rights on whole subtrees, so a writable /tmp would also make a socket
    directory beneath it writable; then the scratch moves to /var/tmp (TMPDIR says where).
    """
    return "/var/tmp" if beneath(socket_dir, "/tmp") else "/tmp"


def bwrap_path() -> str | None:
    """The bubblewrap binary, or None."""
    return shutil.which("bwrap")


def gpu_device_nodes() -> list[str]:
    """The NVIDIA device nodes present on this host (bound only when the profile allows a GPU)."""
    return sorted(glob.glob("/dev/nvidia*"))


def _pth_dirs(site_dir: str) -> list[str]:
    """Directories that ``.pth`` files in a site directory add (editable installs, for one)."""
    found = []
    for pth in glob.glob(os.path.join(site_dir, "*.pth")):
        try:
            with open(pth, encoding="utf-8", errors="replace") as f:
                lines = f.read(1 << 16).splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if line and not line.startswith(("#", "import ", "import\t")):
                path = os.path.join(site_dir, line)
                if os.path.isdir(path):
                    found.append(path)
    return found


def python_runtime_paths() -> list[str]:
    """What the engine's Python needs read-only: its prefixes, site-packages and what their
    ``.pth`` files add. Never ``PYTHONPATH`` entries, the working directory or the user site
    (all may be a home directory); the engine starts without ``PYTHONPATH`` anyway."""
    sites = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    sites |= set(site.getsitepackages())
    candidates = {sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, *sites}
    for directory in sites:
        candidates.update(_pth_dirs(directory))
    paths = {os.path.abspath(p) for p in candidates if p and os.path.exists(p)}
    paths.discard("/")  # a prefix of "/" must not turn into binding the whole host
    return outermost(paths)


def outermost(paths: Iterable[str]) -> list[str]:
    """Drop duplicates and paths already covered by a parent in the list."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(beneath(path, k) for k in kept):
            kept.append(path)
    return kept


def engine_environ(environ: Mapping[str, str], socket_dir: str) -> dict[str, str]:
    """The environment the engine runs with: a few named host variables and fixed values.

    No ``VEIL_*`` (API keys, tokens), no ``PYTHONPATH``, nothing else from the host. Passed to
    exec rather than as ``--setenv`` options so values never show up in ``ps``, and so bwrap's own
    process inside the sandbox (pid 1) does not carry the launcher's variables either.
    """
    scratch = scratch_dir(socket_dir)
    env = {k: environ[k] for k in ENV_ALLOW if k in environ}
    env.update(ENV_FIXED, HOME=scratch, TMPDIR=scratch)
    return env


def read_only_binds(profile: ProfileLike, ro_binds: Sequence[str]) -> list[str]:
    """The host paths bound read-only besides the system: Python runtime, code, model."""
    return outermost([*python_runtime_paths(), *profile.ro_paths, *ro_binds])


def etc_copies() -> dict[str, int]:
    """Inheritable memfds holding the /etc files to copy in (``--file FD DEST``)."""
    fds: dict[str, int] = {}
    for path in ETC_FILES:
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > ETC_MAX:
            continue
        with open(path, "rb") as f:
            data = f.read(ETC_MAX)
        fd = os.memfd_create("veil-etc", os.MFD_CLOEXEC)
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        fds[path] = fd
    return fds


def _bind(flag: str, path: str, staged: Mapping[str, str]) -> list[str]:
    return [flag, staged.get(path, path), path]


def _etc_args(copies: Mapping[str, int]) -> list[str]:
    args: list[str] = []
    for path in ETC_FILES:
        if os.path.islink(path):  # /etc/localtime -> /usr/share/zoneinfo/...: recreate the link
            args += ["--symlink", os.readlink(path), path]
        elif path in copies:
            args += ["--perms", "0444", "--file", str(copies[path]), path]
        else:
            args += ["--ro-bind-try", path, path]
    return args


def _dev_args(gpu: bool) -> list[str]:
    """/dev built by hand: bwrap's ``--dev`` is an uncapped tmpfs (half of RAM)."""
    args = ["--size", str(DEV_SIZE), "--tmpfs", "/dev"]
    for node in [*DEVICES, *(gpu_device_nodes() if gpu else [])]:
        if os.path.exists(node):
            args += ["--dev-bind", node, node]
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        args += ["--symlink", target, f"/dev/{name}"]
    return [*args, "--size", str(SHM_SIZE), "--tmpfs", "/dev/shm"]


def _proc_args(sys_bound: bool) -> list[str]:
    """A fresh /proc with /proc/sys (and friends) read-only and the sensitive entries masked."""
    args = ["--proc", "/proc"]
    for path in present(READONLY, sys_bound=sys_bound):
        args += ["--ro-bind", path, path]
    for path in present(MASKED_FILES, sys_bound=sys_bound):
        args += ["--ro-bind", "/dev/null", path]
    for path in present(MASKED_DIRS, sys_bound=sys_bound):
        args += ["--size", str(MASK_SIZE), "--tmpfs", path, "--remount-ro", path]
    return args


def wrap_command(
    profile: ProfileLike,
    argv: Sequence[str],
    *,
    socket_dir: str,
    ro_binds: Sequence[str] = (),
    seccomp_fd: int | None = None,
    staged: Mapping[str, str] | None = None,
    etc_fds: Mapping[str, int] | None = None,
    binds: Sequence[str] | None = None,
) -> list[str]:
    """The full bwrap command running ``argv`` confined by ``profile``.

    ``seccomp_fd`` must be an inheritable descriptor holding the compiled filter (see
    ``seccomp.bpf_memfd``) and the caller must pass it to the child; without it the command is
    refused, because a bubblewrap profile always includes the filter. ``binds`` are the
    read-only binds (default ``read_only_binds(profile, ro_binds)``; computed before staging,
    which hides /tmp), ``staged`` (from ``stage.stage(...)``) says where to bind each source from,
    ``etc_fds`` (from ``etc_copies()``) are copied in; without them paths are bound by name. Run
    it with ``env=engine_environ(os.environ, socket_dir)``: the engine inherits exactly that.
    """
    if seccomp_fd is None:
        raise ValueError("a bubblewrap sandbox needs its seccomp filter (seccomp_fd)")
    if not os.path.isabs(socket_dir) or beneath(socket_dir, "/dev") or beneath(socket_dir, "/proc"):
        raise ValueError(f"the socket directory must be absolute, not under /dev or /proc: {socket_dir}")
    fds = staged or {}
    args = [
        bwrap_path() or "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",  # incl. net: only loopback inside
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--hostname",
        "veil-engine",
        "--size",
        str(ROOT_SIZE),
        "--tmpfs",
        "/",  # an empty root; only what is bound below exists
    ]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    args += _etc_args(etc_fds or {})
    # CPU topology only: numpy and llama.cpp size their thread pools from it.
    args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    # The scratch tmpfs goes first: read-only binds that live beneath it (a checkout or venv under
    # /tmp, say) are then mounted on top of it instead of being hidden by it.
    scratch = scratch_dir(socket_dir)
    args += ["--size", str(TMP_SIZE), "--tmpfs", scratch]
    for path in read_only_binds(profile, ro_binds) if binds is None else binds:
        args += _bind("--ro-bind", path, fds)
    if profile.allow_gpu:
        args += ["--ro-bind-try", "/sys", "/sys"]  # CUDA reads PCI topology from sysfs
    args += _proc_args(sys_bound=profile.allow_gpu)
    args += _dev_args(profile.allow_gpu)
    args += _bind("--bind", socket_dir, fds)
    args += ["--remount-ro", "/", "--chdir", "/"]
    if profile.landlock:  # applied inside, after the mounts (Landlock forbids mount())
        # Run by file path with -I -S (stdlib only, no site scan): saves an interpreter start-up's
        # worth of imports; landlock.py deliberately imports nothing from veil.
        argv = [
            sys.executable,
            "-I",
            "-S",
            _LANDLOCK_SCRIPT,
            "--socket-dir",
            socket_dir,
            "--writable",
            scratch,
            "--writable",
            "/dev",
            "--",
            *argv,
        ]
    args += ["--seccomp", str(seccomp_fd), "--", *argv]
    return args


@functools.lru_cache(maxsize=1)
def probe_bubblewrap() -> str | None:
    """Why bubblewrap cannot confine an engine here (the exact error), or None when it can.

    As root the probe runs as the engine's own unprivileged identity, as the engine will.
    """
    from veil.sandbox.hardening import engine_identity
    from veil.sandbox.seccomp import bpf_memfd, seccomp_unavailable

    binary = bwrap_path()
    if binary is None:
        return "bwrap is not installed (Debian package bubblewrap)"
    problem = seccomp_unavailable()
    if problem:
        return problem
    try:
        identity = engine_identity()
    except OSError as exc:
        return str(exc)
    fd = bpf_memfd()
    try:
        cmd = [
            binary,
            "--unshare-all",
            "--unshare-user",
            "--disable-userns",
            "--die-with-parent",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/",
            "/",
            "--seccomp",
            str(fd),
            "true",
        ]
        ids = {} if identity is None else {"user": identity[0], "group": identity[1], "extra_groups": []}
        result = subprocess.run(cmd, pass_fds=(fd,), capture_output=True, text=True, timeout=30, **ids)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap probe failed: {exc}"
    finally:
        os.close(fd)
    if result.returncode != 0:
        return f"bwrap cannot create namespaces: {result.stderr.strip() or result.returncode}"
    return None
