"""The gVisor profile: the engine runs on runsc's user-space kernel, with no network at all.

gVisor answers the engine's system calls itself, so a Linux kernel bug is not directly reachable;
``--network=none`` leaves only loopback inside. The engine still creates its Unix socket in the
bound socket directory: ``--host-uds=create`` lets runsc's gofer create that socket on the host so
the gateway can connect to it. The bundle's root is an empty read-only directory with only the
system libraries, the Python runtime, Veil's code and the model bound in (``runsc do`` would expose
the whole host filesystem read-only, so it is not used).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence

from veil.process import die_with_parent
from veil.sandbox.bwrap import (
    DEV_SIZE,
    ETC_FILES,
    SHM_SIZE,
    SYSTEM_DIRS,
    TMP_SIZE,
    beneath,
    engine_environ,
    outermost,
    python_runtime_paths,
    scratch_dir,
)
from veil.sandbox.launch import LaunchSpec
from veil.sandbox.masks import MASKED_DIRS, MASKED_FILES, READONLY
from veil.sandbox.seccomp import oci_seccomp


def runsc_path() -> str | None:
    """The runsc binary, or None."""
    return shutil.which("runsc")


def runsc_flags(state_root: str) -> list[str]:
    """Global runsc flags: no network, host Unix sockets only as created by the engine."""
    flags = ["--root", state_root, "--network=none", "--host-uds=create", "--ignore-cgroups", "--oci-seccomp"]
    if os.geteuid() != 0:
        flags.append("--rootless")
    return flags


def _bind(path: str, *, writable: bool = False) -> dict[str, object]:
    options = ["rbind", "rw" if writable else "ro", "nosuid", "nodev"]
    return {"destination": path, "type": "bind", "source": path, "options": options}


def oci_config(
    command: Sequence[str],
    *,
    socket_dir: str,
    ro_paths: Sequence[str],
    environ: dict[str, str],
    pids_max: int = 1024,
) -> dict[str, object]:
    """The OCI runtime spec for the engine: read-only binds, capped tmpfs, socket dir writable.

    Inside gVisor the engine's processes are not host tasks the host cgroup can count, so
    ``pids_max`` becomes the engine's RLIMIT_NPROC, which gVisor's kernel enforces.
    """
    scratch = scratch_dir(socket_dir)
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        # This runsc ignores the size of /dev (not of the others), and read-only it would refuse
        # to open /dev/null for writing: /dev is bounded by the engine's memory cgroup instead.
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", f"size={DEV_SIZE}"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", f"size={SHM_SIZE}"]},
        {"destination": scratch, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", f"size={TMP_SIZE}"]},
    ]
    binds = [p for p in SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)]
    binds += [p for p in ETC_FILES if os.path.exists(p)]
    binds += outermost([*python_runtime_paths(), *ro_paths])
    mounts += [_bind(p) for p in binds]
    mounts.append(_bind(socket_dir, writable=True))
    env = [f"{k}={v}" for k, v in sorted(engine_environ(environ, socket_dir).items())]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": list(command),
            "env": env,
            "cwd": "/",
            "capabilities": {k: [] for k in ("bounding", "effective", "inheritable", "permitted", "ambient")},
            "noNewPrivileges": True,
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
                {"type": "RLIMIT_NPROC", "hard": pids_max, "soft": pids_max},
            ],
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "veil-engine",
        "mounts": mounts,
        "linux": {
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "seccomp": oci_seccomp(),
            "maskedPaths": [*MASKED_FILES, *MASKED_DIRS],
            "readonlyPaths": list(READONLY),
        },
    }


def _make_rootfs(rootfs: str, config: dict[str, object]) -> None:
    """Mount points must exist in the (read-only) root; merged-/usr links are recreated."""
    os.makedirs(rootfs)
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), rootfs + path)
    for mount in config["mounts"]:  # type: ignore[attr-defined]
        dest = rootfs + mount["destination"]
        if os.path.isfile(mount["source"]):
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            open(dest, "a").close()
        else:
            os.makedirs(dest, exist_ok=True)


def run_in_gvisor(spec: LaunchSpec, command: Sequence[str]) -> int:
    """Run ``command`` under runsc, wait, clean the bundle and state up; returns its exit code."""
    binary = runsc_path()
    if binary is None:
        print("veil.sandbox: runsc is not installed", file=sys.stderr)
        return 125
    if beneath(spec.socket_dir, "/dev"):
        print("veil.sandbox: the socket directory cannot live under /dev", file=sys.stderr)
        return 125
    die_with_parent(signal.SIGTERM)  # the launcher dies: tear the sandbox and bundle down with it
    work = tempfile.mkdtemp(prefix="veil-gvisor-")
    state, bundle = os.path.join(work, "state"), os.path.join(work, "bundle")
    os.makedirs(state)
    os.makedirs(bundle)
    config = oci_config(
        command, socket_dir=spec.socket_dir, ro_paths=spec.ro_paths, environ=dict(os.environ), pids_max=spec.pids_max
    )
    _make_rootfs(os.path.join(bundle, "rootfs"), config)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump(config, f)
    name = f"veil-{uuid.uuid4().hex[:12]}"
    flags = runsc_flags(state)
    before = set(os.listdir(spec.socket_dir))
    # runsc dies with us (SIGKILL included) and takes its sandbox and gofer along.
    proc = subprocess.Popen([binary, *flags, "run", "--bundle", bundle, name], preexec_fn=lambda: die_with_parent(signal.SIGKILL))

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        return proc.wait()
    finally:
        subprocess.run([binary, *flags, "delete", "--force", name], capture_output=True, timeout=30)
        shutil.rmtree(work, ignore_errors=True)
        _remove_new_entries(spec.socket_dir, before)


def _remove_new_entries(directory: str, before: set[str]) -> None:
    """runsc cannot limit the writable socket dir to sockets (bwrap's Landlock can): whatever the
    engine left there (files, dirs, links, its socket) is removed when it exits, never followed."""
    for name in set(os.listdir(directory)) - before:
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass


@functools.lru_cache(maxsize=2)
def probe_gvisor(*, allow_gpu: bool = False) -> str | None:
    """Why runsc cannot confine an engine here (the exact error), or None when it can."""
    binary = runsc_path()
    if binary is None:
        return "runsc is not installed (Debian package runsc, or gVisor's own release)"
    if allow_gpu:
        return "GPU passthrough (nvproxy) is not supported by this runsc profile"
    with tempfile.TemporaryDirectory(prefix="veil-gvisor-probe-") as sock:
        cmd = [sys.executable, "-m", "veil.sandbox.launch", "--sandbox", "gvisor", "--socket-dir", sock, "--", "/bin/true"]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"runsc probe failed: {exc}"
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        return f"runsc cannot start a sandbox here: {' | '.join(tail) or result.returncode}"
    return None
