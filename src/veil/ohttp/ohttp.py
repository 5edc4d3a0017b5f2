"""Oblivious HTTP request/response encapsulation (RFC 9458 §4), on pyhpke and ``cryptography``.

Two KEMs: X25519 (pyhpke's own) and X-Wing (``veil.ohttp.xwing``, plugged into pyhpke). The
X25519 ephemeral key and the response nonce can be injected so the RFC's Appendix A vectors
reproduce byte for byte; production code leaves them to the CSPRNG.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.exceptions import InvalidTag
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey, KEMKeyInterface, KEMKeyPair, OpenError
from pyhpke.context_interface import ContextInterface

from veil.errors import ParseError, ProtocolError
from veil.ohttp import xwing
from veil.ohttp.keyconfig import AEAD_AES_128_GCM, AEAD_AES_256_GCM, AEAD_CHACHA20_POLY1305, AEAD_PARAMS, KDF_HKDF_SHA256
from veil.ohttp.keyconfig import KEM_ENC_LEN, KEM_XWING, KeyConfig, KeyStore, SymmetricSuite
from veil.wire import LABEL_REQUEST, LABEL_RESPONSE

HEADER_LEN = 7  # key id (1) + KEM, KDF, AEAD ids (2 each)

_AEAD_CLASSES: dict[int, type[AESGCM] | type[ChaCha20Poly1305]] = {
    AEAD_AES_128_GCM: AESGCM,
    AEAD_AES_256_GCM: AESGCM,
    AEAD_CHACHA20_POLY1305: ChaCha20Poly1305,
}


@lru_cache(maxsize=None)
def _cipher_suite(kem_id: int, kdf_id: int, aead_id: int) -> CipherSuite:
    if kem_id == KEM_XWING:
        return xwing.cipher_suite(kdf_id, aead_id)
    return CipherSuite.new(KEMId(kem_id), KDFId(kdf_id), AEADId(aead_id))


def _suite(kem_id: int, suite: SymmetricSuite) -> CipherSuite:
    return _cipher_suite(kem_id, suite.kdf_id, suite.aead_id)


@lru_cache(maxsize=64)
def _public_key(kem_id: int, raw: bytes) -> KEMKeyInterface:
    """Parsed once per configuration: checking an ML-KEM key costs more than using it."""
    try:
        return _cipher_suite(kem_id, KDF_HKDF_SHA256, AEAD_AES_256_GCM).kem.deserialize_public_key(raw)
    except ValueError:  # e.g. an ML-KEM key that fails the FIPS 203 modulus check
        raise ProtocolError("ohttp.bad_key_config", "the public key is not a valid key for its KEM") from None


def request_header(key_id: int, kem_id: int, suite: SymmetricSuite) -> bytes:
    return struct.pack("!BHHH", key_id, kem_id, suite.kdf_id, suite.aead_id)


def request_info(label: bytes, header: bytes) -> bytes:
    """HPKE info = label || 0x00 || header (RFC 9458 §4.3)."""
    return label + b"\x00" + header


@dataclass
class _Sender:
    header: bytes
    enc: bytes
    context: ContextInterface
    suite: SymmetricSuite


def setup_sender(
    config: KeyConfig,
    label: bytes,
    *,
    suite: SymmetricSuite | None = None,
    ephemeral_private_key: bytes | None = None,
) -> _Sender:
    """HPKE SetupBaseS towards ``config``; ``ephemeral_private_key`` is for X25519 test vectors only."""
    chosen = config.select_suite(suite)
    header = request_header(config.key_id, config.kem_id, chosen)
    cs = _suite(config.kem_id, chosen)
    pkr = _public_key(config.kem_id, config.public_key)
    eks = None
    if ephemeral_private_key is not None:
        if config.kem_id == KEM_XWING:
            raise ValueError("X-Wing encapsulation randomness cannot be injected")
        sk = X25519PrivateKey.from_private_bytes(ephemeral_private_key)
        eks = KEMKeyPair(KEMKey.from_pyca_cryptography_key(sk), KEMKey.from_pyca_cryptography_key(sk.public_key()))
    enc, ctx = cs.create_sender_context(pkr, request_info(label, header), eks=eks)
    return _Sender(header, enc, ctx, chosen)


@dataclass
class _Recipient:
    key_id: int
    enc: bytes
    context: ContextInterface
    suite: SymmetricSuite
    body_offset: int


def parse_header(data: bytes) -> tuple[int, int, SymmetricSuite]:
    if len(data) < HEADER_LEN:
        raise ParseError("ohttp.truncated", "encapsulated request header is truncated")
    key_id, kem_id, kdf_id, aead_id = struct.unpack_from("!BHHH", data, 0)
    return key_id, kem_id, SymmetricSuite(kdf_id, aead_id)


def setup_recipient(keys: KeyStore, data: bytes, label: bytes) -> _Recipient:
    """Read header + enc and run HPKE SetupBaseR with the matching gateway key."""
    key_id, kem_id, suite = parse_header(data)
    pair = keys.get(key_id)
    if kem_id != pair.config.kem_id or not pair.config.accepts(suite):
        raise ProtocolError("ohttp.unsupported_suite", "the key configuration does not accept that suite")
    nenc = KEM_ENC_LEN[kem_id]
    if len(data) < HEADER_LEN + nenc:
        raise ParseError("ohttp.truncated", "encapsulated key is truncated")
    enc = bytes(data[HEADER_LEN : HEADER_LEN + nenc])
    cs = _suite(kem_id, suite)
    try:
        ctx = cs.create_recipient_context(enc, pair.hpke_key(), request_info(label, bytes(data[:HEADER_LEN])))
    except Exception as exc:  # a low-order point and the like
        raise ProtocolError("ohttp.decrypt_failed", "HPKE setup failed") from exc
    return _Recipient(key_id, enc, ctx, suite, HEADER_LEN + nenc)


def response_nonce_len(suite: SymmetricSuite) -> int:
    nk, nn = AEAD_PARAMS[suite.aead_id]
    return max(nk, nn)


class ResponseAead:
    """The response AEAD key and base nonce (RFC 9458 §4.4), with per-sequence nonces for chunking."""

    def __init__(self, context: ContextInterface, enc: bytes, response_nonce: bytes, suite: SymmetricSuite, label: bytes) -> None:
        nk, nn = AEAD_PARAMS[suite.aead_id]
        secret = context.export(label, max(nk, nn))
        h = hmac.HMAC(enc + response_nonce, hashes.SHA256())  # HKDF-Extract(salt, IKM)
        h.update(secret)
        prk = h.finalize()
        self.key = HKDFExpand(hashes.SHA256(), nk, b"key").derive(prk)
        self.nonce = HKDFExpand(hashes.SHA256(), nn, b"nonce").derive(prk)
        self._aead = _AEAD_CLASSES[suite.aead_id](self.key)
        self._base = int.from_bytes(self.nonce, "big")  # nonce XOR seq as one integer operation
        self._nn = len(self.nonce)

    def _nonce(self, seq: int) -> bytes:
        return (self._base ^ seq).to_bytes(self._nn, "big")  # OverflowError past the nonce's width

    def seal(self, plaintext: bytes, seq: int = 0, aad: bytes = b"") -> bytes:
        return self._aead.encrypt(self._nonce(seq), plaintext, aad)

    def open(self, ciphertext: bytes, seq: int = 0, aad: bytes = b"") -> bytes:
        """Raises :class:`InvalidTag` on failure; callers map it to their reason code."""
        return self._aead.decrypt(self._nonce(seq), ciphertext, aad)


# -- client side ------------------------------------------------------------------------------


class ClientResponseContext:
    """What a client keeps after sending, to open the gateway's answer."""

    def __init__(self, context: ContextInterface, enc: bytes, suite: SymmetricSuite) -> None:
        self._context = context
        self._enc = enc
        self.suite = suite

    def response_aead(self, response_nonce: bytes, label: bytes = LABEL_RESPONSE) -> ResponseAead:
        return ResponseAead(self._context, self._enc, response_nonce, self.suite, label)

    def decapsulate_response(self, enc_response: bytes) -> bytes:
        n = response_nonce_len(self.suite)
        if len(enc_response) < n + 16:
            raise ParseError("ohttp.truncated", "encapsulated response is truncated")
        aead = self.response_aead(bytes(enc_response[:n]))
        try:
            return aead.open(bytes(enc_response[n:]))
        except InvalidTag:
            raise ProtocolError("ohttp.decrypt_failed", "response failed authentication") from None


def encapsulate_request(
    config: KeyConfig,
    bhttp_request: bytes,
    *,
    suite: SymmetricSuite | None = None,
    ephemeral_private_key: bytes | None = None,
) -> tuple[bytes, ClientResponseContext]:
    """Encrypt a Binary HTTP request to ``config``: hdr || enc || ct (``message/ohttp-req``)."""
    s = setup_sender(config, LABEL_REQUEST, suite=suite, ephemeral_private_key=ephemeral_private_key)
    ct = s.context.seal(bhttp_request, b"")
    return s.header + s.enc + ct, ClientResponseContext(s.context, s.enc, s.suite)


# -- gateway side -----------------------------------------------------------------------------


class ServerResponseContext:
    """What the gateway keeps after opening a request, to encrypt the answer to that client only."""

    def __init__(self, context: ContextInterface, enc: bytes, suite: SymmetricSuite, key_id: int) -> None:
        self._context = context
        self._enc = enc
        self.suite = suite
        self.key_id = key_id

    def response_aead(self, response_nonce: bytes, label: bytes = LABEL_RESPONSE) -> ResponseAead:
        return ResponseAead(self._context, self._enc, response_nonce, self.suite, label)

    def new_nonce(self, response_nonce: bytes | None = None) -> bytes:
        n = response_nonce_len(self.suite)
        nonce = os.urandom(n) if response_nonce is None else response_nonce
        if len(nonce) != n:
            raise ValueError(f"response nonce must be {n} bytes")
        return nonce

    def encapsulate_response(self, bhttp_response: bytes, *, response_nonce: bytes | None = None) -> bytes:
        """nonce || ct (``message/ohttp-res``); ``response_nonce`` is for test vectors only."""
        nonce = self.new_nonce(response_nonce)
        return nonce + self.response_aead(nonce).seal(bhttp_response)


def decapsulate_request(keys: KeyStore, enc_request: bytes) -> tuple[bytes, ServerResponseContext]:
    """Open a ``message/ohttp-req``; unknown key → ``ohttp.unknown_key_id``, tampering → ``ohttp.decrypt_failed``."""
    enc_request = bytes(enc_request)
    rec = setup_recipient(keys, enc_request, LABEL_REQUEST)
    ct = enc_request[rec.body_offset :]
    if len(ct) < 16:
        raise ParseError("ohttp.truncated", "encapsulated request has no room for an AEAD tag")
    try:
        plaintext = rec.context.open(ct, b"")
    except (OpenError, InvalidTag, ValueError):
        raise ProtocolError("ohttp.decrypt_failed", "request failed authentication") from None
    return plaintext, ServerResponseContext(rec.context, rec.enc, rec.suite, rec.key_id)
