"""What report_data binds.

A TEE report carries 64 bytes of caller data. Veil puts a SHA-512 over a length-prefixed,
domain-separated list of values there, so one report proves a nonce *and* the keys and digests
that came with it. Length prefixes keep two different lists from ever hashing the same.
"""

from __future__ import annotations

import hashlib
import hmac

from veil.errors import VerificationError

COORDINATOR_CONTEXT = b"veil/coordinator-evidence/v1"
WORKER_CONTEXT = b"veil/worker-evidence/v1"


def bind(context: bytes, *values: bytes) -> bytes:
    """SHA-512(context ‖ for each value: u32 length ‖ value): the 64-byte report_data."""
    h = hashlib.sha512()
    for item in (context, *values):
        h.update(len(item).to_bytes(4, "big"))
        h.update(item)
    return h.digest()


def coordinator_report_data(
    nonce: bytes, public_key: bytes, manifest_digest: bytes, key_config_digest: bytes
) -> bytes:
    """report_data of the coordinator's evidence for one client nonce."""
    return bind(COORDINATOR_CONTEXT, nonce, public_key, manifest_digest, key_config_digest)


def worker_report_data(nonce: bytes, public_key: bytes, extra_evidence_digest: bytes = b"") -> bytes:
    """report_data of a worker's evidence: the challenge, its key, and e.g. its GPU evidence hash."""
    return bind(WORKER_CONTEXT, nonce, public_key, extra_evidence_digest)


def check_report_data(actual: bytes, expected: bytes) -> None:
    """Constant-time comparison; a mismatch means replay, substitution or a stale nonce."""
    if not hmac.compare_digest(actual, expected):
        raise VerificationError(
            "binding.report_data_mismatch",
            "report_data does not bind this nonce, key and digests (replayed or substituted evidence)",
        )
