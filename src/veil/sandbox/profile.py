"""The sandbox profile: what the manifest promises about how the engine is confined.

The profile is embedded in the attested manifest, so a client can read *which* confinement its
prompts are served under. A worker that cannot enforce the profile it was given must refuse to
start the engine (``check_enforceable``) rather than quietly run it with less protection.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from veil.errors import VeilError

SandboxName = Literal["bubblewrap", "gvisor", "none"]


class SandboxError(VeilError):
    """The sandbox cannot be set up as the profile demands (reason ``sandbox.*``)."""


class SandboxProfile(BaseModel):
    """How the engine is confined; part of the attested manifest, so it is frozen and strict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: SandboxName = "bubblewrap"
    # Bind the NVIDIA device nodes (/dev/nvidia*) in; off unless the engine needs a GPU.
    allow_gpu: bool = False
    # Extra host paths bound read-only: the engine's code and the model directory or file.
    ro_paths: tuple[str, ...] = ()
    # The only writable host path: the directory where the engine creates its Unix socket.
    socket_dir: str | None = None
    # bubblewrap only: Landlock inside, so the socket directory accepts sockets and nothing else.
    landlock: bool = True
    # "none" is refused unless this is set: running AI code unconfined is a development shortcut.
    dev_unsandboxed: bool = False
    # Ceilings of the engine's cgroup (where the host offers one): memory in bytes (default 80%
    # of RAM; never swap), processes and threads, CPU time in CPUs (default: all usable CPUs).
    memory_max: int | None = Field(default=None, ge=64 << 20)
    pids_max: int = Field(default=1024, ge=16)
    cpus: float | None = Field(default=None, gt=0)

    @field_validator("ro_paths")
    @classmethod
    def _absolute_ro(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for path in paths:
            if not os.path.isabs(path):
                raise ValueError(f"sandbox ro_paths must be absolute: {path!r}")
        return paths

    @field_validator("socket_dir")
    @classmethod
    def _absolute_socket_dir(cls, path: str | None) -> str | None:
        if path is not None and not os.path.isabs(path):
            raise ValueError(f"sandbox socket_dir must be absolute: {path!r}")
        return path

    @model_validator(mode="after")
    def _none_needs_dev_flag(self) -> SandboxProfile:
        if self.name == "none" and not self.dev_unsandboxed:
            raise ValueError("sandbox 'none' runs the engine unconfined; set dev_unsandboxed=true to allow it (development only)")
        if self.name != "none" and self.dev_unsandboxed:
            raise ValueError("dev_unsandboxed only applies to sandbox 'none'")
        return self

    @property
    def enforced(self) -> bool:
        """False only for the development profile "none"."""
        return self.name != "none"

    def describe(self) -> str:
        """One line for logs and client output; says NOT SANDBOXED in plain words for "none"."""
        if self.name == "none":
            return "NOT SANDBOXED (development only): the engine can reach the network and disk"
        gpu = " +gpu" if self.allow_gpu else ""
        return f"{self.name}{gpu}: no network, read-only filesystem, Unix socket only"


def check_enforceable(profile: SandboxProfile) -> None:
    """Raise ``SandboxError('sandbox.unavailable')`` when this machine cannot enforce ``profile``.

    There is no fallback: a bubblewrap profile on a host without working user namespaces is refused,
    never downgraded. The probes run real (tiny) sandboxes and are cached per process.
    """
    if profile.name == "none":
        return
    if profile.allow_gpu:
        from veil.sandbox.bwrap import gpu_device_nodes

        if not gpu_device_nodes():
            raise SandboxError("sandbox.unavailable", "allow_gpu is set but no /dev/nvidia* device nodes exist")
    if profile.name == "bubblewrap":
        from veil.sandbox.bwrap import probe_bubblewrap

        problem = probe_bubblewrap()
        if not problem and profile.landlock:
            from veil.sandbox.landlock import landlock_abi

            if landlock_abi() < 1:
                problem = (
                    "Landlock is not enabled in this kernel (needs CONFIG_SECURITY_LANDLOCK "
                    "and 'landlock' in the lsm= list); set landlock=false to run without it"
                )
    else:
        from veil.sandbox.gvisor import probe_gvisor

        problem = probe_gvisor(allow_gpu=profile.allow_gpu)
    if problem:
        raise SandboxError("sandbox.unavailable", f"{profile.name}: {problem}")
