"""The sandbox: the AI engine runs where it can reach nothing but the gateway's Unix socket.

Profiles: ``bubblewrap`` (namespaces + seccomp + Landlock), ``gvisor`` (runsc, no network) and
``none`` (development only, and reported as such).
Imports are lazy so that the launch trampoline stays fast (no pydantic on that path).
"""

from __future__ import annotations

from veil._lazy import exports

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

__getattr__ = exports(__name__, _HOMES)
