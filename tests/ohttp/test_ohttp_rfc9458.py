"""RFC 9458 encapsulation: Appendix A byte for byte, every suite, and refusals with reason codes."""

from __future__ import annotations

import pytest

from veil.errors import ParseError, ProtocolError
from veil.ohttp.bhttp import decode_request, decode_response
from veil.ohttp.keyconfig import KeyConfig, KeyPair, KeyStore, SymmetricSuite
from veil.ohttp.ohttp import decapsulate_request, encapsulate_request

A = {
    "skR": "3c168975674b2fa8e465970b79c8dcf09f1c741626480bd4c6162fc5b6a98e1a",
    "config": "01002031e1f05a740102115220e9af918f738674aec95f54db6e04eb705aae8e79815500080001000100010003",
    "request": "00034745540568747470730b6578616d706c652e636f6d012f",
    "skE": "bc51d5e930bda26589890ac7032f70ad12e4ecb37abb1b65b1256c9c48999c73",
    "enc_request": "010020000100014b28f881333e7c164ffc499ad9796f877f4e1051ee6d31bad19dec96c208b472"
    "6374e469135906992e1268c594d2a10c695d858c40a026e7965e7d86b83dd440b2c0185204b4d63525",
    "response": "0140c8",
    "nonce": "c789e7151fcba46158ca84b04464910d",
    "aead_key": "5d0172a080e428b16d298c4ea0db620d",
    "aead_nonce": "f6bf1aeb88d6df87007fa263",
    "enc_response": "c789e7151fcba46158ca84b04464910d86f9013e404feea014e7be4a441f234f857fbd",
}
RFC_SUITES = (SymmetricSuite(1, 1), SymmetricSuite(1, 3))


@pytest.fixture
def rfc_store() -> KeyStore:
    return KeyStore([KeyPair.from_private_bytes(1, bytes.fromhex(A["skR"]), RFC_SUITES)])


def test_appendix_a_byte_for_byte(rfc_store: KeyStore) -> None:
    config = KeyConfig.decode(bytes.fromhex(A["config"]))
    request = bytes.fromhex(A["request"])
    enc_request, client_ctx = encapsulate_request(config, request, ephemeral_private_key=bytes.fromhex(A["skE"]))
    assert enc_request.hex() == A["enc_request"]

    plaintext, server_ctx = decapsulate_request(rfc_store, enc_request)
    assert plaintext == request
    assert decode_request(plaintext).authority == "example.com"

    aead = server_ctx.response_aead(bytes.fromhex(A["nonce"]))
    assert (aead.key.hex(), aead.nonce.hex()) == (A["aead_key"], A["aead_nonce"])
    enc_response = server_ctx.encapsulate_response(bytes.fromhex(A["response"]), response_nonce=bytes.fromhex(A["nonce"]))
    assert enc_response.hex() == A["enc_response"]
    assert decode_response(client_ctx.decapsulate_response(enc_response)).status == 200


def test_gateway_opens_the_published_request(rfc_store: KeyStore) -> None:
    plaintext, _ = decapsulate_request(rfc_store, bytes.fromhex(A["enc_request"]))
    assert plaintext.hex() == A["request"]


@pytest.mark.parametrize("aead_id", [1, 2, 3])
def test_each_suite_round_trips(aead_id: int) -> None:
    kp = KeyPair.generate(5)
    suite = SymmetricSuite(1, aead_id)
    enc, cctx = encapsulate_request(kp.config, b"ping", suite=suite)
    assert enc[5:7] == aead_id.to_bytes(2, "big")
    pt, sctx = decapsulate_request(KeyStore([kp]), enc)
    assert pt == b"ping"
    assert cctx.decapsulate_response(sctx.encapsulate_response(b"pong")) == b"pong"


def test_unknown_key_id() -> None:
    kp = KeyPair.generate(5)
    enc, _ = encapsulate_request(kp.config, b"x")
    with pytest.raises(ProtocolError) as e:
        decapsulate_request(KeyStore([KeyPair.generate(6)]), enc)
    assert e.value.reason == "ohttp.unknown_key_id"


def test_every_tampered_byte_is_refused() -> None:
    kp = KeyPair.generate(5)
    store = KeyStore([kp])
    enc, cctx = encapsulate_request(kp.config, b"secret prompt")
    for i in range(1, len(enc)):  # byte 0 is the key id: that gives unknown_key_id instead
        bad = bytearray(enc)
        bad[i] ^= 0x01
        with pytest.raises((ProtocolError, ParseError)) as e:
            decapsulate_request(store, bytes(bad))
        assert e.value.reason in ("ohttp.decrypt_failed", "ohttp.unsupported_suite"), i
        if i >= 7:
            assert e.value.reason == "ohttp.decrypt_failed"
    _, sctx = decapsulate_request(store, enc)
    resp = sctx.encapsulate_response(b"answer")
    for i in range(len(resp)):
        bad = bytearray(resp)
        bad[i] ^= 0x80
        with pytest.raises(ProtocolError) as e:
            cctx.decapsulate_response(bytes(bad))
        assert e.value.reason == "ohttp.decrypt_failed"


@pytest.mark.parametrize("cut", [0, 4, 24, 42])
def test_truncated_requests(cut: int) -> None:
    kp = KeyPair.generate(5)
    enc, _ = encapsulate_request(kp.config, b"x")
    with pytest.raises(ParseError) as e:
        decapsulate_request(KeyStore([kp]), enc[:cut])
    assert e.value.reason == "ohttp.truncated"


def test_truncated_response_and_unlisted_suite() -> None:
    kp = KeyPair.generate(5, [SymmetricSuite(1, 2)])
    enc, cctx = encapsulate_request(kp.config, b"x")
    with pytest.raises(ParseError):
        cctx.decapsulate_response(b"\x00" * 20)
    bad = bytearray(enc)
    bad[5:7] = b"\x00\x01"  # AES-128-GCM, not listed by this key
    with pytest.raises(ProtocolError) as e:
        decapsulate_request(KeyStore([kp]), bytes(bad))
    assert e.value.reason == "ohttp.unsupported_suite"
