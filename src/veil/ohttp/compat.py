"""The chunked variant spoken by ``ohttpy`` / Microsoft's ohttp fork (Azure confidential inferencing).

It predates draft-ietf-ohai-chunked-ohttp and differs from it (see docs/protocol-ohttp.md):

* the client POSTs ``message/ohttp-chunked-req`` to ``/score`` but the body is a plain RFC 9458
  encapsulated request (label ``message/bhttp request``, no chunk framing);
* the response is ``response_nonce || chunk* || 0x00 || final`` where every length, the final
  one included, is an LEB128 integer (not a QUIC varint), keys come from the RFC 9458 label
  ``message/bhttp response`` and chunk *i* uses nonce ``aead_nonce XOR i`` (AAD ``"final"`` last);
* chunk plaintexts are raw body bytes: the inner status and headers travel *outside* the
  encryption, on the outer HTTP response. Veil therefore exposes only the status code there.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from veil.errors import ParseError, ProtocolError
from veil.ohttp.ohttp import ClientResponseContext, ResponseAead, ServerResponseContext, response_nonce_len
from veil.wire import FINAL_AAD

MAX_CHUNK = 1 << 24


def encode_leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_leb128(data: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ParseError("chunked.bad_length", "LEB128 length is too long")
    return None


class CompatResponseSender:
    """Gateway side of the ohttpy response stream."""

    def __init__(self, ctx: ServerResponseContext, *, response_nonce: bytes | None = None) -> None:
        self.nonce = ctx.new_nonce(response_nonce)
        self._aead = ctx.response_aead(self.nonce)
        self._counter = 0
        self._sent_nonce = False

    def _prefix(self) -> bytes:
        if self._sent_nonce:
            return b""
        self._sent_nonce = True
        return self.nonce

    def start(self) -> bytes:
        return self._prefix()

    def seal_chunk(self, data: bytes) -> bytes:
        if not data:
            return self._prefix()
        ct = self._aead.seal(data, self._counter, b"")
        self._counter += 1
        return self._prefix() + encode_leb128(len(ct)) + ct

    def seal_final(self, data: bytes = b"") -> bytes:
        ct = self._aead.seal(data, self._counter, FINAL_AAD)
        self._counter += 1
        return self._prefix() + b"\x00" + encode_leb128(len(ct)) + ct


class CompatResponseReceiver:
    """Client side (used in tests to check what ohttpy will see)."""

    def __init__(self, ctx: ClientResponseContext) -> None:
        self._ctx = ctx
        self._n = response_nonce_len(ctx.suite)
        self._buf = bytearray()
        self._aead: ResponseAead | None = None
        self._counter = 0
        self.finished = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.finished and data:
            raise ProtocolError("chunked.trailing_data", "data after the final chunk")
        self._buf += data
        if self._aead is None:
            if len(self._buf) < self._n:
                return []
            self._aead = self._ctx.response_aead(bytes(self._buf[: self._n]))
            del self._buf[: self._n]
        out: list[bytes] = []
        while self._buf and not self.finished:
            got = decode_leb128(self._buf, 0)
            if got is None:
                break
            length, pos = got
            final = length == 0
            if final:
                got = decode_leb128(self._buf, pos)
                if got is None:
                    break
                length, pos = got
            if length > MAX_CHUNK:
                raise ParseError("chunked.too_large", "chunk exceeds the limit")
            if len(self._buf) < pos + length:
                break
            ct = bytes(self._buf[pos : pos + length])
            del self._buf[: pos + length]
            try:
                out.append(self._aead.open(ct, self._counter, FINAL_AAD if final else b""))
            except InvalidTag:
                raise ProtocolError("chunked.decrypt_failed", "response chunk failed authentication") from None
            self._counter += 1
            self.finished = final
        return out

    def close(self) -> None:
        if not self.finished:
            raise ProtocolError("chunked.truncated", "stream ended without a final chunk")
