"""Chunked OHTTP (draft-ietf-ohai-chunked-ohttp) and the ohttpy variant: streaming and attacks."""

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
from veil.ohttp.keyconfig import KeyPair, KeyStore, SymmetricSuite
from veil.ohttp.ohttp import decapsulate_request, encapsulate_request


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
    body, rx = decapsulate_chunked_request(KeyStore([kp]), a.header + ChunkedRequestSender(kp.config, ephemeral_private_key=skE).seal_final(b"x"))
    assert body == b"x"
    nonce = b"\x07" * 32
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
