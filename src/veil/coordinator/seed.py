"""The coordinator's state seed, and every key derived from it.

One 32-byte secret, generated inside the TEE on first start, is the *state key*. HKDF-SHA256
derives from it the AES-256-GCM key that seals database rows, the X25519 key admins encrypt to
(the attested ``public_key``) and the Ed25519 *identity key*, whose public half the admins name in
the manifest (``coordinator_identity``). Restoring a coordinator means restoring this seed; a host
that builds a database under a seed of its own gets another identity, which no admin-signed
manifest names: the coordinator refuses to load it and clients refuse to trust it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.attestation import identity_key_of, identity_of
from veil.errors import VerificationError

SEED_BYTES = 32
NONCE_LEN = 12
ROWS_INFO = b"veil/state/rows/v1"
HPKE_INFO = b"veil/state/hpke/v1"


class StateCipher:
    """AES-256-GCM; ``aad`` names the row so blobs cannot be moved around."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the state key is 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def open(self, blob: bytes, aad: str) -> bytes:
        try:
            return self._aead.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad.encode())
        except (InvalidTag, ValueError):
            raise VerificationError("state.tampered", f"stored state {aad!r} does not open (tampered or moved)") from None


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(secret)


@dataclass(frozen=True)
class StateSeed:
    """The state key and what it derives; ``secret`` never leaves the TEE except sealed."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != SEED_BYTES:
            raise VerificationError("state.bad_seed", "the state key is 32 bytes")

    @classmethod
    def generate(cls) -> "StateSeed":
        return cls(os.urandom(SEED_BYTES))

    @cached_property
    def cipher(self) -> StateCipher:
        return StateCipher(_derive(self.secret, ROWS_INFO))

    @cached_property
    def hpke_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(_derive(self.secret, HPKE_INFO))

    @cached_property
    def identity_key(self) -> Ed25519PrivateKey:
        return identity_key_of(self.secret)

    @cached_property
    def identity(self) -> str:
        """The public identity (hex Ed25519) that manifests name as ``coordinator_identity``."""
        return identity_of(self.secret)
