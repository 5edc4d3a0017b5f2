"""The client SDK: verify a deployment's attestation, then talk to it through OHTTP.

``sdk`` holds ``Client``/``AsyncClient`` (the ``openai`` SDK over an encrypting transport),
``transport`` the OHTTP transports, ``verify`` the check of the coordinator's evidence against a
``policy``, ``freshness`` re-verification, ``proxy`` the local ``veil proxy``. The client never
imports the worker or the coordinator (tests/test_layering.py). Names load lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from veil._lazy import exports

if TYPE_CHECKING:
    from veil.client.manifest_log import ManifestLog
    from veil.client.policy import ClientPolicy
    from veil.client.sdk import AsyncClient, Client
    from veil.client.transport import AsyncOhttpTransport, GatewayRefused, OhttpTransport
    from veil.client.verify import AttestedCoordinator, verify_coordinator

__all__ = [
    "AsyncClient",
    "AsyncOhttpTransport",
    "AttestedCoordinator",
    "Client",
    "ClientPolicy",
    "GatewayRefused",
    "ManifestLog",
    "OhttpTransport",
    "verify_coordinator",
]

_HOMES = {
    "AsyncClient": "veil.client.sdk",
    "AsyncOhttpTransport": "veil.client.transport",
    "AttestedCoordinator": "veil.client.verify",
    "Client": "veil.client.sdk",
    "ClientPolicy": "veil.client.policy",
    "GatewayRefused": "veil.client.transport",
    "ManifestLog": "veil.client.manifest_log",
    "OhttpTransport": "veil.client.transport",
    "verify_coordinator": "veil.client.verify",
}

__getattr__ = exports(__name__, _HOMES)
