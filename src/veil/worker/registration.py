"""Worker side of attested key release: authenticate the coordinator, then challenge, evidence bound
to a fresh key, sealed secrets.

The shape follows Trustee's KBS flow (request → challenge → attestation → response) in one
round trip after the challenge: the secrets come back HPKE-sealed to the key in our report_data.

A worker trusts no answer merely for arriving on the path. Before its first registration it
verifies the coordinator as a client would: the manifest history must be rooted in the bootstrap
admin key of the worker's own measured launch data, the coordinator's evidence must match that
history's reference values and bind our nonce, and the attested state identity must be the one the
manifest names. It then pins that identity: every registration answer must be signed by it, and a
newer manifest is accepted only as a verified extension of the history already seen.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil import keyrelease, wire
from veil.attest.attester import Attester
from veil.attest.binding import worker_report_data
from veil.attest.evidence import appraise_evidence, trust_for
from veil.attestation import (
    REGISTRATION_CONTEXT,
    CoordinatorAnswer,
    bootstrap_key,
    check_identity,
    registration_statement,
    verify_statement,
    worker_proof,
)
from veil.errors import PolicyError, ProtocolError, VeilError, VerificationError
from veil.manifest import SignedManifest, verify_history

MAX_ANSWER_BYTES = 4 << 20


class RegistrationRefused(VeilError):
    """The coordinator refused our evidence; ``reason`` is its reason code."""


@dataclass(frozen=True)
class CoordinatorPin:
    """What this worker verified about its coordinator, and holds it to from then on."""

    identity: bytes  # the attested state identity, named by the manifest
    root_key: str  # the bootstrap admin key from our launch data
    manifest: SignedManifest  # the head of the verified history
    chain: tuple[str, ...]  # entry digests of that history


@dataclass(frozen=True)
class ReleasedSecrets:
    worker_id: str
    manifest_digest: str
    ohttp_keys: list[dict[str, Any]]
    data_keys: dict[str, str]  # key id -> hex data key, only those our claims were released
    manifest: SignedManifest  # the verified manifest the coordinator admitted us under
    coordinator: CoordinatorPin
    worker_secret: bytes = field(default=b"", repr=False)  # proves our id at re-registration


GpuCollector = Callable[[bytes, bytes], list[Any]]  # (challenge, worker key) -> NvidiaEvidence list


def _json(resp: httpx.Response) -> Any:
    if resp.status_code != 200:
        raise RegistrationRefused(*wire.error_of(resp))
    if len(resp.content) > MAX_ANSWER_BYTES:
        raise ProtocolError("registration.malformed", "the coordinator's answer is too large")
    try:
        return resp.json()
    except ValueError:
        raise ProtocolError("registration.malformed", "the coordinator's answer is not JSON") from None


def authenticate_coordinator(
    coordinator_url: str, http: httpx.Client, root_key: str, pinned: CoordinatorPin | None = None
) -> CoordinatorPin:
    """Verify the coordinator's attestation and manifest history (rooted in ``root_key``); with
    ``pinned``, also that it is the same state and that its history extends the one seen."""
    nonce = os.urandom(32)
    answer = CoordinatorAnswer.parse(_json(http.get(f"{coordinator_url}{wire.ATTESTATION_PATH}", params={"nonce": nonce.hex()})))
    raw = _json(http.get(f"{coordinator_url}{wire.MANIFEST_HISTORY_PATH}"))
    try:
        history = [SignedManifest.parse(e) for e in raw]
    except (TypeError, AttributeError):
        raise ProtocolError("registration.malformed", "the manifest history is not a list") from None
    head_digest = verify_history(history, root_keys=[root_key])
    if head_digest != answer.manifest_digest:
        raise VerificationError("manifest.digest_mismatch", "the history does not end in the attested manifest")
    head = history[-1]
    appraise_evidence(
        answer.evidence,
        head.manifest.coordinator,
        expected_report_data=answer.report_data(nonce),
        trust=trust_for(head.manifest.trusted_simulation_roots),
    )
    check_identity(answer.identity, head.manifest)
    chain = tuple(e.digest.hex() for e in history)
    if pinned is not None:
        if answer.identity != pinned.identity:
            raise VerificationError("coordinator.identity_changed", "the coordinator's state identity changed")
        if chain[: len(pinned.chain)] != pinned.chain:
            raise PolicyError("manifest.fork", "the coordinator's history does not extend the one this worker saw")
    return CoordinatorPin(answer.identity, root_key, head, chain)


def trust_anchor(attester: Attester) -> str:
    """The bootstrap admin key in this worker's launch data: the root its coordinator's history needs."""
    root_key = bootstrap_key(attester.launch_data())
    if root_key is None:
        raise PolicyError(
            "worker.no_trust_anchor",
            "no bootstrap admin key in this worker's launch data (HOST_DATA): it cannot authenticate a coordinator",
        )
    return root_key


def register(
    coordinator_url: str,
    attester: Attester,
    http: httpx.Client,
    gpu_collector: GpuCollector | None = None,
    previous: ReleasedSecrets | None = None,
    sandbox: bytes = b"",
    pin: CoordinatorPin | None = None,
) -> ReleasedSecrets:
    """Attest with a fresh key and receive the secrets; ``previous`` re-registers a known worker
    (same id, and its pinned coordinator unless ``pin`` names a newer verified view of it).

    ``sandbox`` (``veil.manifest.sandbox_binding``) names the sandbox settings this worker enforces
    before it serves under the secrets released: bound into report_data, checked by the coordinator."""
    root_key = trust_anchor(attester)
    pin = pin or (previous.coordinator if previous else authenticate_coordinator(coordinator_url, http, root_key))
    key = X25519PrivateKey.generate()
    public = keyrelease.public_bytes(key)
    nonce = bytes.fromhex(str(_json(http.post(f"{coordinator_url}{wire.WORKERS_CHALLENGE_PATH}")).get("nonce", "")))
    gpus = gpu_collector(nonce, public) if gpu_collector else []
    if gpus:  # the CPU report binds every GPU's report, each signed over a nonce from this challenge
        from veil.attest import composite

        evidence = attester.evidence(composite.worker_report_data(nonce, public, gpus, sandbox))
        evidence["gpus"] = [g.to_json() for g in gpus]
    else:
        evidence = attester.evidence(worker_report_data(nonce, public, sandbox=sandbox))
    request: dict[str, Any] = {"nonce": nonce.hex(), "public_key": public.hex(), "evidence": evidence}
    if previous is not None:
        request["worker_id"] = previous.worker_id
        request["worker_proof"] = worker_proof(previous.worker_secret, nonce, public)
    body = _json(http.post(f"{coordinator_url}{wire.WORKERS_REGISTER_PATH}", json=request))
    try:
        worker_id, answered_digest = str(body["worker_id"]), bytes.fromhex(body["manifest_digest"])
        blob = base64.b64decode(body["sealed_secrets"], validate=True)
        signature = str(body["signature"])
    except (KeyError, ValueError, TypeError):
        raise ProtocolError("registration.malformed", "coordinator answer has no signed, sealed secrets") from None
    verify_statement(
        pin.identity,
        signature,
        REGISTRATION_CONTEXT,
        *registration_statement(nonce, public, worker_id, answered_digest, blob),
        reason="registration.bad_signature",
    )
    secrets = json.loads(keyrelease.open_sealed(key, blob, wire.WORKER_SECRETS_INFO, aad=nonce))
    if secrets["manifest_digest"] != answered_digest.hex():
        raise ProtocolError("registration.malformed", "the sealed secrets name another manifest")
    if answered_digest != pin.manifest.digest:  # a newer manifest: verify it extends what we saw
        pin = authenticate_coordinator(coordinator_url, http, root_key, pin)
        if answered_digest != pin.manifest.digest:
            raise VerificationError("manifest.digest_mismatch", "the coordinator's manifest changed during registration")
    return ReleasedSecrets(
        worker_id,
        secrets["manifest_digest"],
        secrets["ohttp_keys"],
        secrets.get("data_keys", {}),
        pin.manifest,
        pin,
        bytes.fromhex(secrets.get("worker_secret", "")),
    )
