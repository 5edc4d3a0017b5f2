"""Veil: confidential AI inference with attested, end-to-end encrypted requests.

The top-level names are the client SDK (``veil.Client``, ``veil.AsyncClient``, their policy,
transports and the verification they hold) and the typed errors every refusal raises;
tests/test_exports.py pins this list. They load lazily: ``import veil`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from veil._lazy import exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from veil.client import AsyncClient, AsyncOhttpTransport, AttestedCoordinator, Client, ClientPolicy, OhttpTransport
    from veil.errors import ParseError, PolicyError, ProtocolError, VeilError, VerificationError

__all__ = [
    "AsyncClient",
    "AsyncOhttpTransport",
    "AttestedCoordinator",
    "Client",
    "ClientPolicy",
    "OhttpTransport",
    "ParseError",
    "PolicyError",
    "ProtocolError",
    "VeilError",
    "VerificationError",
    "__version__",
]

_HOMES = {
    "AsyncClient": "veil.client",
    "AsyncOhttpTransport": "veil.client",
    "AttestedCoordinator": "veil.client",
    "Client": "veil.client",
    "ClientPolicy": "veil.client",
    "OhttpTransport": "veil.client",
    "ParseError": "veil.errors",
    "PolicyError": "veil.errors",
    "ProtocolError": "veil.errors",
    "VeilError": "veil.errors",
    "VerificationError": "veil.errors",
}

__getattr__ = exports(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
