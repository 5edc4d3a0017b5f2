"""Bubblewrap command lines for the engine: every namespace unshared, almost nothing mounted.

Inside, the engine sees a read-only root made of the system libraries, the Python runtime, Veil's
code and the model; a private scratch tmpfs (/tmp) that vanishes with it; a fresh /proc showing
only its own processes; and one writable host directory, the socket directory. It has no network
interface but loopback (in its own namespace), no capabilities, no way to gain privileges, a
seccomp filter, and (by default) Landlock rules that let it create only sockets in that directory.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Protocol


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
# Only the /etc files that loading programs needs: no hosts, resolv.conf, ssl keys, shadow...
ETC_FILES: tuple[str, ...] = (
    "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
    "/etc/passwd", "/etc/group", "/etc/localtime",
)
# Environment passed through to the engine; everything else (tokens, keys...) is cleared.
ENV_ALLOW: tuple[str, ...] = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONUNBUFFERED", "PYTHONHASHSEED")
ENV_ALLOW_PREFIXES: tuple[str, ...] = ("VEIL_", "CUDA_", "NVIDIA_", "OMP_", "GGML_", "LLAMA_")
_LANDLOCK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "landlock.py")
TMP_SIZE = 1 << 30  # the private scratch tmpfs is memory-backed; cap it


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


def python_runtime_paths() -> list[str]:
    """What the engine's Python needs read-only: prefixes, site-packages, editable sources."""
    cwd = os.getcwd()
    candidates = [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix]
    candidates += [p for p in sys.path[1:] if p and p != cwd]  # sys.path[0] is the script/cwd
    paths = {os.path.abspath(p) for p in candidates if os.path.exists(p)}
    paths.discard("/")  # a PYTHONPATH of "/" must not turn into binding the whole host
    return outermost(paths)


def outermost(paths: Iterable[str]) -> list[str]:
    """Drop duplicates and paths already covered by a parent in the list."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(beneath(path, k) for k in kept):
            kept.append(path)
    return kept


def engine_environ(environ: dict[str, str], socket_dir: str) -> dict[str, str]:
    """The environment bwrap (and so the engine) runs with: an allowlist, nothing else.

    Passed to exec rather than as ``--setenv`` options so values never show up in ``ps``, and so
    bwrap's own process inside the sandbox (pid 1) does not carry the launcher's secrets either.
    """
    scratch = scratch_dir(socket_dir)
    env = {k: v for k, v in environ.items() if k in ENV_ALLOW or k.startswith(ENV_ALLOW_PREFIXES)}
    env.update(HOME=scratch, TMPDIR=scratch)
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


def _system_args() -> list[str]:
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    for path in ETC_FILES:
        args += ["--ro-bind-try", path, path]
    # CPU topology only: numpy and llama.cpp size their thread pools from it.
    args += ["--ro-bind-try", "/sys/devices/system/cpu", "/sys/devices/system/cpu"]
    return args


def wrap_command(
    profile: ProfileLike,
    argv: Sequence[str],
    *,
    socket_dir: str,
    ro_binds: Sequence[str] = (),
    seccomp_fd: int | None = None,
) -> list[str]:
    """The full bwrap command running ``argv`` confined by ``profile``.

    ``seccomp_fd`` must be an inheritable descriptor holding the compiled filter (see
    ``seccomp.bpf_memfd``) and the caller must pass it to the child; without it the command is
    refused, because a bubblewrap profile always includes the filter. Run it with
    ``env=engine_environ(os.environ, socket_dir)``: the engine inherits exactly that environment.
    """
    if seccomp_fd is None:
        raise ValueError("a bubblewrap sandbox needs its seccomp filter (seccomp_fd)")
    if not os.path.isabs(socket_dir) or beneath(socket_dir, "/dev"):
        raise ValueError(f"the socket directory must be absolute and not under /dev: {socket_dir}")
    binary = bwrap_path() or "bwrap"
    args = [
        binary,
        "--unshare-all", "--unshare-user", "--disable-userns",  # incl. net: only loopback inside
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--uid", "65534", "--gid", "65534", "--hostname", "veil-engine",
        "--tmpfs", "/",  # an empty root; only what is bound below exists
        *_system_args(),
    ]
    # The scratch tmpfs goes first: read-only binds that live beneath it (a checkout or venv under
    # /tmp, say) are then mounted on top of it instead of being hidden by it.
    scratch = scratch_dir(socket_dir)
    args += ["--size", str(TMP_SIZE), "--tmpfs", scratch]
    for path in outermost([*python_runtime_paths(), *profile.ro_paths, *ro_binds]):
        args += ["--ro-bind", path, path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    if profile.allow_gpu:
        for node in gpu_device_nodes():
            args += ["--dev-bind", node, node]
        args += ["--ro-bind-try", "/sys", "/sys"]  # CUDA reads PCI topology from sysfs
    args += ["--bind", socket_dir, socket_dir]
    args += ["--remount-ro", "/", "--chdir", "/"]
    if profile.landlock:  # applied inside, after the mounts (Landlock forbids mount())
        # Run by file path with -I -S (stdlib only, no site scan): saves an interpreter start-up's
        # worth of imports; landlock.py deliberately imports nothing from veil.
        argv = [sys.executable, "-I", "-S", _LANDLOCK_SCRIPT, "--socket-dir", socket_dir,
                "--writable", scratch, "--writable", "/dev", "--", *argv]
    args += ["--seccomp", str(seccomp_fd), "--", *argv]
    return args


@functools.lru_cache(maxsize=1)
def probe_bubblewrap() -> str | None:
    """Why bubblewrap cannot confine an engine here (the exact error), or None when it can."""
    from veil.sandbox.seccomp import bpf_memfd, seccomp_unavailable

    binary = bwrap_path()
    if binary is None:
        return "bwrap is not installed (Debian package bubblewrap)"
    problem = seccomp_unavailable()
    if problem:
        return problem
    fd = bpf_memfd()
    try:
        cmd = [binary, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
               "--cap-drop", "ALL", "--ro-bind", "/", "/", "--seccomp", str(fd), "true"]
        result = subprocess.run(cmd, pass_fds=(fd,), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap probe failed: {exc}"
    finally:
        os.close(fd)
    if result.returncode != 0:
        return f"bwrap cannot create namespaces: {result.stderr.strip() or result.returncode}"
    return None
