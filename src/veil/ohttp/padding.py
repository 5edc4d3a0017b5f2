"""Length hiding: pad Binary HTTP messages and streamed chunks to a small set of sizes.

Both ends use it (the client pads requests, the gateway pads answers), so it lives with OHTTP and
Binary HTTP, below both; the bucket ceilings are wire constants (``veil.wire``). Three tools, no I/O:

* :func:`bucket` — the size a message of ``n`` bytes is padded to: the next power of two at or
  above ``max(n, minimum)``, and above ``ceiling`` the next multiple of ``ceiling``.
* :func:`pad_message` — RFC 9292 §3.8 padding: zero bytes after a complete message. Used for
  requests (client) and whole responses (gateway). Every conforming decoder ignores it.
* :class:`SsePadder` — turns a streamed ``text/event-stream`` body into chunk plaintexts that each
  fill a bucket exactly. Binary HTTP has no padding *inside* an indeterminate-length message (a
  zero-length content chunk would end the content), so the filler is carried in the content as an
  SSE comment line (``:`` + spaces + ``\\n``), which every SSE parser ignores (WHATWG HTML
  §9.2.6: "If the line starts with a U+003A COLON character, ignore the line"). A comment is only
  ever added where a line has just ended, so it can never split or merge the engine's lines.
  The final chunk ends the message and uses ordinary RFC 9292 zero padding.
"""

from __future__ import annotations

from veil.ohttp.bhttp import encode_content_chunk, encode_response_end, encode_varint
from veil.wire import CHUNK_CEILING, WHOLE_CEILING


def bucket(n: int, minimum: int, ceiling: int = WHOLE_CEILING) -> int:
    """The padded size for ``n`` bytes (always >= n)."""
    size = max(n, minimum, 1)
    if size <= ceiling:
        return 1 << (size - 1).bit_length()
    return -(-size // ceiling) * ceiling


def pad_message(message: bytes, minimum: int | None, ceiling: int = WHOLE_CEILING) -> bytes:
    """``message`` followed by zero bytes up to its bucket (unchanged when ``minimum`` is None)."""
    if minimum is None:
        return message
    return message + bytes(bucket(len(message), minimum, ceiling) - len(message))


def split_whole(message: bytes, piece: int = CHUNK_CEILING) -> tuple[list[bytes], bytes]:
    """Cut an (already padded) message into non-final chunk plaintexts and the final one.

    The cut points depend only on the padded length, so chunk sizes say nothing more than the
    bucket does. Small messages travel whole in the final chunk.
    """
    pieces = [message[i : i + piece] for i in range(0, len(message), piece)] or [b""]
    return pieces[:-1], pieces[-1]


def _exact_chunk_len(total: int) -> int:
    """The content length n whose BHTTP chunk ``varint(n) || n bytes`` is exactly ``total`` bytes."""
    for width in (1, 2, 4, 8):
        n = total - width
        if n >= 0 and len(encode_varint(n)) == width:
            return n
    raise ValueError(f"no content chunk is exactly {total} bytes")


# (width, smallest, largest + 1) of each QUIC varint length (RFC 9000 §16)
_VARINT_WIDTHS = ((1, 0, 1 << 6), (2, 1 << 6, 1 << 14), (4, 1 << 14, 1 << 30), (8, 1 << 30, 1 << 62))


def _comment_filled(prefix: bytes, data: bytes, minimum: int, ceiling: int) -> bytes:
    """``prefix`` + one content chunk (``data`` + an SSE comment line), exactly one bucket long.

    Runs once per streamed event: kept to a few integer comparisons and one join."""
    need = len(data) + 2  # the data, then at least ":" and "\n"
    target = bucket(len(prefix) + need + 1, minimum, ceiling)
    while True:
        room = target - len(prefix)
        for width, low, high in _VARINT_WIDTHS:
            n = room - width
            if n >= need and low <= n < high:
                return b"".join((prefix, encode_varint(n), data, b":", b" " * (n - need), b"\n"))
        target = bucket(target + 1, minimum, ceiling)  # a varint width boundary: next bucket


class SsePadder:
    """Padded chunk plaintexts for an SSE body, one bucket each.

    ``head()`` first (status and header section, filled with a comment), then ``feed()`` each engine
    body piece, then ``final()`` for the last chunk. Bytes after the last line break are held back
    until the line completes (SSE engines end every event with a blank line, so nothing waits in
    practice); a partial line longer than ``ceiling`` is sent on in exact ``ceiling``-sized chunks.

    ``framed`` (the default): each chunk is a content chunk of an indeterminate-length BHTTP
    response. ``framed=False``: each chunk is raw body bytes (ohttpy's variant, which carries no
    inner message); there is no head, and the final chunk is the held-back tail, if any, unpadded
    (an engine that ends its stream mid-line; an SSE parser discards such a line anyway).
    """

    def __init__(self, minimum: int, ceiling: int = CHUNK_CEILING, *, framed: bool = True) -> None:
        self.minimum = minimum
        self.ceiling = max(ceiling, minimum)
        self.framed = framed
        self._pending = bytearray()
        self._raw_len = _exact_chunk_len(self.ceiling) if framed else self.ceiling

    def head(self, head: bytes) -> bytes:
        return _comment_filled(head, b"", self.minimum, WHOLE_CEILING)

    def _raw(self, data: bytes) -> bytes:
        return encode_content_chunk(data) if self.framed else data

    def _filled(self, data: bytes) -> bytes:
        if self.framed:
            return _comment_filled(b"", data, self.minimum, self.ceiling)
        target = bucket(len(data) + 2, self.minimum, self.ceiling)
        return data + b":" + b" " * (target - len(data) - 2) + b"\n"

    def feed(self, piece: bytes) -> list[bytes]:
        if not self._pending and piece.endswith(b"\n") and len(piece) + 16 <= self.ceiling:
            return [self._filled(piece)]  # the usual case: whole events, one bucket
        self._pending += piece
        out: list[bytes] = []
        cut = self._pending.rfind(b"\n") + 1
        if cut:
            data = bytes(self._pending[:cut])
            del self._pending[:cut]
            while len(data) + 16 > self.ceiling:  # too big to fill with a comment: exact raw chunks
                out.append(self._raw(data[: self._raw_len]))
                data = data[self._raw_len :]
            out.append(self._filled(data))
        while len(self._pending) >= self._raw_len:  # an endless partial line: pass it on, still padded
            out.append(self._raw(bytes(self._pending[: self._raw_len])))
            del self._pending[: self._raw_len]
        return out

    def final(self) -> bytes:
        tail = bytes(self._pending)
        self._pending.clear()
        if not self.framed:
            return tail
        return pad_message(encode_content_chunk(tail) + encode_response_end(), self.minimum, self.ceiling)


def pad_json(body: bytes, minimum: int | None, ceiling: int = WHOLE_CEILING) -> bytes:
    """A JSON text followed by spaces up to its bucket: JSON allows whitespace after the value
    (RFC 8259 §2), so every parser reads the same document. For bodies without a framing of
    their own to pad in (ohttpy's variant)."""
    if minimum is None:
        return body
    return body + b" " * (bucket(len(body), minimum, ceiling) - len(body))
