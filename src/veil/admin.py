"""The admin library: key files, tenants, manifests and secrets, used by ``veil`` and ``veil up``.

Operations that send secrets always go to a coordinator verified a moment before: a data key or a
recovered state key leaves the admin's machine only HPKE-sealed to the public key that the
coordinator's fresh attestation bound, so a substituted or unverified coordinator can never read
it. Key files are created owner-only (0600) and never overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from pydantic import ValidationError

from veil import keyrelease, wire
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.client.manifest_log import ManifestLog
from veil.errors import ParseError, PolicyError, ProtocolError, VeilError
from veil.manifest import Manifest, SignedManifest, TenantEntry, public_key_hex, sign_manifest
from veil.sealing.format import KEY_SIZE
from veil.sealing.seal import generate_data_key

TENANT_KEY_PREFIX = "veil-"


class AdminError(VeilError):
    """The coordinator refused an admin operation; ``reason`` is its reason code."""


# -- key files -------------------------------------------------------------------------------------


def _create_owner_only(path: Path, data: bytes) -> None:
    """Write a new secret file, mode 0600, refusing to replace anything already there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _load_private_key(path: Path, kind: type[Any]) -> Any:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ParseError("admin.bad_key", f"{path}: {exc}") from None
    if not isinstance(key, kind):
        raise ParseError("admin.bad_key", f"{path} is not an {kind.__name__[:-10]} private key")
    return key


def _load_or_create_key(path: Path, kind: type[Any]) -> Any:
    if path.exists():
        return _load_private_key(path, kind)
    key = kind.generate()
    _create_owner_only(path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return key


def load_admin_key(path: Path) -> Ed25519PrivateKey:
    """An admin's Ed25519 signing key (PEM, PKCS#8)."""
    return _load_private_key(path, Ed25519PrivateKey)


def load_recovery_key(path: Path) -> X25519PrivateKey:
    """An admin's X25519 recovery key (PEM, PKCS#8)."""
    return _load_private_key(path, X25519PrivateKey)


def load_or_create_admin_key(path: Path) -> Ed25519PrivateKey:
    """The admin key at ``path``, generated there (0600) on first use (``veil up``)."""
    return _load_or_create_key(path, Ed25519PrivateKey)


def load_or_create_recovery_key(path: Path) -> X25519PrivateKey:
    """The recovery key at ``path``, generated there (0600) on first use: the coordinator's state
    key is also sealed to it."""
    return _load_or_create_key(path, X25519PrivateKey)


def load_data_key(path: Path) -> bytes:
    """A model data key file: 64 hex characters (what Veil writes) or 32 raw bytes."""
    data = path.read_bytes()
    text = data.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) == KEY_SIZE:
        return data
    raise ParseError("seal.bad_key", f"{path}: expected {KEY_SIZE} raw bytes or {2 * KEY_SIZE} hex characters")


def write_new_data_key(path: Path) -> bytes:
    """Generate a data key and write it as hex, owner-only, refusing to overwrite anything."""
    key = generate_data_key()
    _create_owner_only(path, (key.hex() + "\n").encode())
    return key


# -- tenants -----------------------------------------------------------------------------------------


def tenant_key_digest(api_key: str) -> str:
    """The manifest's ``key_sha256`` for an API key (the worker compares SHA-256 digests)."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def create_tenant(
    tenant_id: str, requests_per_minute: int, tokens_per_minute: int | None = None
) -> tuple[str, TenantEntry]:
    """A fresh API key (shown once, never stored) and the manifest entry that admits it.

    Keys are ``secrets.token_urlsafe(32)``: 256 bits from the OS CSPRNG, so publishing their
    SHA-256 in the manifest is safe (docs/tenants-and-padding.md).
    """
    api_key = TENANT_KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        entry = TenantEntry(
            id=tenant_id, key_sha256=tenant_key_digest(api_key),
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
        )
    except ValidationError as exc:
        raise ParseError("tenant.invalid", str(exc.errors()[0]["msg"])) from None
    return api_key, entry


def add_tenant(
    manifest: Manifest, tenant_id: str, requests_per_minute: int, tokens_per_minute: int | None = None
) -> tuple[str, TenantEntry, Manifest]:
    """The key (once), its entry, and ``manifest`` with the entry appended (still to be signed)."""
    if any(t.id == tenant_id for t in manifest.tenants):
        raise PolicyError("tenant.exists", f"tenant {tenant_id!r} already exists")
    api_key, entry = create_tenant(tenant_id, requests_per_minute, tokens_per_minute)
    tenants = [t.model_dump() for t in manifest.tenants] + [entry.model_dump()]
    updated = Manifest.model_validate({**manifest.model_dump(), "tenants": tenants})
    return api_key, entry, updated


def publish_tenant(
    policy: ClientPolicy, admin: Ed25519PrivateKey, tenant_id: str, requests_per_minute: int,
    tokens_per_minute: int | None = None, *, manifest_log: ManifestLog | None = None,
    http: httpx.Client | None = None,
) -> tuple[str, TenantEntry, SignedManifest]:
    """``veil tenant add``: verify the coordinator, append the tenant to its manifest, sign, publish.

    Returns the API key (the only copy), the entry and the newly signed manifest.
    """
    attested = verify_coordinator(policy, manifest_log=manifest_log, http=http)
    if attested.manifest is None:
        raise ProtocolError("manifest.missing", "the coordinator has no manifest to add a tenant to")
    api_key, entry, updated = add_tenant(attested.manifest.manifest, tenant_id, requests_per_minute, tokens_per_minute)
    signed = sign_manifest(updated, [admin], attested.manifest.digest.hex())
    publish_manifest(policy.coordinator_url, signed, http=http)
    return api_key, entry, signed


# -- coordinator calls -------------------------------------------------------------------------------


def _check(resp: httpx.Response) -> dict[str, Any]:
    if resp.status_code == 200:
        return resp.json()
    raise AdminError(*wire.error_of(resp))


def publish_manifest(coordinator_url: str, signed: SignedManifest, http: httpx.Client | None = None) -> None:
    """POST a signed manifest; the coordinator checks it succeeds its head (signatures, chain)."""
    client = http or httpx.Client(timeout=30)
    try:
        _check(client.post(f"{coordinator_url}{wire.MANIFEST_PATH}", content=signed.model_dump_json()))
    except httpx.HTTPError as exc:
        raise AdminError("coordinator.unreachable", f"{coordinator_url}: {exc}") from None
    finally:
        if http is None:
            client.close()


def put_secret(policy: ClientPolicy, admin: Ed25519PrivateKey, key_id: str, value: bytes,
               http: httpx.Client | None = None) -> dict[str, Any]:
    """Verify the coordinator, then upload ``value`` sealed to its attested key, signed by ``admin``."""
    attested = verify_coordinator(policy, http=http)
    sealed = keyrelease.seal(attested.public_key, value, wire.ADMIN_SECRET_INFO, aad=key_id.encode())
    body = {
        "key_id": key_id,
        "sealed": base64.b64encode(sealed).decode(),
        "admin_key": public_key_hex(admin),
        "signature": admin.sign(keyrelease.secret_upload_message(key_id, sealed)).hex(),
    }
    client = http or httpx.Client(timeout=30)
    try:
        return _check(client.post(f"{policy.coordinator_url}{wire.SECRETS_PATH}", json=body))
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
        records = _check(client.get(f"{source_url}{wire.RECOVERY_PATH}"))["records"]
        mine = keyrelease.public_bytes(recovery).hex()
        record = next((r for r in records if r["recovery_key"] == mine), None)
        if record is None:
            raise ProtocolError("recovery.no_record", "the state key is not sealed to this recovery key")
        state_key = keyrelease.open_sealed(recovery, bytes.fromhex(record["sealed_state_key"]), wire.RECOVERY_INFO)
        attested = verify_coordinator(target, http=client, require_manifest=False)
        sealed = keyrelease.seal(attested.public_key, state_key, wire.RECOVERY_UPLOAD_INFO)
        return _check(client.post(
            f"{target.coordinator_url}{wire.RECOVER_PATH}",
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
        return _check(client.get(f"{coordinator_url}{wire.AUDIT_PATH}", params={"after": after}))  # type: ignore[return-value]
    except httpx.HTTPError as exc:
        raise AdminError("coordinator.unreachable", f"{coordinator_url}: {exc}") from None
    finally:
        if http is None:
            client.close()


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
