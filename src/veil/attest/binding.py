"""What report_data binds.

A TEE report carries 64 bytes of caller data. Veil puts a SHA-512 over a length-prefixed,
domain-separated list of values there, so one report proves a nonce *and* the keys and digests
that came with it. Length prefixes keep two different lists from ever hashing the same.
"""

from __future__ import annotations

import hashlib
import hmac

from veil.errors import VerificationError

COORDINATOR_CONTEXT = b"veil/coordinator-evidence/v2"
# One report for a batch of clients: the root of the Merkle tree over their nonces
# (veil.attest.nonce_tree) stands where a single nonce would; its own context keeps a root from
# ever being taken for a nonce, or the other way round.
COORDINATOR_BATCH_CONTEXT = b"veil/coordinator-evidence-batch/v2"
WORKER_CONTEXT = b"veil/worker-evidence/v1"


def bind(context: bytes, *values: bytes) -> bytes:
    """SHA-512(context ‖ for each value: u32 length ‖ value): the 64-byte report_data."""
    h = hashlib.sha512()
    for item in (context, *values):
        h.update(len(item).to_bytes(4, "big"))
        h.update(item)
    return h.digest()


def coordinator_report_data(
    nonce: bytes, public_key: bytes, identity: bytes, manifest_digest: bytes, key_config_digest: bytes
) -> bytes:
    """report_data of the coordinator's evidence for one client nonce: its HPKE key, its state
    identity (empty while locked), the manifest entry digest and the key configuration digest."""
    return bind(COORDINATOR_CONTEXT, nonce, public_key, identity, manifest_digest, key_config_digest)


def coordinator_batch_report_data(
    nonce_root: bytes, public_key: bytes, identity: bytes, manifest_digest: bytes, key_config_digest: bytes
) -> bytes:
    """report_data of the coordinator's evidence for a batch of client nonces (their tree's root)."""
    return bind(COORDINATOR_BATCH_CONTEXT, nonce_root, public_key, identity, manifest_digest, key_config_digest)


def worker_report_data(nonce: bytes, public_key: bytes, extra_evidence_digest: bytes = b"", sandbox: bytes = b"") -> bytes:
    """report_data of a worker's evidence: the challenge, its key, e.g. its GPU evidence hash, and the
    sandbox settings it enforces (``veil.manifest.sandbox_binding``: empty for the default profile,
    so evidence made before this binding existed keeps its form)."""
    return bind(WORKER_CONTEXT, nonce, public_key, extra_evidence_digest, *((sandbox,) if sandbox else ()))


def check_report_data(actual: bytes, expected: bytes) -> None:
    """Constant-time comparison; a mismatch means replay, substitution or a stale nonce."""
    if not hmac.compare_digest(actual, expected):
        raise VerificationError(
            "binding.report_data_mismatch",
            "report_data does not bind this nonce, key and digests (replayed or substituted evidence)",
        )
