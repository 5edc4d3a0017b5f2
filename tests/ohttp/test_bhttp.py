"""Binary HTTP (RFC 9292): the RFC's examples byte for byte, truncation, padding, limits, streaming."""

from __future__ import annotations

import pytest

from veil.errors import ParseError
from veil.ohttp import bhttp
from veil.ohttp.bhttp import (
    BodyChunk,
    InformationalResponse,
    Limits,
    Request,
    Response,
    ResponseHead,
    ResponseStreamDecoder,
    Trailers,
    decode_request,
    decode_response,
    decode_varint,
    encode_request,
    encode_response,
    encode_varint,
)

# RFC 9292 Figure 8: known-length GET /hello.txt.
FIG8 = bytes.fromhex(
    "0003474554056874747073000a2f68656c6c6f2e747874406c0a757365722d6167656e74346375726c2f372e31362e33"
    "206c69626375726c2f372e31362e33204f70656e53534c2f302e392e376c207a6c69622f312e322e3304686f73740f77"
    "77772e6578616d706c652e636f6d0f6163636570742d6c616e677561676506656e2c206d690000"
)
# Figure 9: the same request, indeterminate-length, with 10 bytes of padding.
FIG9 = bytes.fromhex(
    "0203474554056874747073000a2f68656c6c6f2e7478740a757365722d6167656e74346375726c2f372e31362e33206c"
    "69626375726c2f372e31362e33204f70656e53534c2f302e392e376c207a6c69622f312e322e3304686f73740f777777"
    "2e6578616d706c652e636f6d0f6163636570742d6c616e677561676506656e2c206d6900000000000000000000000000"
)
# Figure 11: indeterminate-length response with informational 102 and 103.
FIG11 = bytes.fromhex(
    "0340660772756e6e696e670a22736c65657020313522004067046c696e6b233c2f7374796c652e6373733e3b2072656c"
    "3d7072656c6f61643b2061733d7374796c65046c696e6b243c2f7363726970742e6a733e3b2072656c3d7072656c6f61"
    "643b2061733d7363726970740040c804646174651d4d6f6e2c203237204a756c20323030392031323a32383a35332047"
    "4d5406736572766572064170616368650d6c6173742d6d6f6469666965641d5765642c203232204a756c203230303920"
    "31393a31353a353620474d5404657461671422333461613338372d642d3135363865623030220d6163636570742d7261"
    "6e6765730562797465730e636f6e74656e742d6c656e67746802353104766172790f4163636570742d456e636f64696e"
    "670c636f6e74656e742d747970650a746578742f706c61696e003348656c6c6f20576f726c6421204d7920636f6e7465"
    "6e7420696e636c75646573206120747261696c696e672043524c462e0d0a0000"
)
# Figure 13: known-length response with a trailer.
FIG13 = bytes.fromhex("0140c8001d5468697320636f6e74656e7420636f6e7461696e732043524c462e0d0a0d07747261696c65720474657874")
HELLO_HEADERS = [
    ("user-agent", "curl/7.16.3 libcurl/7.16.3 OpenSSL/0.9.7l zlib/1.2.3"),
    ("host", "www.example.com"),
    ("accept-language", "en, mi"),
]
HELLO = Request("GET", "https", "", "/hello.txt", HELLO_HEADERS)


def test_varint_rfc9000_examples() -> None:
    for value, raw in [(494878333, "9d7f3e7d"), (15293, "7bbd"), (37, "25"), (151288809941952652, "c2197c5eff14e88c")]:
        assert encode_varint(value).hex() == raw
        assert decode_varint(bytes.fromhex(raw), 0) == (value, len(raw) // 2)
    assert decode_varint(bytes.fromhex("4025"), 0) == (37, 2)
    assert decode_varint(bytes.fromhex("7b"), 0) is None


def test_figure8_known_length_request() -> None:
    assert decode_request(FIG8) == HELLO
    assert encode_request(HELLO) == FIG8


def test_figure9_indeterminate_request_with_padding() -> None:
    assert decode_request(FIG9) == HELLO
    assert encode_request(HELLO, indeterminate=True, padding=10) == FIG9


def test_truncation_allowed_at_section_boundaries() -> None:
    assert decode_request(FIG8[:-2]) == HELLO
    assert decode_request(FIG9[:-12]) == HELLO
    # RFC 9458 Appendix A's request: control data only.
    req = decode_request(bytes.fromhex("00034745540568747470730b6578616d706c652e636f6d012f"))
    assert (req.method, req.scheme, req.authority, req.path, req.headers) == ("GET", "https", "example.com", "/", [])


def test_figure11_informational_responses() -> None:
    resp = decode_response(FIG11)
    assert [i.status for i in resp.informational] == [102, 103]
    assert resp.informational[0].headers == [("running", '"sleep 15"')]
    assert resp.informational[1].headers == [
        ("link", "</style.css>; rel=preload; as=style"),
        ("link", "</script.js>; rel=preload; as=script"),
    ]
    assert resp.status == 200
    assert ("content-type", "text/plain") in resp.headers and ("etag", '"34aa387-d-1568eb00"') in resp.headers
    assert resp.content == b"Hello World! My content includes a trailing CRLF.\r\n"
    assert encode_response(resp, indeterminate=True) == FIG11


def test_figure13_trailers() -> None:
    resp = decode_response(FIG13)
    assert resp == Response(200, [], b"This content contains CRLF.\r\n", [("trailer", "text")])
    assert encode_response(resp) == FIG13
    assert encode_response(Response(200)).hex() == "0140c8000000"
    assert decode_response(bytes.fromhex("0140c8")) == Response(200)


def test_round_trips_both_forms() -> None:
    resp = Response(
        201,
        [("content-type", "application/json")],
        b"x" * 70000,
        [("x-t", "1")],
        [InformationalResponse(100), InformationalResponse(103, [("link", "</a>")])],
    )
    for indeterminate in (False, True):
        assert decode_response(encode_response(resp, indeterminate=indeterminate, padding=5)) == resp
    req = Request("POST", "http", "engine", "/v1/chat/completions?x=1", [("a", "b")], b"{}", [("t", "v")])
    for indeterminate in (False, True):
        assert decode_request(encode_request(req, indeterminate=indeterminate)) == req


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bhttp.truncated"),
        (FIG8[:8], "bhttp.truncated"),
        (FIG8[:40], "bhttp.truncated"),
        (b"\x01" + FIG8[1:], "bhttp.bad_framing"),
        (b"\x05", "bhttp.bad_framing"),
        (FIG8 + b"\x00\x01", "bhttp.bad_padding"),
        (bytes.fromhex("000347455405687474707300012f3fffffff"), "bhttp.truncated"),
    ],
)
def test_malformed_requests(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as e:
        decode_request(data)
    assert e.value.reason == reason


def test_invalid_fields_and_status() -> None:
    def raw(fields: bytes) -> bytes:
        return b"\x00\x03GET\x05https\x00\x01/" + encode_varint(len(fields)) + fields + b"\x00\x00"

    for bad in (b"\x07:method\x04POST", b"\x06Accept\x03*/*", b"\x01x\x04a\r\nb"):
        with pytest.raises(ParseError) as e:
            decode_request(raw(bad))
        assert e.value.reason == "bhttp.invalid_field"
    with pytest.raises(ParseError) as e:
        decode_response(b"\x01\x40\x64\x00\x00\x00")  # 100 then end: truncated
    with pytest.raises(ParseError) as e:
        decode_response(bytes.fromhex("01") + encode_varint(700) + b"\x00\x00\x00")
    assert e.value.reason == "bhttp.bad_status"


def test_limits() -> None:
    many = encode_request(Request("GET", headers=[(f"x-{i}", "v") for i in range(20)]))
    with pytest.raises(ParseError) as e:
        decode_request(many, Limits(max_fields=10))
    assert e.value.reason == "bhttp.too_many_fields"
    long = encode_request(Request("GET", headers=[("x", "a" * 2000)]))
    with pytest.raises(ParseError) as e:
        decode_request(long, Limits(max_field_bytes=1000))
    assert e.value.reason == "bhttp.field_too_large"
    with pytest.raises(ParseError) as e:
        decode_request(long, Limits(max_section_bytes=1000))
    assert e.value.reason == "bhttp.section_too_large"
    big = encode_request(Request("POST", content=b"z" * 5000), indeterminate=True)
    with pytest.raises(ParseError) as e:
        decode_request(big, Limits(max_content_bytes=4096))
    assert e.value.reason == "bhttp.content_too_large"


def test_stream_decoder_byte_by_byte() -> None:
    wire = FIG11 + b"\x00\x00\x00"  # with padding
    dec = ResponseStreamDecoder()
    events: list[bhttp.Event] = []
    for i in range(len(wire)):
        events += dec.feed(wire[i : i + 1])
    dec.close()
    assert isinstance(events[0], ResponseHead) and events[0].status == 200
    assert [i.status for i in events[0].informational] == [102, 103]
    body = b"".join(e.data for e in events if isinstance(e, BodyChunk))
    assert body == b"Hello World! My content includes a trailing CRLF.\r\n"
    assert isinstance(events[-1], Trailers)


def test_stream_decoder_releases_chunks_as_they_complete() -> None:
    dec = ResponseStreamDecoder()
    head = bhttp.encode_response_head(200, [("content-type", "text/event-stream")])
    assert dec.feed(head) == [ResponseHead(200, [("content-type", "text/event-stream")], [])]
    assert dec.feed(bhttp.encode_content_chunk(b"tok1")) == [BodyChunk(b"tok1")]
    assert dec.feed(bhttp.encode_content_chunk(b"tok2")[:3]) == []
    with pytest.raises(ParseError) as e:
        dec.close()
    assert e.value.reason == "bhttp.truncated"
    assert dec.feed(bhttp.encode_content_chunk(b"tok2")[3:]) == [BodyChunk(b"tok2")]
    assert dec.feed(bhttp.encode_response_end([("x", "y")])) == [Trailers([("x", "y")])]
    dec.close()
    with pytest.raises(ParseError):
        dec.feed(b"\x01")


def test_stream_decoder_refuses_known_length_and_big_chunks() -> None:
    with pytest.raises(ParseError) as e:
        ResponseStreamDecoder().feed(FIG13)
    assert e.value.reason == "bhttp.bad_framing"
    dec = ResponseStreamDecoder(Limits(max_content_bytes=10))
    dec.feed(bhttp.encode_response_head(200, []))
    with pytest.raises(ParseError) as e:
        dec.feed(bhttp.encode_content_chunk(b"a" * 11))
    assert e.value.reason == "bhttp.content_too_large"
