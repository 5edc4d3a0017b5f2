"""Worker side of attested key release: challenge, evidence bound to a fresh key, sealed secrets.

The shape follows Trustee's KBS flow (request → challenge → attestation → response) in one
round trip after the challenge: the secrets come back HPKE-sealed to the key in our report_data.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil import keyrelease, wire
from veil.attest.attester import Attester
from veil.attest.binding import worker_report_data
from veil.errors import ProtocolError, VeilError


class RegistrationRefused(VeilError):
    """The coordinator refused our evidence; ``reason`` is its reason code."""


@dataclass(frozen=True)
class ReleasedSecrets:
    worker_id: str
    manifest_digest: str
    ohttp_keys: list[dict[str, Any]]
    data_keys: dict[str, str]  # key id -> hex data key, only those our claims were released


GpuCollector = Callable[[bytes, bytes], list[Any]]  # (challenge, worker key) -> NvidiaEvidence list


def register(
    coordinator_url: str,
    attester: Attester,
    http: httpx.Client,
    gpu_collector: GpuCollector | None = None,
    worker_id: str | None = None,
    sandbox: bytes = b"",
) -> ReleasedSecrets:
    """Attest with a fresh key and receive the secrets; ``worker_id`` re-registers a known worker.

    ``sandbox`` (``veil.manifest.sandbox_binding``) names the sandbox settings this worker enforces
    before it serves under the secrets released: bound into report_data, checked by the coordinator."""
    key = X25519PrivateKey.generate()
    public = keyrelease.public_bytes(key)
    resp = http.post(f"{coordinator_url}{wire.WORKERS_CHALLENGE_PATH}")
    resp.raise_for_status()
    nonce = bytes.fromhex(resp.json()["nonce"])
    gpus = gpu_collector(nonce, public) if gpu_collector else []
    if gpus:  # the CPU report binds every GPU's report, each signed over a nonce from this challenge
        from veil.attest import composite

        evidence = attester.evidence(composite.worker_report_data(nonce, public, gpus, sandbox))
        evidence["gpus"] = [g.to_json() for g in gpus]
    else:
        evidence = attester.evidence(worker_report_data(nonce, public, sandbox=sandbox))
    resp = http.post(
        f"{coordinator_url}{wire.WORKERS_REGISTER_PATH}",
        json={"nonce": nonce.hex(), "public_key": public.hex(), "evidence": evidence, "worker_id": worker_id},
    )
    if resp.status_code != 200:
        raise RegistrationRefused(*wire.error_of(resp))
    body = resp.json()
    try:
        blob = base64.b64decode(body["sealed_secrets"], validate=True)
    except (KeyError, ValueError):
        raise ProtocolError("registration.malformed", "coordinator answer has no sealed secrets") from None
    secrets = json.loads(keyrelease.open_sealed(key, blob, wire.WORKER_SECRETS_INFO, aad=nonce))
    return ReleasedSecrets(
        body["worker_id"], secrets["manifest_digest"], secrets["ohttp_keys"], secrets.get("data_keys", {})
    )
