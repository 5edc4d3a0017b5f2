"""HPKE sealing of released secrets: only the attested key opens them, and only for their purpose."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil import keyrelease, wire
from veil.errors import ProtocolError


def test_round_trip() -> None:
    key = X25519PrivateKey.generate()
    blob = keyrelease.seal(keyrelease.public_bytes(key), b"secret", wire.WORKER_SECRETS_INFO, aad=b"n")
    assert keyrelease.open_sealed(key, blob, wire.WORKER_SECRETS_INFO, aad=b"n") == b"secret"


@pytest.mark.parametrize("mutation", ["wrong_key", "wrong_info", "wrong_aad", "flip", "truncate"])
def test_refusals(mutation: str) -> None:
    key = X25519PrivateKey.generate()
    info, aad = wire.WORKER_SECRETS_INFO, b"nonce"
    blob = keyrelease.seal(keyrelease.public_bytes(key), b"secret", info, aad=aad)
    if mutation == "wrong_key":
        key = X25519PrivateKey.generate()
    elif mutation == "wrong_info":
        info = wire.ADMIN_SECRET_INFO
    elif mutation == "wrong_aad":
        aad = b"other nonce"
    elif mutation == "flip":
        blob = blob[:-1] + bytes([blob[-1] ^ 1])
    else:
        blob = blob[:40]
    with pytest.raises(ProtocolError):
        keyrelease.open_sealed(key, blob, info, aad=aad)


def test_bad_public_key() -> None:
    with pytest.raises(ProtocolError):
        keyrelease.seal(b"short", b"x", wire.WORKER_SECRETS_INFO)
