"""Chunked OHTTP (draft-ietf-ohai-chunked-ohttp-08) and the ohttpy variant: the draft's worked
example byte for byte, streaming, both KEMs, and attacks."""

from __future__ import annotations

import pytest

from veil.errors import ParseError, ProtocolError
from veil.ohttp.bhttp import encode_varint
from veil.ohttp.chunked import (
    ChunkedRequestReceiver,
    ChunkedRequestSender,
    ChunkedResponseReceiver,
    decapsulate_chunked_request,
)
from veil.ohttp.compat import CompatResponseReceiver, CompatResponseSender, decode_leb128, encode_leb128
from veil.ohttp.keyconfig import KEM_XWING, KeyPair, KeyStore, SymmetricSuite
from veil.ohttp.ohttp import decapsulate_request, encapsulate_request


# draft-ietf-ohai-chunked-ohttp-08, Appendix A ("Example"), used as data.
D08_SKR = bytes.fromhex("1c190d72acdbe4dbc69e680503bb781a932c70a12c8f3754434c67d8640d8698")
D08_CONFIG = bytes.fromhex("010020668eb21aace159803974a4c67f08b4152d29bed10735fd08f98ccdd6fe09570800080001000100010003")
D08_REQUEST = bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f")
D08_SKE = bytes.fromhex("b26d565f3f875ed480d1abced3d665159650c99174fd0b124ac4bda0c64ae324")
D08_ENC_REQUEST = bytes.fromhex(
    "01002000010001"
    "8811eb457e100811c40a0aa71340a1b81d804bb986f736f2f566a7199761a032"
    "1c2ad24942d4d692563012f2980c8fef437a336b9b2fc938ef77a5834f"
    "1d2e33d8fd25577afe31bd1c79d094f76b6250ae6549b473ecd950501311"
    "001c6c1395d0ef7c1022297966307b8a7f"
)
D08_RESPONSE = bytes.fromhex("0140c8")
D08_RESPONSE_NONCE = bytes.fromhex("bcce7f4cb921309ba5d62edf1769ef09")
D08_ENC_RESPONSE = bytes.fromhex(
    "bcce7f4cb921309ba5d62edf1769ef09"
    "1179bf1cc87fa0e2c02de4546945aa3d1e48"
    "12b348b5bd4c594c16b6170b07b475845d1f32"
    "00ed9d8a796617a5b27265f4d73247f639"
)


def test_draft_08_worked_example_byte_for_byte() -> None:
    pair = KeyPair.from_private_bytes(1, D08_SKR, [SymmetricSuite(1, 1), SymmetricSuite(1, 3)])
    assert pair.config.encode() == D08_CONFIG
    tx = ChunkedRequestSender(pair.config, ephemeral_private_key=D08_SKE)
    # 12 bytes, the remaining 13, then an empty final chunk (AAD "final").
    wire = tx.header + tx.seal_chunk(D08_REQUEST[:12]) + tx.seal_chunk(D08_REQUEST[12:]) + tx.seal_final(b"")
    assert wire == D08_ENC_REQUEST

    rx = ChunkedRequestReceiver(KeyStore([pair]))
    parts = rx.feed(D08_ENC_REQUEST)
    assert parts == [D08_REQUEST[:12], D08_REQUEST[12:]] and rx.close() == b""
    sender = rx.response_sender(response_nonce=D08_RESPONSE_NONCE)
    assert sender._aead.key.hex() == "8209f78f2a1610d80c7125009b00aff0"
    assert sender._aead.nonce.hex() == "fead854635d2d5527d64f546"
    out = sender.seal_chunk(D08_RESPONSE[:1]) + sender.seal_chunk(D08_RESPONSE[1:]) + sender.seal_final(b"")
    assert out == D08_ENC_RESPONSE

    crx = tx.response_receiver()
    assert _feed_all(crx, D08_ENC_RESPONSE) == [D08_RESPONSE[:1], D08_RESPONSE[1:]] and crx.close() == b""


def test_empty_non_final_chunk_is_a_decryption_error() -> None:
    """Draft -08 §6 (a MUST since -07): only the final chunk may decrypt to nothing."""
    kp = KeyPair.generate(9)
    tx = ChunkedRequestSender(kp.config)
    assert tx.seal_chunk(b"") == b""  # our senders never emit one
    forged = tx.header + _frame_raw(tx._ctx.seal(b"", b"")) + tx.seal_final(b"x")
    rx = ChunkedRequestReceiver(KeyStore([kp]))
    with pytest.raises(ProtocolError) as e:
        rx.feed(forged)
    assert e.value.reason == "chunked.empty_chunk"

    tx, rx, _ = _exchange()
    rx.feed(tx.seal_final(b""))
    rx.close()
    sender = rx.response_sender()
    empty = sender.start() + _frame_raw(sender._aead.seal(b"", 0, b""))
    crx = tx.response_receiver()
    with pytest.raises(ProtocolError) as e:
        crx.feed(empty)
    assert e.value.reason == "chunked.empty_chunk"
    # The final chunk may be empty.
    sender = rx.response_sender()
    crx = tx.response_receiver()
    assert crx.feed(sender.seal_final(b"")) == [] and crx.close() == b""


def _frame_raw(ct: bytes) -> bytes:
    return encode_varint(len(ct)) + ct


@pytest.mark.parametrize("aead_id", [2, 3])
def test_xwing_chunked_exchange(aead_id: int) -> None:
    kp = KeyPair.generate(3, kem_id=KEM_XWING)
    tx = ChunkedRequestSender(kp.config, suite=SymmetricSuite(1, aead_id))
    assert len(tx.header) == 7 + 1120
    wire = tx.header + tx.seal_chunk(b"pq ") + tx.seal_final(b"request")
    rx = ChunkedRequestReceiver(KeyStore([kp]))
    got: list[bytes] = []
    for i in range(0, len(wire), 100):  # the 1120-byte encapsulated key arrives in pieces
        got += rx.feed(wire[i : i + 100])
    assert got + [rx.close()] == [b"pq ", b"request"]
    sender = rx.response_sender()
    crx = tx.response_receiver()
    assert _feed_all(crx, sender.start() + sender.seal_chunk(b"a") + sender.seal_final(b"b"), 7) == [b"a"]
    assert crx.close() == b"b"
    with pytest.raises(ValueError):  # X-Wing randomness comes from the OS, never from the caller
        ChunkedRequestSender(kp.config, ephemeral_private_key=bytes(32))


def _exchange(aead_id: int = 2) -> tuple[ChunkedRequestSender, ChunkedRequestReceiver, KeyStore]:
    kp = KeyPair.generate(9)
    store = KeyStore([kp])
    tx = ChunkedRequestSender(kp.config, suite=SymmetricSuite(1, aead_id))
    rx = ChunkedRequestReceiver(store)
    rx.feed(tx.header)
    return tx, rx, store


def _feed_all(rx: ChunkedResponseReceiver, wire: bytes, step: int = 1) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(wire), step):
        out += rx.feed(wire[i : i + step])
    return out


@pytest.mark.parametrize("aead_id", [1, 2, 3])
def test_both_directions_stream_byte_by_byte(aead_id: int) -> None:
    kp = KeyPair.generate(9)
    tx = ChunkedRequestSender(kp.config, suite=SymmetricSuite(1, aead_id))
    wire = tx.header + tx.seal_chunk(b"hello ") + tx.seal_chunk(b"") + tx.seal_chunk(b"world" * 30) + tx.seal_final(b"!")
    rx = ChunkedRequestReceiver(KeyStore([kp]))
    got: list[bytes] = []
    for i in range(len(wire)):
        got += rx.feed(wire[i : i + 1])
    got.append(rx.close())
    assert got == [b"hello ", b"world" * 30, b"!"]

    sender = rx.response_sender()
    resp = sender.start() + sender.seal_chunk(b"tok1") + sender.seal_chunk(b"tok2") + sender.seal_final(b"")
    crx = tx.response_receiver()
    assert _feed_all(crx, resp) == [b"tok1", b"tok2"]
    assert crx.close() == b""


def test_response_chunks_are_released_before_the_end() -> None:
    tx, rx, _ = _exchange()
    rx.feed(tx.seal_final(b"req"))
    rx.close()
    sender = rx.response_sender()
    crx = tx.response_receiver()
    assert crx.feed(sender.seal_chunk(b"first")) == [b"first"]
    assert crx.feed(sender.seal_chunk(b"second")) == [b"second"]


def test_fixed_nonce_and_key_are_deterministic() -> None:
    skE = bytes(range(32))
    kp = KeyPair.from_private_bytes(1, bytes(range(1, 33)))
    a = ChunkedRequestSender(kp.config, ephemeral_private_key=skE)
    b = ChunkedRequestSender(kp.config, ephemeral_private_key=skE)
    assert a.header == b.header and a.seal_final(b"x") == b.seal_final(b"x")
    body, rx = decapsulate_chunked_request(
        KeyStore([kp]), a.header + ChunkedRequestSender(kp.config, ephemeral_private_key=skE).seal_final(b"x")
    )
    assert body == b"x"
    nonce = b"\x07" * 16  # AES-128-GCM: max(Nk, Nn) = 16
    s1, s2 = rx.response_sender(response_nonce=nonce), rx.response_sender(response_nonce=nonce)
    assert s1.seal_chunk(b"t") == s2.seal_chunk(b"t")


def _response(n: int = 3) -> tuple[ChunkedRequestSender, list[bytes], bytes]:
    """A chunked response split into its framed records: [nonce, chunk0, chunk1, ..., final]."""
    tx, rx, _ = _exchange()
    rx.feed(tx.seal_final(b""))
    rx.close()
    s = rx.response_sender()
    records = [s.start()] + [s.seal_chunk(f"chunk{i}".encode()) for i in range(n)] + [s.seal_final(b"end")]
    return tx, records, b"".join(records)


def _reason(tx: ChunkedRequestSender, wire: bytes) -> str:
    crx = tx.response_receiver()
    with pytest.raises((ProtocolError, ParseError)) as e:
        crx.feed(wire)
        crx.close()
    return e.value.reason


def test_truncation_is_detected() -> None:
    tx, records, _ = _response()
    assert _reason(tx, b"".join(records[:-1])) == "chunked.truncated"  # final chunk dropped
    assert _reason(tx, records[0][:5]) == "chunked.truncated"  # cut inside the nonce
    # A non-final chunk relabelled as final (cut after it, then 0x00 added) is a final/non-final swap.
    forged = b"".join(records[:2]) + b"\x00" + records[2][1:]
    assert _reason(tx, forged) == "chunked.final_mismatch"


def test_reordering_is_detected() -> None:
    tx, records, _ = _response()
    swapped = records[0] + records[2] + records[1] + b"".join(records[3:])
    assert _reason(tx, swapped) == "chunked.reordered"
    dropped = records[0] + records[2] + b"".join(records[3:])
    assert _reason(tx, dropped) == "chunked.reordered"


def test_splicing_from_another_response_is_detected() -> None:
    tx, records, _ = _response()
    _, other, _ = _response()
    spliced = records[0] + other[1] + b"".join(records[2:])
    assert _reason(tx, spliced) == "chunked.decrypt_failed"


def test_tampering_anywhere_is_detected() -> None:
    tx, _, wire = _response(2)
    for i in range(32, len(wire)):  # after the nonce; a changed nonce is tampering too, tested below
        bad = bytearray(wire)
        bad[i] ^= 0x01
        crx = tx.response_receiver()
        with pytest.raises((ProtocolError, ParseError)):
            crx.feed(bytes(bad))
            crx.close()
    bad = bytearray(wire)
    bad[0] ^= 1
    assert _reason(tx, bytes(bad)) == "chunked.decrypt_failed"


def test_data_after_close_and_request_truncation() -> None:
    tx, rx, _ = _exchange()
    rx.feed(tx.seal_chunk(b"a"))
    with pytest.raises(ProtocolError) as e:
        rx.close()
    assert e.value.reason == "chunked.truncated"
    tx, rx, _ = _exchange()
    final = tx.seal_final(b"x")
    rx.feed(final[:-1] + bytes([final[-1] ^ 1]))
    with pytest.raises(ProtocolError) as e:
        rx.close()
    assert e.value.reason == "chunked.final_mismatch"


def test_request_errors() -> None:
    kp = KeyPair.generate(9)
    tx = ChunkedRequestSender(kp.config)
    with pytest.raises(ProtocolError) as e:
        ChunkedRequestReceiver(KeyStore([KeyPair.generate(1)])).feed(tx.header)
    assert e.value.reason == "ohttp.unknown_key_id"
    rx = ChunkedRequestReceiver(KeyStore([kp]), max_chunk=100)
    rx.feed(tx.header)
    with pytest.raises(ParseError) as e:
        rx.feed(encode_varint(5000))
    assert e.value.reason == "chunked.too_large"
    with pytest.raises(ParseError):
        ChunkedRequestReceiver(KeyStore([kp])).close()


def test_leb128() -> None:
    for value in (0, 1, 127, 128, 300, 1 << 20):
        assert decode_leb128(encode_leb128(value), 0) == (value, len(encode_leb128(value)))
    assert encode_leb128(300) == b"\xac\x02"
    assert decode_leb128(b"\x80", 0) is None


def test_ohttpy_variant_response_stream() -> None:
    kp = KeyPair.generate(1)
    enc, cctx = encapsulate_request(kp.config, b"req", suite=SymmetricSuite(1, 1))
    _, sctx = decapsulate_request(KeyStore([kp]), enc)
    tx = CompatResponseSender(sctx)
    wire = tx.start() + tx.seal_chunk(b"a" * 200) + tx.seal_chunk(b"b") + tx.seal_final(b"")
    rx = CompatResponseReceiver(cctx)
    got: list[bytes] = []
    for i in range(len(wire)):
        got += rx.feed(wire[i : i + 1])
    rx.close()
    assert got == [b"a" * 200, b"b", b""]
    rx = CompatResponseReceiver(cctx)
    rx.feed(wire[:-30])
    with pytest.raises(ProtocolError) as e:
        rx.close()
    assert e.value.reason == "chunked.truncated"
