"""X-Wing (MLKEM768-X25519, KEM 0x647a): the published draft-ietf-hpke-pq vectors, then OHTTP with it.

The vectors are data from hpkewg/hpke-pq (commit 74dafaa, test-vectors.json), read from
../shared/vectors/hpke-pq/; see its README. Two sets use KEM 0x647a: one with HKDF-SHA256 and
ChaCha20-Poly1305 (checked end to end: DeriveKeyPair, decapsulation, key schedule, every encryption
and export), one with the single-stage SHAKE256 KDF, which Veil does not offer (checked up to the
KEM's shared secret, which does not depend on the KDF).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyhpke import AEADId, KDFId
from pyhpke.consts import Mode

from veil.errors import ParseError, ProtocolError
from veil.ohttp import xwing
from veil.ohttp.keyconfig import KEM_X25519_SHA256, KEM_XWING, KeyConfig, KeyPair, KeyStore, SymmetricSuite
from veil.ohttp.ohttp import HEADER_LEN, decapsulate_request, encapsulate_request


def _xwing_vectors(vectors: Path) -> list[dict[str, Any]]:
    sets = json.loads((vectors / "hpke-pq" / "test-vectors.json").read_text())
    found = [v for v in sets if v["kem_id"] == xwing.KEM_ID]
    assert len(found) == 2
    return found


def _b(vector: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(vector[name])


def test_vectors_derive_keys_and_decapsulate(vectors: Path) -> None:
    for v in _xwing_vectors(vectors):
        assert xwing.derive_seed(_b(v, "ikmR")) == _b(v, "skRm")
        pair = xwing.XWingKEM().derive_key_pair(_b(v, "ikmR"))
        assert pair.private_key.to_private_bytes() == _b(v, "skRm")
        sk = xwing.XWingPrivateKey(_b(v, "skRm"))
        assert sk.public_key().public_bytes() == _b(v, "pkRm")
        assert len(_b(v, "pkRm")) == xwing.PUBLIC_KEY_LEN and len(_b(v, "enc")) == xwing.ENC_LEN
        assert sk.decapsulate(_b(v, "enc")) == _b(v, "shared_secret")


def test_vector_key_schedule_encryptions_and_exports(vectors: Path) -> None:
    (v,) = [v for v in _xwing_vectors(vectors) if v["kdf_id"] == KDFId.HKDF_SHA256.value]
    assert v["mode"] == 0 and v["aead_id"] == AEADId.CHACHA20_POLY1305.value
    suite = xwing.cipher_suite(v["kdf_id"], v["aead_id"])
    skr = suite.kem.deserialize_private_key(_b(v, "skRm"))
    assert suite.kem.decap(_b(v, "enc"), skr) == _b(v, "shared_secret")
    _, params = suite._key_schedule(Mode.BASE, _b(v, "shared_secret"), _b(v, "info"), b"", b"")
    assert params.key == _b(v, "key") and params.base_nonce == _b(v, "base_nonce")
    assert params.exporter_secret == _b(v, "exporter_secret")

    ctx = suite.create_recipient_context(_b(v, "enc"), skr, _b(v, "info"))
    for enc in v["encryptions"]:
        assert ctx.open(bytes.fromhex(enc["ct"]), bytes.fromhex(enc["aad"])) == bytes.fromhex(enc["pt"])
    for exp in v["exports"]:
        assert ctx.export(bytes.fromhex(exp["exporter_context"]), exp["L"]) == bytes.fromhex(exp["exported_value"])


def test_our_encapsulation_opens_with_the_vector_key(vectors: Path) -> None:
    (v,) = [v for v in _xwing_vectors(vectors) if v["kdf_id"] == KDFId.HKDF_SHA256.value]
    suite = xwing.cipher_suite(v["kdf_id"], v["aead_id"])
    enc, sender = suite.create_sender_context(suite.kem.deserialize_public_key(_b(v, "pkRm")), b"info")
    recipient = suite.create_recipient_context(enc, suite.kem.deserialize_private_key(_b(v, "skRm")), b"info")
    assert recipient.open(sender.seal(b"post-quantum", b"aad"), b"aad") == b"post-quantum"
    assert sender.export(b"ctx", 32) == recipient.export(b"ctx", 32)


@pytest.mark.parametrize("aead_id", [2, 3])
def test_ohttp_round_trip_with_xwing(aead_id: int) -> None:
    pair = KeyPair.generate(5, kem_id=KEM_XWING)
    enc, cctx = encapsulate_request(pair.config, b"inner request", suite=SymmetricSuite(1, aead_id))
    assert len(enc) == HEADER_LEN + xwing.ENC_LEN + len(b"inner request") + 16
    assert enc[:HEADER_LEN] == bytes([5]) + KEM_XWING.to_bytes(2, "big") + b"\x00\x01" + aead_id.to_bytes(2, "big")
    plain, sctx = decapsulate_request(KeyStore([pair]), enc)
    assert plain == b"inner request"
    assert cctx.decapsulate_response(sctx.encapsulate_response(b"answer")) == b"answer"


def _refusal(store: KeyStore, data: bytes) -> str:
    with pytest.raises((ProtocolError, ParseError)) as e:
        decapsulate_request(store, data)
    return e.value.reason


def test_tampered_truncated_and_misdirected_requests_are_refused() -> None:
    pair = KeyPair.generate(5, kem_id=KEM_XWING)
    store = KeyStore([pair])
    enc, _ = encapsulate_request(pair.config, b"x" * 40)
    # a flipped bit in the ML-KEM ciphertext, the X25519 share, or the AEAD ciphertext
    for pos in (HEADER_LEN, HEADER_LEN + 500, HEADER_LEN + 1087, HEADER_LEN + 1088, HEADER_LEN + 1119, len(enc) - 1):
        bad = bytearray(enc)
        bad[pos] ^= 0x01
        assert _refusal(store, bytes(bad)) == "ohttp.decrypt_failed", pos
    assert _refusal(store, enc[: HEADER_LEN + 1000]) == "ohttp.truncated"
    # the same key id under another X-Wing key: the ciphertext was not for this gateway
    other = KeyStore([KeyPair.generate(5, kem_id=KEM_XWING)])
    assert _refusal(other, enc) == "ohttp.decrypt_failed"
    # an X-Wing header sent to an X25519 key id
    classical = KeyStore([KeyPair.generate(5, kem_id=KEM_X25519_SHA256)])
    assert _refusal(classical, enc) == "ohttp.unsupported_suite"


def test_invalid_public_key_is_refused_before_encrypting() -> None:
    pair = KeyPair.generate(5, kem_id=KEM_XWING)
    # ML-KEM coefficients of 0xfff exceed the modulus q = 3329: FIPS 203's encapsulation key check fails.
    bad = KeyConfig(5, KEM_XWING, b"\xff" * 1184 + pair.config.public_key[1184:], pair.config.suites)
    with pytest.raises(ProtocolError) as e:
        encapsulate_request(bad, b"x")
    assert e.value.reason == "ohttp.bad_key_config"
    with pytest.raises(ParseError):
        KeyConfig.decode(pair.config.encode()[:-5])
