"""What clients, admins and workers check in a coordinator's answers, in one layer all of them import.

- The attestation answer (``GET /v1/attestation``): its fields, and the report_data its evidence must
  bind (nonce, HPKE key, state identity, manifest entry digest, key configuration digest).
- The *state identity*: the Ed25519 key derived from the coordinator's state seed. An admin-signed
  manifest names it (``coordinator_identity``); the attested identity must be that one, so a
  coordinator whose state the host swapped underneath is refused, not trusted.
- Statements: Ed25519 signatures over a context label and length-prefixed values, made by the state
  identity (registration answers, admin reads) or by an admin (restore authorisations).
- The bootstrap admin key carried in measured launch data (SEV-SNP HOST_DATA, TDX MRCONFIGID).
- The audit log's hash chain, which ``veil audit`` recomputes.

Nothing here does I/O; the client (``veil.client.verify``), the admin library and the worker call it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil.attest.binding import bind, coordinator_batch_report_data, coordinator_report_data
from veil.attest.nonce_tree import InclusionProof, root_from_proof
from veil.errors import ParseError, PolicyError, VerificationError
from veil.manifest import Manifest

REGISTRATION_CONTEXT = b"veil/registration-answer/v1"  # signed by the state identity
ADMIN_READ_CONTEXT = b"veil/admin-read/v1"  # signed by an admin: the request
ADMIN_ANSWER_CONTEXT = b"veil/admin-read-answer/v1"  # signed by the state identity: the answer
RESTORE_CONTEXT = b"veil/state-restore/v1"  # signed by an admin: authorises one restore
ADMIN_ANSWER_INFO = b"veil/admin-read-answer/v1"  # HPKE info: the answer sealed to the admin
# A signed admin read: GET with these headers; the signature covers method, path?query, nonce and
# the X25519 key the answer is sealed to.
ADMIN_KEY_HEADER = "veil-admin-key"
ADMIN_NONCE_HEADER = "veil-admin-nonce"
ADMIN_RESPONSE_KEY_HEADER = "veil-admin-response-key"
ADMIN_SIGNATURE_HEADER = "veil-admin-signature"
WORKER_PROOF_CONTEXT = b"veil/worker-proof/v1"
AUDIT_CONTEXT = b"veil/audit-record/v1"
AUDIT_GENESIS = bytes(32)
AUDIT_FIELDS = ("seq", "at", "event", "subject", "decision", "reason", "detail")
BOOTSTRAP_KEY_LEN = 32
IDENTITY_INFO = b"veil/state/identity/v1"  # HKDF info: state seed -> Ed25519 identity key


@dataclass(frozen=True)
class CoordinatorAnswer:
    """The fields of an attestation answer, decoded but not yet trusted."""

    platform: str
    evidence: dict[str, Any]
    public_key: bytes
    identity: bytes  # empty while the coordinator is locked (awaiting recovery)
    key_configs: bytes  # the application/ohttp-keys body the evidence binds
    manifest_digest: bytes
    manifest: Any  # the signed manifest as JSON, or None
    locked: bool
    nonce_batch: Any = None  # the client's inclusion path when one report serves a batch of nonces

    @classmethod
    def parse(cls, body: Any) -> "CoordinatorAnswer":
        try:
            return cls(
                platform=str(body["platform"]),
                evidence=body["evidence"],
                public_key=bytes.fromhex(body["public_key"]),
                identity=bytes.fromhex(body.get("identity") or ""),
                key_configs=base64.b64decode(body["key_configs"], validate=True),
                manifest_digest=bytes.fromhex(body["manifest_digest"]),
                manifest=body.get("manifest"),
                locked=bool(body.get("locked", False)),
                nonce_batch=body.get("nonce_batch"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ParseError("attestation.malformed", "attestation answer is missing or has bad fields") from None

    def report_data(self, nonce: bytes) -> bytes:
        """What the evidence's report_data must be for this answer to ``nonce``."""
        return expected_report_data(
            nonce,
            self.nonce_batch,
            self.public_key,
            self.identity,
            self.manifest_digest,
            hashlib.sha256(self.key_configs).digest(),
        )


def expected_report_data(
    nonce: bytes, nonce_batch: Any, public_key: bytes, identity: bytes, manifest_digest: bytes, key_config_digest: bytes
) -> bytes:
    """What a coordinator's report_data must be for *our* nonce.

    A batched answer (``nonce_batch``: one report for many clients, coordinator/batching.py)
    carries our inclusion path; the root is recomputed here from our own nonce, never taken from
    the answer, so evidence made for other clients' nonces cannot match.
    """
    if nonce_batch is None:
        return coordinator_report_data(nonce, public_key, identity, manifest_digest, key_config_digest)
    root = root_from_proof(nonce, InclusionProof.from_json(nonce_batch))
    if root is None:
        raise VerificationError("binding.bad_nonce_proof", "the nonce batch path is not a valid path for its index and size")
    return coordinator_batch_report_data(root, public_key, identity, manifest_digest, key_config_digest)


def identity_key_of(seed: bytes) -> Ed25519PrivateKey:
    """The Ed25519 identity key a coordinator state seed derives (HKDF-SHA256)."""
    return Ed25519PrivateKey.from_private_bytes(HKDF(hashes.SHA256(), 32, salt=None, info=IDENTITY_INFO).derive(seed))


def identity_of(seed: bytes) -> str:
    """The public identity (hex) of a state seed: what an admin checks a recovered key against."""
    return identity_key_of(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def check_identity(identity: bytes, manifest: Manifest) -> None:
    """The attested state identity must be the one the (already trusted) manifest names."""
    if manifest.coordinator_identity is None:
        raise PolicyError(
            "manifest.no_coordinator_identity",
            "the manifest does not name the coordinator state it vouches for (coordinator_identity)",
        )
    if identity.hex() != manifest.coordinator_identity:
        raise VerificationError(
            "attestation.identity_mismatch",
            "the coordinator attests a state identity the signed manifest does not name (its state was replaced underneath it)",
        )


# statements -------------------------------------------------------------------------------------
def statement(context: bytes, *values: bytes) -> bytes:
    """The 64 bytes a statement signs: SHA-512 over the context and length-prefixed values."""
    return bind(context, *values)


def sign_statement(key: Ed25519PrivateKey, context: bytes, *values: bytes) -> str:
    return key.sign(statement(context, *values)).hex()


def verify_statement(public_key: str | bytes, signature: str, context: bytes, *values: bytes, reason: str) -> None:
    """Raise VerificationError(``reason``) unless ``signature`` by ``public_key`` covers the values."""
    try:
        raw = bytes.fromhex(public_key) if isinstance(public_key, str) else public_key
        Ed25519PublicKey.from_public_bytes(raw).verify(bytes.fromhex(signature), statement(context, *values))
    except (InvalidSignature, ValueError, TypeError):
        raise VerificationError(reason, "signature does not verify") from None


def admin_read_statement(method: str, target: str, nonce: bytes, response_key: bytes) -> tuple[bytes, ...]:
    """What an admin signs to read ``target`` (path and query, exactly as sent) once."""
    return (method.upper().encode(), target.encode(), nonce, response_key)


def admin_answer_statement(nonce: bytes, sealed: bytes) -> tuple[bytes, ...]:
    """What the state identity signs over an admin read's sealed answer."""
    return (nonce, hashlib.sha256(sealed).digest())


def registration_statement(
    nonce: bytes, worker_key: bytes, worker_id: str, manifest_digest: bytes, sealed: bytes
) -> tuple[bytes, ...]:
    """What the state identity signs over a registration answer, so a worker that pinned the
    identity knows the answer (and the manifest it names) came from the attested coordinator."""
    return (nonce, worker_key, worker_id.encode(), manifest_digest, hashlib.sha256(sealed).digest())


def worker_proof(secret: bytes, nonce: bytes, public_key: bytes) -> str:
    """HMAC a re-registering worker sends to show it is the worker its id was given to."""
    return hmac.new(secret, WORKER_PROOF_CONTEXT + nonce + public_key, hashlib.sha256).hexdigest()


def restore_statement(target_public_key: bytes, identity: str, head_digest: bytes) -> tuple[bytes, ...]:
    """What an admin signs to authorise restoring the state ``identity`` at ``head_digest`` into
    the (locked) coordinator whose attested HPKE key is ``target_public_key``."""
    return (target_public_key, bytes.fromhex(identity), head_digest)


# launch data ------------------------------------------------------------------------------------
def bootstrap_key(launch_data: bytes) -> str | None:
    """The bootstrap admin key (hex Ed25519) carried in the first 32 bytes of launch data.

    HOST_DATA (SEV-SNP, 32 bytes) or MRCONFIGID (TDX, 48 bytes) is chosen by whoever launches the
    VM and is part of every report the VM produces, so the host cannot change it unseen. All zero
    means none was given.
    """
    key = launch_data[:BOOTSTRAP_KEY_LEN]
    if len(key) < BOOTSTRAP_KEY_LEN or not any(key) or any(launch_data[BOOTSTRAP_KEY_LEN:]):
        return None
    return key.hex()


# audit chain ------------------------------------------------------------------------------------
def audit_hash(prev: bytes, record: dict[str, Any]) -> bytes:
    """SHA-256(context ‖ previous hash ‖ RFC 8785 JSON of the record's fields): one chain link."""
    body = rfc8785.dumps({k: record[k] for k in AUDIT_FIELDS})
    return hashlib.sha256(AUDIT_CONTEXT + prev + body).digest()


def check_audit_chain(records: list[dict[str, Any]], anchor: bytes) -> bytes:
    """Recompute the chain from ``anchor`` (the hash before the first record); returns the last hash.

    A removed, inserted, reordered or edited record breaks it (``audit.chain_broken``).
    """
    prev = anchor
    for record in records:
        try:
            ok = bytes.fromhex(record["prev"]) == prev and bytes.fromhex(record["hash"]) == audit_hash(prev, record)
        except (KeyError, ValueError, TypeError):
            ok = False
        if not ok:
            raise VerificationError("audit.chain_broken", f"audit record {record.get('seq')} does not chain")
        prev = bytes.fromhex(record["hash"])
    return prev
