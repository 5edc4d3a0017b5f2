"""The admin library: key files, tenants, manifests and secrets, used by ``veil`` and ``veil up``.

Operations that send secrets always go to a coordinator verified a moment before: a data key or a
recovered state key leaves the admin's machine only HPKE-sealed to the public key that the
coordinator's fresh attestation bound, so a substituted or unverified coordinator can never read
it. Key files are created owner-only (0600) and never overwritten.

Reads of the audit log, the workers and the secret ids are signed by an admin over a fresh
challenge; the answer comes back sealed to a key of this read and signed by the attested state
identity, and the audit log's hash chain is checked here again against the last head seen. A
restore opens the recovery record, checks that the state key in it derives the identity the trusted
manifest names (so a host-made record is refused before anything is sent), and signs an
authorisation for exactly that coordinator, state and history head.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, cast

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
from veil.attestation import (
    ADMIN_ANSWER_CONTEXT,
    ADMIN_ANSWER_INFO,
    ADMIN_KEY_HEADER,
    ADMIN_NONCE_HEADER,
    ADMIN_READ_CONTEXT,
    ADMIN_RESPONSE_KEY_HEADER,
    ADMIN_SIGNATURE_HEADER,
    AUDIT_GENESIS,
    RESTORE_CONTEXT,
    admin_answer_statement,
    admin_read_statement,
    check_audit_chain,
    identity_of,
    restore_statement,
    sign_statement,
    verify_statement,
)
from veil.client.manifest_log import ManifestLog
from veil.client.policy import ClientPolicy
from veil.client.verify import AttestedCoordinator, verify_coordinator
from veil.errors import ParseError, PolicyError, ProtocolError, VeilError, VerificationError
from veil.manifest import (
    Manifest,
    SignedManifest,
    TenantEntry,
    public_key_hex,
    sign_manifest,
    valid_signers,
    verify_history,
)
from veil.sealing.format import KEY_SIZE
from veil.sealing.seal import generate_data_key

TENANT_KEY_PREFIX = "veil-"
AUDIT_LOG_FILE = "audit-log.json"  # beside the client policy: the last audit head this admin saw
AUDIT_PAGE = 1000


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
    return cast(Ed25519PrivateKey, _load_private_key(path, Ed25519PrivateKey))


def load_recovery_key(path: Path) -> X25519PrivateKey:
    """An admin's X25519 recovery key (PEM, PKCS#8)."""
    return cast(X25519PrivateKey, _load_private_key(path, X25519PrivateKey))


def load_or_create_admin_key(path: Path) -> Ed25519PrivateKey:
    """The admin key at ``path``, generated there (0600) on first use (``veil up``)."""
    return cast(Ed25519PrivateKey, _load_or_create_key(path, Ed25519PrivateKey))


def load_or_create_recovery_key(path: Path) -> X25519PrivateKey:
    """The recovery key at ``path``, generated there (0600) on first use: the coordinator's state
    key is also sealed to it."""
    return cast(X25519PrivateKey, _load_or_create_key(path, X25519PrivateKey))


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


def create_tenant(tenant_id: str, requests_per_minute: int, tokens_per_minute: int | None = None) -> tuple[str, TenantEntry]:
    """A fresh API key (shown once, never stored) and the manifest entry that admits it.

    Keys are ``secrets.token_urlsafe(32)``: 256 bits from the OS CSPRNG, so publishing their
    SHA-256 in the manifest is safe (docs/tenants-and-padding.md).
    """
    api_key = TENANT_KEY_PREFIX + secrets.token_urlsafe(32)
    try:
        entry = TenantEntry(
            id=tenant_id,
            key_sha256=tenant_key_digest(api_key),
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
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
    policy: ClientPolicy,
    admin: Ed25519PrivateKey,
    tenant_id: str,
    requests_per_minute: int,
    tokens_per_minute: int | None = None,
    *,
    manifest_log: ManifestLog | None = None,
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


def _check(resp: httpx.Response) -> Any:
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


def put_secret(
    policy: ClientPolicy, admin: Ed25519PrivateKey, key_id: str, value: bytes, http: httpx.Client | None = None
) -> dict[str, Any]:
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
        stored: dict[str, Any] = _check(client.post(f"{policy.coordinator_url}{wire.SECRETS_PATH}", json=body))
        return stored
    except httpx.HTTPError as exc:
        raise AdminError("coordinator.unreachable", f"{policy.coordinator_url}: {exc}") from None
    finally:
        if http is None:
            client.close()


class _Session:
    """An httpx client owned or borrowed; transport errors become ``coordinator.unreachable``."""

    def __init__(self, url: str, http: httpx.Client | None) -> None:
        self.url, self.own = url, http is None
        self.http = http or httpx.Client(timeout=30)

    def __enter__(self) -> httpx.Client:
        return self.http

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.own:
            self.http.close()
        if isinstance(exc, httpx.HTTPError):
            raise AdminError("coordinator.unreachable", f"{self.url}: {exc}") from None


def set_manifest(
    policy: ClientPolicy,
    admin: Ed25519PrivateKey,
    manifest: Manifest,
    manifest_log: ManifestLog | None = None,
    http: httpx.Client | None = None,
) -> SignedManifest:
    """Sign ``manifest`` as the successor of the verified head and set it; a manifest equal to an
    earlier one is a new entry (that is how an admin returns to an earlier manifest)."""
    with _Session(policy.coordinator_url, http) as client:
        attested = verify_coordinator(policy, http=client, manifest_log=manifest_log)
        assert attested.manifest is not None
        signed = sign_manifest(manifest, [admin], attested.manifest.digest.hex())
        publish_manifest(policy.coordinator_url, signed, http=client)
        return signed


def history(policy: ClientPolicy, http: httpx.Client | None = None) -> list[SignedManifest]:
    """The coordinator's manifest history, chain and signatures verified."""
    with _Session(policy.coordinator_url, http) as client:
        entries = [SignedManifest.parse(e) for e in _check(client.get(f"{policy.coordinator_url}{wire.MANIFEST_HISTORY_PATH}"))]
    verify_history(entries)
    return entries


# signed reads --------------------------------------------------------------------------------------
def signed_read(
    policy: ClientPolicy,
    admin: Ed25519PrivateKey,
    path: str,
    params: dict[str, Any] | None = None,
    http: httpx.Client | None = None,
    attested: AttestedCoordinator | None = None,
) -> Any:
    """GET ``path`` with a fresh admin signature; return the answer after checking that the attested
    state identity signed it, opened with this read's own key."""
    with _Session(policy.coordinator_url, http) as client:
        attested = attested or verify_coordinator(policy, http=client)
        nonce = bytes.fromhex(_check(client.post(f"{policy.coordinator_url}{wire.ADMIN_CHALLENGE_PATH}"))["nonce"])
        response_key = X25519PrivateKey.generate()
        response_public = keyrelease.public_bytes(response_key)
        url = httpx.URL(f"{policy.coordinator_url}{path}", params=params or {})
        target = url.raw_path.decode()
        headers = {
            ADMIN_KEY_HEADER: public_key_hex(admin),
            ADMIN_NONCE_HEADER: nonce.hex(),
            ADMIN_RESPONSE_KEY_HEADER: response_public.hex(),
            ADMIN_SIGNATURE_HEADER: sign_statement(
                admin, ADMIN_READ_CONTEXT, *admin_read_statement("GET", target, nonce, response_public)
            ),
        }
        answer = _check(client.get(str(url), headers=headers))
    try:
        sealed, signature = base64.b64decode(answer["sealed"], validate=True), str(answer["signature"])
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("admin.bad_answer", "the coordinator's answer is not a signed, sealed read") from None
    verify_statement(
        attested.identity,
        signature,
        ADMIN_ANSWER_CONTEXT,
        *admin_answer_statement(nonce, sealed),
        reason="admin.answer_not_signed",
    )
    return json.loads(keyrelease.open_sealed(response_key, sealed, ADMIN_ANSWER_INFO, aad=nonce))


def list_secrets(policy: ClientPolicy, admin: Ed25519PrivateKey, http: httpx.Client | None = None) -> list[str]:
    return list(signed_read(policy, admin, wire.SECRETS_PATH, http=http)["key_ids"])


def list_workers(policy: ClientPolicy, admin: Ed25519PrivateKey, http: httpx.Client | None = None) -> list[dict[str, Any]]:
    return list(signed_read(policy, admin, wire.WORKERS_PATH, http=http)["workers"])


def audit(
    policy: ClientPolicy, admin: Ed25519PrivateKey, after: int = 0, log_path: Path | None = None, http: httpx.Client | None = None
) -> list[dict[str, Any]]:
    """Audit records after ``after``, their hash chain checked up to the signed head, which must
    extend the head this admin saw last (kept in ``log_path``): a deleted, forged or rolled-back
    record is refused (``audit.chain_broken``, ``audit.rollback``)."""
    seen = _read_audit_log(log_path).get(policy.coordinator_url)
    start = after
    if seen is not None and seen["seq"] <= after:
        start = seen["seq"]  # re-check from the head we saw, so what follows must extend it
    with _Session(policy.coordinator_url, http) as client:
        attested = verify_coordinator(policy, http=client)
        records: list[dict[str, Any]] = []
        cursor, last = start, None
        while True:
            page = signed_read(policy, admin, wire.AUDIT_PATH, {"after": cursor, "limit": AUDIT_PAGE}, client, attested)
            anchor, head, found = bytes.fromhex(page["anchor"]), page["head"], page["records"]
            if (cursor == 0 and anchor != AUDIT_GENESIS) or (last is not None and anchor != last):
                raise VerificationError("audit.chain_broken", "the audit page does not continue the chain")
            if seen is not None and (
                head["seq"] < seen["seq"]
                or (cursor == seen["seq"] and anchor.hex() != seen["hash"])
                or any(r["seq"] == seen["seq"] and r["hash"] != seen["hash"] for r in found)
            ):
                raise VerificationError("audit.rollback", "the audit log no longer holds the head this admin saw")
            last = check_audit_chain(found, anchor)
            records += found
            if len(found) < AUDIT_PAGE:
                end_seq = found[-1]["seq"] if found else cursor
                if end_seq != head["seq"] or last.hex() != head["hash"]:
                    raise VerificationError("audit.chain_broken", "the records do not end in the signed head")
                break
            cursor = found[-1]["seq"]
    if log_path is not None:
        _write_audit_log(log_path, policy.coordinator_url, head)
    return [r for r in records if r["seq"] > after]


def _read_audit_log(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        log: dict[str, Any] = json.loads(path.read_text())
        return log
    except FileNotFoundError:
        return {}
    except ValueError:
        raise ParseError("audit.bad_log", f"{path} is not the audit head log") from None


def _write_audit_log(path: Path, url: str, head: dict[str, Any]) -> None:
    data = _read_audit_log(path)
    data[url] = {"seq": head["seq"], "hash": head["hash"]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# recovery ------------------------------------------------------------------------------------------
def recover(
    source_url: str, recovery: X25519PrivateKey, admin: Ed25519PrivateKey, target: ClientPolicy, http: httpx.Client | None = None
) -> dict[str, Any]:
    """Restore the state sealed to our recovery key into a new, verified (locked) coordinator.

    ``source_url`` serves the sealed recovery records and the public manifest history (the old
    coordinator, or the new one reading the same database) — the host may serve anything there, so
    both are checked: the history must verify and its head be trusted by ``target`` (pinned or
    signed by a trusted admin), and the state key in our record must derive the identity that head
    names. Only then is the key sealed to the target's attested key, with our admin signature over
    that key, the state identity and the head.
    """
    with _Session(source_url, http) as client:
        records = _check(client.get(f"{source_url}{wire.RECOVERY_PATH}"))["records"]
        entries = [SignedManifest.parse(e) for e in _check(client.get(f"{source_url}{wire.MANIFEST_HISTORY_PATH}"))]
        head = entries[-1] if entries else None
        if head is None:
            raise PolicyError("recovery.no_manifest", "the source serves no manifest history")
        verify_history(entries)
        if head.digest.hex() not in target.manifest_digests and not valid_signers(head, target.admin_keys):
            raise PolicyError(
                "recovery.untrusted_history",
                "the served history's head is neither pinned nor signed by an admin this policy trusts",
            )
        mine = keyrelease.public_bytes(recovery).hex()
        record = next((r for r in records if r.get("recovery_key") == mine), None)
        if record is None:
            raise ProtocolError("recovery.no_record", "the state key is not sealed to this recovery key")
        state_key = keyrelease.open_sealed(recovery, bytes.fromhex(record["sealed_state_key"]), wire.RECOVERY_INFO)
        if len(state_key) != 32 or identity_of(state_key) != head.manifest.coordinator_identity:
            raise VerificationError(
                "recovery.record_not_authentic",
                "the recovery record holds a state key that is not the state the trusted "
                "manifest names (host-made state?): nothing was restored",
            )
        attested = verify_coordinator(target, http=client, require_manifest=False)
        sealed = keyrelease.seal(attested.public_key, state_key, wire.RECOVERY_UPLOAD_INFO)
        signature = sign_statement(
            admin, RESTORE_CONTEXT, *restore_statement(attested.public_key, head.manifest.coordinator_identity, head.digest)
        )
        restored: dict[str, Any] = _check(
            client.post(
                f"{target.coordinator_url}{wire.RECOVER_PATH}",
                json={
                    "sealed_state_key": base64.b64encode(sealed).decode(),
                    "admin_key": public_key_hex(admin),
                    "signature": signature,
                },
            )
        )
        return restored


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
