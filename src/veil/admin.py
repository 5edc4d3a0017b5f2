"""Admin operations that send secrets: always to a coordinator verified a moment before.

A data key or a recovered state key leaves the admin's machine only HPKE-sealed to the public key
that the coordinator's fresh attestation bound, so a substituted or unverified coordinator can
never read it.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from veil import keyrelease
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.coordinator.state import RECOVERY_INFO, RECOVERY_UPLOAD_INFO
from veil.errors import ParseError, ProtocolError, VeilError
from veil.httputil import error_of
from veil.manifest import public_key_hex


class AdminError(VeilError):
    """The coordinator refused an admin operation; ``reason`` is its reason code."""


def load_admin_key(path: Path) -> Ed25519PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ParseError("admin.bad_key", f"{path} is not an Ed25519 private key")
    return key


def load_recovery_key(path: Path) -> X25519PrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, X25519PrivateKey):
        raise ParseError("admin.bad_key", f"{path} is not an X25519 private key")
    return key


def _check(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code == 200:
        return resp.json()
    raise AdminError(*error_of(resp))


def put_secret(policy: ClientPolicy, admin: Ed25519PrivateKey, key_id: str, value: bytes,
               http: httpx.Client | None = None) -> dict[str, Any]:
    """Verify the coordinator, then upload ``value`` sealed to its attested key, signed by ``admin``."""
    attested = verify_coordinator(policy, http=http)
    sealed = keyrelease.seal(attested.public_key, value, keyrelease.ADMIN_SECRET_INFO, aad=key_id.encode())
    body = {
        "key_id": key_id,
        "sealed": base64.b64encode(sealed).decode(),
        "admin_key": public_key_hex(admin),
        "signature": admin.sign(keyrelease.secret_upload_message(key_id, sealed)).hex(),
    }
    client = http or httpx.Client(timeout=30)
    try:
        return _check(client.post(f"{policy.coordinator_url}/v1/secrets", json=body))
    except httpx.HTTPError as exc:
        raise AdminError("coordinator.unreachable", f"{policy.coordinator_url}: {exc}") from None
    finally:
        if http is None:
            client.close()


def recover(source_url: str, recovery: X25519PrivateKey, target: ClientPolicy,
            http: httpx.Client | None = None) -> dict[str, Any]:
    """Open the state key sealed to our recovery key and restore it into a verified coordinator.

    ``source_url`` serves the sealed recovery records (the old coordinator, or the new one reading
    the same database); ``target`` is the policy the new coordinator must satisfy. The new one is
    locked, so it has no manifest yet: only its evidence and measurement are checked.
    """
    client = http or httpx.Client(timeout=30)
    try:
        records = _check(client.get(f"{source_url}/v1/recovery"))["records"]
        mine = keyrelease.public_bytes(recovery).hex()
        record = next((r for r in records if r["recovery_key"] == mine), None)
        if record is None:
            raise ProtocolError("recovery.no_record", "the state key is not sealed to this recovery key")
        state_key = keyrelease.open_sealed(recovery, bytes.fromhex(record["sealed_state_key"]), RECOVERY_INFO)
        attested = verify_coordinator(target, http=client, require_manifest=False)
        sealed = keyrelease.seal(attested.public_key, state_key, RECOVERY_UPLOAD_INFO)
        return _check(client.post(
            f"{target.coordinator_url}/v1/recover",
            json={"sealed_state_key": base64.b64encode(sealed).decode()},
        ))
    except httpx.HTTPError as exc:
        raise AdminError("coordinator.unreachable", f"{source_url}: {exc}") from None
    finally:
        if http is None:
            client.close()


def audit(coordinator_url: str, after: int = 0, http: httpx.Client | None = None) -> list[dict[str, Any]]:
    client = http or httpx.Client(timeout=30)
    try:
        return _check(client.get(f"{coordinator_url}/v1/audit", params={"after": after}))  # type: ignore[return-value]
    except httpx.HTTPError as exc:
        raise AdminError("coordinator.unreachable", f"{coordinator_url}: {exc}") from None
    finally:
        if http is None:
            client.close()


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
