"""OHTTP key configurations (RFC 9458 §3) and the gateway's key pairs.

A client encrypts to exactly the key configuration it verified in the attestation, so decoding is
strict: any stray byte, odd length or unknown algorithm is refused rather than guessed around.

Each key generation has two configurations (:func:`new_generation`): X25519 for every standard
RFC 9458 client, listed first and with AES-128-GCM first (RFC 9458's own example suite, the one
every implementation has), and X-Wing (MLKEM768-X25519, draft-ietf-hpke-pq), post-quantum, which
Veil's own clients prefer (:mod:`veil.ohttp.preference`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pyhpke import KEMKey, KEMKeyInterface

from veil.errors import ParseError, ProtocolError
from veil.ohttp import xwing
from veil.ohttp.xwing import XWingKey, XWingPrivateKey

KEM_X25519_SHA256 = 0x0020
KEM_XWING = xwing.KEM_ID  # 0x647a, MLKEM768-X25519
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003

#: Public key length per KEM (Npk).
KEM_PUBLIC_KEY_LEN = {KEM_X25519_SHA256: 32, KEM_XWING: xwing.PUBLIC_KEY_LEN}
#: Encapsulated key length per KEM (Nenc).
KEM_ENC_LEN = {KEM_X25519_SHA256: 32, KEM_XWING: xwing.ENC_LEN}
#: Serialised private key length per KEM (Nsk): the X25519 scalar, the X-Wing seed.
KEM_PRIVATE_KEY_LEN = {KEM_X25519_SHA256: 32, KEM_XWING: xwing.SEED_LEN}
KEM_NAMES = {KEM_X25519_SHA256: "X25519 (DHKEM-X25519-HKDF-SHA256)", KEM_XWING: "X-Wing (MLKEM768-X25519)"}
#: Only HKDF-SHA256: RFC 9458 derives the response keys with the suite's KDF (two-stage HKDF).
SUPPORTED_KDFS = frozenset({KDF_HKDF_SHA256})
KDF_NAMES = {KDF_HKDF_SHA256: "HKDF-SHA256"}
#: AEAD id -> (key length Nk, nonce length Nn).
AEAD_PARAMS = {AEAD_AES_128_GCM: (16, 12), AEAD_AES_256_GCM: (32, 12), AEAD_CHACHA20_POLY1305: (32, 12)}
AEAD_NAMES = {AEAD_AES_128_GCM: "AES-128-GCM", AEAD_AES_256_GCM: "AES-256-GCM", AEAD_CHACHA20_POLY1305: "ChaCha20-Poly1305"}


@dataclass(frozen=True)
class SymmetricSuite:
    """One (KDF, AEAD) pair that a key configuration accepts."""

    kdf_id: int
    aead_id: int

    @property
    def supported(self) -> bool:
        return self.kdf_id in SUPPORTED_KDFS and self.aead_id in AEAD_PARAMS


AES_128_GCM = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM)
AES_256_GCM = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_256_GCM)
CHACHA20_POLY1305 = SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305)
#: What each configuration lists, in order. Standard clients (ohttpy among them) take the first
#: entry, so X25519 leads with AES-128-GCM; X-Wing lists only 256-bit keys, as draft-ietf-hpke-pq
#: suggests for post-quantum use.
DEFAULT_SUITES: dict[int, tuple[SymmetricSuite, ...]] = {
    KEM_X25519_SHA256: (AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305),
    KEM_XWING: (AES_256_GCM, CHACHA20_POLY1305),
}


@dataclass(frozen=True)
class KeyConfig:
    """The public half a client encrypts to: key id, KEM, public key and accepted suites."""

    key_id: int
    kem_id: int
    public_key: bytes
    suites: tuple[SymmetricSuite, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.key_id <= 255:
            raise ParseError("ohttp.bad_key_config", "key id must fit in one byte")
        if self.kem_id not in KEM_PUBLIC_KEY_LEN:
            raise ParseError("ohttp.unsupported_kem", f"KEM 0x{self.kem_id:04x} is not supported")
        if len(self.public_key) != KEM_PUBLIC_KEY_LEN[self.kem_id]:
            raise ParseError("ohttp.bad_key_config", "public key has the wrong length for its KEM")
        if not self.suites:
            raise ParseError("ohttp.bad_key_config", "a key configuration needs at least one suite")

    def encode(self) -> bytes:
        """RFC 9458 §3.1 encoding."""
        algs = b"".join(struct.pack("!HH", s.kdf_id, s.aead_id) for s in self.suites)
        return struct.pack("!BH", self.key_id, self.kem_id) + self.public_key + struct.pack("!H", len(algs)) + algs

    @classmethod
    def decode(cls, data: bytes) -> KeyConfig:
        """Decode exactly one configuration; trailing bytes are an error."""
        config, used = _decode_one(data)
        if used != len(data):
            raise ParseError("ohttp.bad_key_config", "trailing bytes after the key configuration")
        return config

    def select_suite(self, preferred: SymmetricSuite | None = None) -> SymmetricSuite:
        """The suite a client will use: ``preferred`` if listed, else the first one we implement."""
        if preferred is not None:
            if preferred in self.suites and preferred.supported:
                return preferred
            raise ProtocolError("ohttp.unsupported_suite", "the key configuration does not list that suite")
        for suite in self.suites:
            if suite.supported:
                return suite
        raise ProtocolError("ohttp.unsupported_suite", "no listed suite is implemented")

    def accepts(self, suite: SymmetricSuite) -> bool:
        return suite in self.suites and suite.supported


def _decode_one(data: bytes) -> tuple[KeyConfig, int]:
    if len(data) < 3:
        raise ParseError("ohttp.bad_key_config", "key configuration is truncated")
    key_id, kem_id = struct.unpack_from("!BH", data, 0)
    if kem_id not in KEM_PUBLIC_KEY_LEN:
        raise ParseError("ohttp.unsupported_kem", f"KEM 0x{kem_id:04x} is not supported")
    npk = KEM_PUBLIC_KEY_LEN[kem_id]
    pos = 3
    if len(data) < pos + npk + 2:
        raise ParseError("ohttp.bad_key_config", "key configuration is truncated")
    public_key = bytes(data[pos : pos + npk])
    pos += npk
    (alg_len,) = struct.unpack_from("!H", data, pos)
    pos += 2
    if alg_len == 0 or alg_len % 4:
        raise ParseError("ohttp.bad_key_config", "symmetric algorithm list must be whole (KDF, AEAD) pairs")
    if len(data) < pos + alg_len:
        raise ParseError("ohttp.bad_key_config", "symmetric algorithm list is truncated")
    suites = tuple(SymmetricSuite(*struct.unpack_from("!HH", data, pos + i)) for i in range(0, alg_len, 4))
    pos += alg_len
    return KeyConfig(key_id, kem_id, public_key, suites), pos


def encode_key_config_list(configs: Iterable[KeyConfig]) -> bytes:
    """``application/ohttp-keys``: each configuration prefixed by its 2-byte length (RFC 9458 §3.2)."""
    out = bytearray()
    for config in configs:
        raw = config.encode()
        out += struct.pack("!H", len(raw)) + raw
    return bytes(out)


def decode_key_config_list(data: bytes) -> list[KeyConfig]:
    """Decode an ``application/ohttp-keys`` body; one bad entry rejects the whole list."""
    configs: list[KeyConfig] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 2:
            raise ParseError("ohttp.bad_key_config", "key configuration list is truncated")
        (length,) = struct.unpack_from("!H", data, pos)
        pos += 2
        if length == 0 or len(data) - pos < length:
            raise ParseError("ohttp.bad_key_config", "key configuration length runs past the end")
        configs.append(KeyConfig.decode(data[pos : pos + length]))
        pos += length
    if not configs:
        raise ParseError("ohttp.bad_key_config", "empty key configuration list")
    return configs


PrivateKey = X25519PrivateKey | XWingPrivateKey


@dataclass
class KeyPair:
    """A gateway key: the private key behind one key configuration (X25519 or X-Wing)."""

    key_id: int
    private_key: PrivateKey
    suites: tuple[SymmetricSuite, ...] | None = None  # None: DEFAULT_SUITES for the KEM
    config: KeyConfig = field(init=False)
    _hpke_key: KEMKeyInterface = field(init=False, repr=False)

    def __post_init__(self) -> None:
        suites = DEFAULT_SUITES[self.kem_id] if self.suites is None else tuple(self.suites)
        self.suites = suites
        self.config = KeyConfig(self.key_id, self.kem_id, self.public_bytes(), suites)
        key = self.private_key
        self._hpke_key = XWingKey(key) if isinstance(key, XWingPrivateKey) else KEMKey.from_pyca_cryptography_key(key)

    @property
    def kem_id(self) -> int:
        return KEM_XWING if isinstance(self.private_key, XWingPrivateKey) else KEM_X25519_SHA256

    @classmethod
    def generate(cls, key_id: int, suites: Iterable[SymmetricSuite] | None = None, *, kem_id: int = KEM_X25519_SHA256) -> KeyPair:
        if kem_id not in KEM_PRIVATE_KEY_LEN:
            raise ParseError("ohttp.unsupported_kem", f"KEM 0x{kem_id:04x} is not supported")
        key: PrivateKey = XWingPrivateKey.generate() if kem_id == KEM_XWING else X25519PrivateKey.generate()
        return cls(key_id, key, None if suites is None else tuple(suites))

    @classmethod
    def from_private_bytes(
        cls, key_id: int, raw: bytes, suites: Iterable[SymmetricSuite] | None = None, *, kem_id: int = KEM_X25519_SHA256
    ) -> KeyPair:
        """Rebuild a key shipped (sealed) from the coordinator to a worker."""
        if kem_id not in KEM_PRIVATE_KEY_LEN:
            raise ParseError("ohttp.unsupported_kem", f"KEM 0x{kem_id:04x} is not supported")
        if len(raw) != KEM_PRIVATE_KEY_LEN[kem_id]:
            raise ParseError("ohttp.bad_private_key", f"a {KEM_NAMES[kem_id]} private key is {KEM_PRIVATE_KEY_LEN[kem_id]} bytes")
        key: PrivateKey = XWingPrivateKey(raw) if kem_id == KEM_XWING else X25519PrivateKey.from_private_bytes(raw)
        return cls(key_id, key, None if suites is None else tuple(suites))

    def hpke_key(self) -> KEMKeyInterface:
        """The private key in pyhpke's key interface (built once: X-Wing expands its seed)."""
        return self._hpke_key

    def private_bytes(self) -> bytes:
        key = self.private_key
        if isinstance(key, XWingPrivateKey):
            return key.seed_bytes()
        return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def public_bytes(self) -> bytes:
        key = self.private_key
        if isinstance(key, XWingPrivateKey):
            return key.public_key().public_bytes()
        return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(key_id={self.key_id}, kem=0x{self.kem_id:04x}, public={self.public_bytes()[:32].hex()}...)"


#: Key ids one generation takes: ``2g`` for X25519 and ``2g + 1`` for X-Wing (modulo 256).
KEY_IDS_PER_GENERATION = 2


def key_ids_for(generation: int) -> tuple[int, int]:
    """The one-byte key ids (RFC 9458) of rotation generation ``generation``: X25519, X-Wing.
    They wrap around after 128 generations; a coordinator keeps only a few alive at once."""
    if generation < 0:
        raise ValueError("generation numbers start at 0")
    first = (KEY_IDS_PER_GENERATION * generation) % 256
    return first, first + 1


def new_generation(generation: int) -> list[KeyPair]:
    """Every key pair of one rotation generation, the single place OHTTP keys are generated:
    X25519 then X-Wing (the order they are served in), under :func:`key_ids_for`. The coordinator's
    first keys and every rotation come from here, so each generation offers both configurations."""
    classical, post_quantum = key_ids_for(generation)
    return [KeyPair.generate(classical), KeyPair.generate(post_quantum, kem_id=KEM_XWING)]


class KeyStore:
    """The gateway's key pairs by key id (several during rotation)."""

    def __init__(self, pairs: Iterable[KeyPair] = ()) -> None:
        self._pairs: dict[int, KeyPair] = {}
        for pair in pairs:
            self.add(pair)

    def add(self, pair: KeyPair) -> None:
        if pair.key_id in self._pairs:
            raise ValueError(f"key id {pair.key_id} is already in the store")
        self._pairs[pair.key_id] = pair

    def remove(self, key_id: int) -> None:
        self._pairs.pop(key_id, None)

    def get(self, key_id: int) -> KeyPair:
        try:
            return self._pairs[key_id]
        except KeyError:
            raise ProtocolError("ohttp.unknown_key_id", f"no key with id {key_id}") from None

    def configs(self) -> list[KeyConfig]:
        return [p.config for p in self._pairs.values()]

    def encode_configs(self) -> bytes:
        """The ``application/ohttp-keys`` body the gateway serves."""
        return encode_key_config_list(self.configs())

    def __len__(self) -> int:
        return len(self._pairs)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._pairs
