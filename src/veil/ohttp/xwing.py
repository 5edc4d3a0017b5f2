"""X-Wing (MLKEM768-X25519, HPKE KEM 0x647a, draft-ietf-hpke-pq) as a pyhpke KEM.

A post-quantum/traditional hybrid: the shared secret stays secret while either ML-KEM-768 or X25519
holds, so a recording made today cannot be opened by a future quantum computer. pyhpke has no
hybrid KEM, so this module plugs one into its KEM interface (``pyhpke.KEMInterface`` in a
``pyhpke.CipherSuite``); the primitives are ``cryptography``'s ML-KEM-768, X25519, SHAKE256 and
SHA3-256. Written by hand because no maintained Python package provides X-Wing for HPKE; only the
glue is ours (key expansion, the combiner, the HPKE wrapping), about forty lines of it.

* Private key: a 32-byte seed. SHAKE256(seed, 96) gives the ML-KEM-768 seed d‖z (64 bytes) and the
  X25519 private key (32 bytes).
* Public key (1216 bytes): ML-KEM-768 encapsulation key (1184) ‖ X25519 public key (32).
* Encapsulated key (1120 bytes): ML-KEM-768 ciphertext (1088) ‖ X25519 ephemeral public key (32).
* Shared secret: SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ "\\.//^\\").
* DeriveKeyPair(ikm) = expand(SHAKE256.LabeledDerive(ikm, "DeriveKeyPair", "", 32)).

Encapsulation randomness comes from ``cryptography`` and cannot be injected, so the published
vectors are checked on the recipient side (decapsulation, key schedule, every encryption and
export) and for DeriveKeyPair; see tests/ohttp/test_ohttp_xwing.py.
"""

from __future__ import annotations

import enum
import os
import struct
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import AEADId, CipherSuite, KDFId, KEMInterface, KEMKeyInterface, KEMKeyPair
from pyhpke.aead import AEAD
from pyhpke.kdf import KDF

KEM_ID = 0x647A
SEED_LEN = 32
PUBLIC_KEY_LEN = 1216
ENC_LEN = 1120
SHARED_SECRET_LEN = 32
_MLKEM_PK_LEN = 1184
_MLKEM_CT_LEN = 1088
_LABEL = b"\\.//^\\"  # X-Wing's combiner label, hex 5c2e2f2f5e5c
_SUITE_ID = b"KEM" + struct.pack("!H", KEM_ID)


class HybridKEMId(enum.Enum):
    """pyhpke builds the HPKE suite_id from ``kem.id.value``; its own KEMId enum has no hybrids."""

    MLKEM768_X25519 = KEM_ID


def _shake256(data: bytes, length: int) -> bytes:
    h = hashes.Hash(hashes.SHAKE256(length))
    h.update(data)
    return h.finalize()


def _sha3_256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA3_256())
    h.update(data)
    return h.finalize()


def _x25519_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class XWingPrivateKey:
    """A decapsulation key: the seed, expanded once (decapsulation then costs two primitives)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError("an X-Wing private key is a 32-byte seed")
        expanded = _shake256(seed, 96)
        self._seed = bytes(seed)
        self._mlkem = MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        self._x25519 = X25519PrivateKey.from_private_bytes(expanded[64:])
        self._public = XWingPublicKey(self._mlkem.public_key().public_bytes_raw() + _x25519_public(self._x25519))

    @classmethod
    def generate(cls) -> XWingPrivateKey:
        return cls(os.urandom(SEED_LEN))

    def seed_bytes(self) -> bytes:
        return self._seed

    def public_key(self) -> XWingPublicKey:
        return self._public

    def decapsulate(self, enc: bytes) -> bytes:
        """Raises ValueError on a wrong length or an X25519 low-order point (HPKE DecapError)."""
        if len(enc) != ENC_LEN:
            raise ValueError("an X-Wing encapsulated key is 1120 bytes")
        ct_x = enc[_MLKEM_CT_LEN:]
        ss_m = self._mlkem.decapsulate(enc[:_MLKEM_CT_LEN])
        ss_x = self._x25519.exchange(X25519PublicKey.from_public_bytes(ct_x))
        return _combine(ss_m, ss_x, ct_x, self._public.x25519_bytes)

    def __repr__(self) -> str:  # never print the seed
        return "XWingPrivateKey(<secret>)"


class XWingPublicKey:
    """An encapsulation key; ``cryptography`` checks the ML-KEM part (FIPS 203 modulus check)."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_KEY_LEN:
            raise ValueError("an X-Wing public key is 1216 bytes")
        self._raw = bytes(raw)
        self._mlkem = MLKEM768PublicKey.from_public_bytes(raw[:_MLKEM_PK_LEN])
        self._x25519 = X25519PublicKey.from_public_bytes(raw[_MLKEM_PK_LEN:])

    @property
    def x25519_bytes(self) -> bytes:
        return self._raw[_MLKEM_PK_LEN:]

    def public_bytes(self) -> bytes:
        return self._raw

    def encapsulate(self) -> tuple[bytes, bytes]:
        """(shared secret, enc) with fresh randomness from the OS."""
        ss_m, ct_m = self._mlkem.encapsulate()
        ephemeral = X25519PrivateKey.generate()
        ct_x = _x25519_public(ephemeral)
        ss_x = ephemeral.exchange(self._x25519)
        return _combine(ss_m, ss_x, ct_x, self.x25519_bytes), ct_m + ct_x


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return _sha3_256(ss_m + ss_x + ct_x + pk_x + _LABEL)


def derive_seed(ikm: bytes) -> bytes:
    """HPKE DeriveKeyPair's seed: SHAKE256.LabeledDerive(ikm, "DeriveKeyPair", "", 32)."""
    label = b"DeriveKeyPair"
    labeled = ikm + b"HPKE-v1" + _SUITE_ID + struct.pack("!H", len(label)) + label + struct.pack("!H", SEED_LEN)
    return _shake256(labeled, SEED_LEN)


# -- pyhpke glue ------------------------------------------------------------------------------


class XWingKey(KEMKeyInterface):
    """An X-Wing key (private or public) in pyhpke's key interface."""

    def __init__(self, key: XWingPrivateKey | XWingPublicKey) -> None:
        super().__init__(key)

    def to_private_bytes(self) -> bytes:
        if not isinstance(self._key, XWingPrivateKey):
            raise ValueError("not a private key")
        return self._key.seed_bytes()

    def to_public_bytes(self) -> bytes:
        key = self._key
        return (key.public_key() if isinstance(key, XWingPrivateKey) else key).public_bytes()


class XWingKEM(KEMInterface):
    """HPKE KEM 0x647a in base mode (X-Wing has no authenticated mode)."""

    @property
    def id(self) -> HybridKEMId:  # type: ignore[override]
        return HybridKEMId.MLKEM768_X25519

    def deserialize_private_key(self, key: bytes) -> KEMKeyInterface:
        return XWingKey(XWingPrivateKey(key))

    def deserialize_public_key(self, key: bytes) -> KEMKeyInterface:
        return XWingKey(XWingPublicKey(key))

    def derive_key_pair(self, ikm: bytes) -> KEMKeyPair:
        sk = XWingPrivateKey(derive_seed(ikm))
        return KEMKeyPair(XWingKey(sk), XWingKey(sk.public_key()))

    def encap(
        self, pkr: KEMKeyInterface, sks: KEMKeyInterface | None = None, eks: KEMKeyPair | None = None
    ) -> tuple[bytes, bytes]:
        if sks is not None or eks is not None:
            raise ValueError("X-Wing supports base mode with fresh randomness only")
        public = pkr.raw
        if isinstance(public, XWingPrivateKey):
            public = public.public_key()
        if not isinstance(public, XWingPublicKey):
            raise ValueError("not an X-Wing public key")
        return public.encapsulate()

    def decap(self, enc: bytes, skr: KEMKeyInterface, pks: KEMKeyInterface | None = None) -> bytes:
        if pks is not None or not isinstance(skr.raw, XWingPrivateKey):
            raise ValueError("X-Wing supports base mode with an X-Wing private key only")
        return skr.raw.decapsulate(enc)


@lru_cache(maxsize=None)
def cipher_suite(kdf_id: int, aead_id: int) -> CipherSuite:
    """A pyhpke CipherSuite with X-Wing as its KEM (the KDF and AEAD are pyhpke's own)."""
    suite_id = b"HPKE" + struct.pack("!HHH", KEM_ID, kdf_id, aead_id)
    return CipherSuite(XWingKEM(), KDF(KDFId(kdf_id), suite_id), AEAD(AEADId(aead_id)))
