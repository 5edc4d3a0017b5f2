"""Chunked Oblivious HTTP (draft-ietf-ohai-chunked-ohttp-08): encrypt and decrypt as bytes flow.

Wire format, both directions::

    request  = hdr(7) || enc || chunk* || 0x00 || final-ciphertext     (message/ohttp-chunked-req)
    response = response_nonce || chunk* || 0x00 || final-ciphertext    (message/ohttp-chunked-res)
    chunk    = varint(len) || ciphertext                                (len >= 1)

The final ciphertext runs to the end of the stream and is sealed with AAD ``"final"`` (others with
empty AAD), so cutting the stream before it (truncation) is detected. Request chunks use the HPKE
context's own sequence; response chunk *i* uses ``aead_nonce XOR i``, so reordering or splicing
chunks from another response fails authentication. Each failure has its own reason code. A
non-final chunk never carries an empty plaintext: senders skip it, and a receiver treats one as a
decryption error (``chunked.empty_chunk``, a MUST since draft -07). The draft's worked example
(its Appendix A) is reproduced byte for byte in tests/ohttp/test_ohttp_chunked.py.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from pyhpke import OpenError

from veil.errors import ParseError, ProtocolError
from veil.ohttp.bhttp import decode_varint, encode_varint
from veil.ohttp.keyconfig import KeyConfig, KeyStore, SymmetricSuite
from veil.ohttp.ohttp import HEADER_LEN, ResponseAead, response_nonce_len, setup_recipient, setup_sender
from veil.wire import FINAL_AAD, LABEL_CHUNKED_REQUEST, LABEL_CHUNKED_RESPONSE

DEFAULT_MAX_CHUNK = 1 << 20
_REORDER_WINDOW = 8
# Requests reach the gateway before anyone is authenticated, and every chunk costs an AEAD call
# and a Python loop turn: past the first few, chunks must average MIN_AVERAGE_CHUNK bytes, so the
# parse work per byte has a bound (8 MiB of one-byte chunks is refused after the 17th chunk).
FREE_REQUEST_CHUNKS = 16
MIN_AVERAGE_CHUNK = 256


def _frame(ct: bytes) -> bytes:
    return encode_varint(len(ct)) + ct


def _non_empty(plaintext: bytes) -> bytes:
    """Draft -08 §6: a non-final chunk that decrypts to nothing is a decryption error."""
    if not plaintext:
        raise ProtocolError("chunked.empty_chunk", "a non-final chunk decrypted to an empty plaintext")
    return plaintext


class _ChunkReader:
    """Splits a byte stream into (ciphertext, is_final) records; the final one ends at EOF."""

    def __init__(self, max_chunk: int, *, bounded: bool = False) -> None:
        self._buf = bytearray()
        self._max = max_chunk
        self._bounded = bounded  # requests: chunk count bounded by the bytes they took
        self._chunks = 0
        self._bytes = 0
        self.in_final = False
        self.closed = False

    def feed(self, data: bytes) -> list[bytes]:
        if self.closed:
            raise ProtocolError("chunked.trailing_data", "data after the end of the stream")
        self._buf += data
        out: list[bytes] = []
        while not self.in_final:
            got = decode_varint(self._buf, 0)
            if got is None:
                break
            length, pos = got
            if length == 0:
                del self._buf[:pos]
                self.in_final = True
                break
            if length > self._max + 16:
                raise ParseError("chunked.too_large", f"chunk of {length} bytes exceeds the limit")
            if len(self._buf) < pos + length:
                break
            self._chunks += 1
            self._bytes += pos + length
            if self._bounded and self._chunks > FREE_REQUEST_CHUNKS + self._bytes // MIN_AVERAGE_CHUNK:
                raise ParseError("chunked.too_many_chunks", f"chunks must average {MIN_AVERAGE_CHUNK} bytes or more")
            out.append(bytes(self._buf[pos : pos + length]))
            del self._buf[: pos + length]
        if self.in_final and len(self._buf) > self._max + 16:
            raise ParseError("chunked.too_large", "final chunk exceeds the limit")
        return out

    def final(self) -> bytes:
        self.closed = True
        if not self.in_final:
            raise ProtocolError("chunked.truncated", "stream ended without a final chunk")
        return bytes(self._buf)


# -- requests ---------------------------------------------------------------------------------


class ChunkedRequestSender:
    """Client side: ``header`` first, then :meth:`seal_chunk` pieces and one :meth:`seal_final`."""

    def __init__(
        self,
        config: KeyConfig,
        *,
        suite: SymmetricSuite | None = None,
        ephemeral_private_key: bytes | None = None,
    ) -> None:
        s = setup_sender(config, LABEL_CHUNKED_REQUEST, suite=suite, ephemeral_private_key=ephemeral_private_key)
        self._ctx = s.context
        self._enc = s.enc
        self.suite = s.suite
        self.header = s.header + s.enc
        self._finished = False

    def seal_chunk(self, data: bytes) -> bytes:
        if self._finished:
            raise ValueError("request already finished")
        if not data:
            return b""  # an empty non-final chunk cannot be framed (length 0 means final)
        return _frame(self._ctx.seal(data, b""))

    def seal_final(self, data: bytes = b"") -> bytes:
        if self._finished:
            raise ValueError("request already finished")
        self._finished = True
        return b"\x00" + self._ctx.seal(data, FINAL_AAD)

    def response_receiver(self, max_chunk: int = DEFAULT_MAX_CHUNK) -> ChunkedResponseReceiver:
        return ChunkedResponseReceiver(ResponseKeys(self._ctx, self._enc, self.suite), max_chunk)


class ResponseKeys:
    """Holds what both sides need to derive the chunked response AEAD."""

    def __init__(self, context: object, enc: bytes, suite: SymmetricSuite) -> None:
        self.context = context
        self.enc = enc
        self.suite = suite

    def aead(self, nonce: bytes, label: bytes = LABEL_CHUNKED_RESPONSE) -> ResponseAead:
        return ResponseAead(self.context, self.enc, nonce, self.suite, label)  # type: ignore[arg-type]


class ChunkedRequestReceiver:
    """Gateway side: :meth:`feed` bytes as they arrive, get plaintext chunks; then :meth:`close`."""

    def __init__(self, keys: KeyStore, max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        self._keys = keys
        self._head = bytearray()
        self._reader = _ChunkReader(max_chunk, bounded=True)
        self._ctx: object | None = None
        self._enc = b""
        self.suite: SymmetricSuite | None = None
        self.key_id: int | None = None
        self.finished = False

    @property
    def enc(self) -> bytes | None:
        """The request's encapsulated key once the header has arrived (for replay detection)."""
        return self._enc if self._ctx is not None else None

    def feed(self, data: bytes) -> list[bytes]:
        if self._ctx is None:
            self._head += data
            if len(self._head) < HEADER_LEN:
                return []
            data = self._try_setup()
            if self._ctx is None:
                return []
        return self._open_all(self._reader.feed(data))

    def _try_setup(self) -> bytes:
        head = bytes(self._head)
        try:
            rec = setup_recipient(self._keys, head, LABEL_CHUNKED_REQUEST)
        except ParseError as exc:
            if exc.reason == "ohttp.truncated":
                return b""  # the encapsulated key has not fully arrived yet
            raise
        self._ctx, self._enc, self.suite, self.key_id = rec.context, rec.enc, rec.suite, rec.key_id
        self._head.clear()
        return head[rec.body_offset :]

    def _open_all(self, cts: list[bytes]) -> list[bytes]:
        return [_non_empty(self._open(ct, b"")) for ct in cts]

    def _open(self, ct: bytes, aad: bytes) -> bytes:
        try:
            return bytes(self._ctx.open(ct, aad))  # type: ignore[union-attr]
        except (OpenError, InvalidTag, ValueError):
            reason = "chunked.final_mismatch" if aad == FINAL_AAD else "chunked.decrypt_failed"
            raise ProtocolError(reason, "request chunk failed authentication") from None

    def close(self) -> bytes:
        """End of the request stream: open and return the final chunk (may be empty)."""
        if self._ctx is None:
            raise ParseError("ohttp.truncated", "request ended inside the header")
        pt = self._open(self._reader.final(), FINAL_AAD)
        self.finished = True
        return pt

    def response_sender(self, *, response_nonce: bytes | None = None) -> ChunkedResponseSender:
        if self._ctx is None or self.suite is None:
            raise ValueError("request header not received yet")
        return ChunkedResponseSender(ResponseKeys(self._ctx, self._enc, self.suite), response_nonce=response_nonce)


# -- responses --------------------------------------------------------------------------------


class ChunkedResponseSender:
    """Gateway side: the first output carries the response nonce; each chunk gets the next counter."""

    def __init__(self, keys: ResponseKeys, *, response_nonce: bytes | None = None) -> None:
        n = response_nonce_len(keys.suite)
        self.nonce = os.urandom(n) if response_nonce is None else response_nonce
        if len(self.nonce) != n:
            raise ValueError(f"response nonce must be {n} bytes")
        self._aead = keys.aead(self.nonce)
        self._counter = 0
        self._sent_nonce = False
        self._finished = False

    def _prefix(self) -> bytes:
        if self._sent_nonce:
            return b""
        self._sent_nonce = True
        return self.nonce

    def start(self) -> bytes:
        """The nonce alone, so the outer response can begin before the first chunk exists."""
        return self._prefix()

    def seal_chunk(self, data: bytes) -> bytes:
        if self._finished:
            raise ValueError("response already finished")
        if not data:
            return self._prefix()
        ct = self._aead.seal(data, self._counter, b"")
        self._counter += 1
        return self._prefix() + _frame(ct)

    def seal_final(self, data: bytes = b"") -> bytes:
        if self._finished:
            raise ValueError("response already finished")
        self._finished = True
        ct = self._aead.seal(data, self._counter, FINAL_AAD)
        self._counter += 1
        return self._prefix() + b"\x00" + ct


class ChunkedResponseReceiver:
    """Client side: :meth:`feed` the response body as it streams; :meth:`close` at EOF."""

    def __init__(self, keys: ResponseKeys, max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        self._keys = keys
        self._nonce_len = response_nonce_len(keys.suite)
        self._head = bytearray()
        self._aead: ResponseAead | None = None
        self._reader = _ChunkReader(max_chunk)
        self._counter = 0
        self.finished = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._aead is None:
            self._head += data
            if len(self._head) < self._nonce_len:
                return []
            self._aead = self._keys.aead(bytes(self._head[: self._nonce_len]))
            data = bytes(self._head[self._nonce_len :])
            self._head.clear()
        return [_non_empty(self._open(ct, b"")) for ct in self._reader.feed(data)]

    def _open(self, ct: bytes, aad: bytes) -> bytes:
        assert self._aead is not None
        try:
            pt = self._aead.open(ct, self._counter, aad)
        except InvalidTag:
            raise ProtocolError(self._diagnose(ct, aad), "response chunk failed authentication") from None
        self._counter += 1
        return pt

    def _diagnose(self, ct: bytes, aad: bytes) -> str:
        """Say *why* a chunk failed: a final/non-final swap, a chunk out of order, or foreign bytes."""
        assert self._aead is not None
        other = b"" if aad == FINAL_AAD else FINAL_AAD
        for a, reason in ((other, "chunked.final_mismatch"), (aad, "chunked.reordered"), (other, "chunked.reordered")):
            counters = (
                [self._counter]
                if reason == "chunked.final_mismatch"
                else [
                    c
                    for c in range(max(0, self._counter - _REORDER_WINDOW), self._counter + _REORDER_WINDOW)
                    if c != self._counter
                ]
            )
            for c in counters:
                try:
                    self._aead.open(ct, c, a)
                    return reason
                except InvalidTag:
                    continue
        return "chunked.decrypt_failed"

    def close(self) -> bytes:
        """End of stream: open the final chunk, or refuse a truncated response."""
        if self._aead is None:
            raise ProtocolError("chunked.truncated", "response ended before its nonce")
        pt = self._open(self._reader.final(), FINAL_AAD)
        self.finished = True
        return pt


def decapsulate_chunked_request(keys: KeyStore, body: bytes) -> tuple[bytes, ChunkedRequestReceiver]:
    """Convenience: open a whole chunked request at once (the gateway buffers small requests)."""
    rx = ChunkedRequestReceiver(keys)
    parts = rx.feed(body)
    parts.append(rx.close())
    return b"".join(parts), rx
