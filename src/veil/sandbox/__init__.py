"""The sandbox: the AI engine runs where it can reach nothing but the gateway's Unix socket.

Profiles: ``bubblewrap`` (namespaces + seccomp + Landlock), ``gvisor`` (runsc, no network) and
``none`` (development only, and reported as such).
Imports are lazy so that the launch trampoline stays fast (no pydantic on that path).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SandboxError",
    "SandboxProfile",
    "check_enforceable",
    "run_sandboxed",
    "sandbox_prefix",
    "wrap_command",
]

_HOMES = {
    "SandboxError": "veil.sandbox.profile",
    "SandboxProfile": "veil.sandbox.profile",
    "check_enforceable": "veil.sandbox.profile",
    "run_sandboxed": "veil.sandbox.runner",
    "sandbox_prefix": "veil.sandbox.runner",
    "wrap_command": "veil.sandbox.bwrap",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(name)
