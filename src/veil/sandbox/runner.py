"""What the engine launcher calls: the argv prefix that confines an engine, or a started process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from veil.sandbox.launch import LaunchSpec, spec_args
from veil.sandbox.profile import SandboxError, SandboxProfile, check_enforceable

log = logging.getLogger(__name__)


def sandbox_prefix(
    profile: SandboxProfile,
    *,
    socket_dir: str | None = None,
    ro_binds: Sequence[str] = (),
    cgroups: Sequence[str] = (),
) -> list[str]:
    """The argv to put before the engine command, e.g. ``[*prefix, sys.executable, "-m", ...]``.

    Refuses (``sandbox.unavailable``) when this machine cannot enforce the profile. The
    development profile "none" goes through the same trampoline (no root, no core dumps, no host
    variables, stdio checked) but runs the engine unconfined, with a loud warning. ``cgroups``
    are directories the trampoline joins first (``veil.sandbox.cgroup``).
    """
    check_enforceable(profile)
    if profile.name == "none":
        log.warning("engine runs %s", profile.describe())
    directory = socket_dir or profile.socket_dir
    if directory is None:
        raise SandboxError("sandbox.invalid_profile", "no socket directory to bind for the engine")
    if not os.path.isdir(directory):
        raise SandboxError("sandbox.invalid_profile", f"socket directory {directory} does not exist")
    for path in (*profile.ro_paths, *ro_binds):
        if not os.path.exists(path):
            raise SandboxError("sandbox.invalid_profile", f"read-only path {path} does not exist")
    spec = LaunchSpec(
        profile.name,
        profile.allow_gpu,
        (*profile.ro_paths, *ro_binds),
        os.path.abspath(directory),
        profile.landlock,
        tuple(cgroups),
        profile.pids_max,
    )
    return [sys.executable, "-m", "veil.sandbox.launch", *spec_args(spec), "--"]


def run_sandboxed(
    profile: SandboxProfile,
    argv: Sequence[str],
    *,
    socket_dir: str | None = None,
    ro_binds: Sequence[str] = (),
    **popen: Any,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` inside the sandbox; the returned process is bwrap (or the gVisor parent)."""
    return subprocess.Popen([*sandbox_prefix(profile, socket_dir=socket_dir, ro_binds=ro_binds), *argv], **popen)
