"""HPKE single-shot sealing of secrets to an attested X25519 public key (RFC 9180, base mode).

The coordinator releases secrets (OHTTP private keys, model data keys) only encrypted to the key a
worker bound into its evidence; admins upload data keys encrypted to the attested coordinator key.
Wire form: enc (32 bytes) ‖ ciphertext. ``info`` separates the uses so a blob made for one purpose
never opens as another.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

from typing import TYPE_CHECKING

from veil.errors import ProtocolError, VeilError
from veil.wire import SECRET_UPLOAD_CONTEXT

if TYPE_CHECKING:
    from veil.ohttp.keyconfig import KeyStore

SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)
ENC_LEN = 32


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def seal(recipient_public: bytes, plaintext: bytes, info: bytes, aad: bytes = b"") -> bytes:
    """Encrypt ``plaintext`` so that only the holder of the matching private key can read it."""
    try:
        pkr = KEMKey.from_pyca_cryptography_key(X25519PublicKey.from_public_bytes(recipient_public))
    except ValueError:
        raise ProtocolError("keyrelease.bad_public_key", "recipient key is not an X25519 key") from None
    enc, ctx = SUITE.create_sender_context(pkr, info)
    return enc + ctx.seal(plaintext, aad)


def open_sealed(private_key: X25519PrivateKey, blob: bytes, info: bytes, aad: bytes = b"") -> bytes:
    """Decrypt a blob from :func:`seal`; any tampering or a wrong key raises ProtocolError."""
    if len(blob) < ENC_LEN + 16:
        raise ProtocolError("keyrelease.truncated", "sealed blob is too short")
    try:
        skr = KEMKey.from_pyca_cryptography_key(private_key)
        ctx = SUITE.create_recipient_context(blob[:ENC_LEN], skr, info)
        return ctx.open(blob[ENC_LEN:], aad)
    except Exception:  # pyhpke raises several types; all mean the same to us
        raise ProtocolError("keyrelease.open_failed", "sealed blob does not open with this key") from None


def export_ohttp_keys(store: "KeyStore") -> list[dict[str, object]]:
    """OHTTP key pairs as JSON-ready records, only ever placed inside a sealed blob."""
    return [
        {"key_id": c.key_id, "config": c.encode().hex(), "private_key": store.get(c.key_id).private_bytes().hex()}
        for c in store.configs()
    ]


def import_ohttp_keys(records: list[dict[str, object]]) -> "KeyStore":
    """Rebuild a worker's KeyStore from released records; the config must match the private key."""
    from veil.ohttp.keyconfig import KeyConfig, KeyPair, KeyStore

    pairs = []
    for rec in records:
        try:
            config = KeyConfig.decode(bytes.fromhex(str(rec["config"])))
            pair = KeyPair.from_private_bytes(
                int(str(rec["key_id"])), bytes.fromhex(str(rec["private_key"])), config.suites, kem_id=config.kem_id
            )
        except (KeyError, ValueError, TypeError, VeilError):
            raise ProtocolError("keyrelease.bad_ohttp_key", "released OHTTP key record is malformed") from None
        if pair.config != config:
            raise ProtocolError("keyrelease.bad_ohttp_key", "released OHTTP key does not match its configuration")
        pairs.append(pair)
    return KeyStore(pairs)


def secret_upload_message(key_id: str, sealed: bytes) -> bytes:
    """What an admin signs to upload a secret: binds the key id to exactly this ciphertext."""
    import hashlib

    kid = key_id.encode()
    return SECRET_UPLOAD_CONTEXT + len(kid).to_bytes(2, "big") + kid + hashlib.sha256(sealed).digest()
