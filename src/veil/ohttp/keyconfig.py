"""OHTTP key configurations (RFC 9458 §3) and the gateway's key pairs.

A client encrypts to exactly the key configuration it verified in the attestation, so decoding is
strict: any stray byte, odd length or unknown algorithm is refused rather than guessed around.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Iterable

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from veil.errors import ParseError, ProtocolError

KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003

#: Public key length per KEM (Npk); only X25519 is implemented today.
KEM_PUBLIC_KEY_LEN = {KEM_X25519_SHA256: 32}
#: Encapsulated key length per KEM (Nenc).
KEM_ENC_LEN = {KEM_X25519_SHA256: 32}
SUPPORTED_KDFS = frozenset({KDF_HKDF_SHA256})
#: AEAD id -> (key length Nk, nonce length Nn).
AEAD_PARAMS = {AEAD_AES_128_GCM: (16, 12), AEAD_AES_256_GCM: (32, 12), AEAD_CHACHA20_POLY1305: (32, 12)}


@dataclass(frozen=True)
class SymmetricSuite:
    """One (KDF, AEAD) pair that a key configuration accepts."""

    kdf_id: int
    aead_id: int

    @property
    def supported(self) -> bool:
        return self.kdf_id in SUPPORTED_KDFS and self.aead_id in AEAD_PARAMS


DEFAULT_SUITE = SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_256_GCM)
DEFAULT_SUITES: tuple[SymmetricSuite, ...] = (
    DEFAULT_SUITE,
    SymmetricSuite(KDF_HKDF_SHA256, AEAD_AES_128_GCM),
    SymmetricSuite(KDF_HKDF_SHA256, AEAD_CHACHA20_POLY1305),
)


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

    def preferring(self, suite: SymmetricSuite) -> KeyConfig:
        """The same key with ``suite`` listed first, for clients that always take the first entry
        (ohttpy does, and lacks AES-256-GCM). The gateway accepts every suite its key pair lists."""
        if suite not in self.suites:
            raise ProtocolError("ohttp.unsupported_suite", "the key configuration does not list that suite")
        return KeyConfig(self.key_id, self.kem_id, self.public_key, (suite, *(s for s in self.suites if s != suite)))

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
    suites = tuple(
        SymmetricSuite(*struct.unpack_from("!HH", data, pos + i)) for i in range(0, alg_len, 4)
    )
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


@dataclass
class KeyPair:
    """A gateway key: the X25519 private key behind one key configuration."""

    key_id: int
    private_key: X25519PrivateKey
    suites: tuple[SymmetricSuite, ...] = DEFAULT_SUITES
    config: KeyConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = KeyConfig(self.key_id, KEM_X25519_SHA256, self.public_bytes(), tuple(self.suites))

    @classmethod
    def generate(cls, key_id: int, suites: Iterable[SymmetricSuite] = DEFAULT_SUITES) -> KeyPair:
        return cls(key_id, X25519PrivateKey.generate(), tuple(suites))

    @classmethod
    def from_private_bytes(
        cls, key_id: int, raw: bytes, suites: Iterable[SymmetricSuite] = DEFAULT_SUITES
    ) -> KeyPair:
        """Rebuild a key shipped (sealed) from the coordinator to a worker."""
        if len(raw) != 32:
            raise ParseError("ohttp.bad_private_key", "an X25519 private key is 32 bytes")
        return cls(key_id, X25519PrivateKey.from_private_bytes(raw), tuple(suites))

    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def __repr__(self) -> str:  # never print the private key
        return f"KeyPair(key_id={self.key_id}, public={self.public_bytes().hex()})"


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
