"""Binary HTTP messages (RFC 9292): what travels inside every OHTTP encapsulation.

Known-length and indeterminate-length forms, informational responses, trailers, zero padding and
the truncation RFC 9292 §3.8 allows. Every length is checked against :class:`Limits` before any
allocation, so a hostile message cannot make the gateway buffer more than it agreed to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from veil.errors import ParseError

FRAMING_KNOWN_REQUEST = 0
FRAMING_KNOWN_RESPONSE = 1
FRAMING_INDETERMINATE_REQUEST = 2
FRAMING_INDETERMINATE_RESPONSE = 3

Fields = list[tuple[str, str]]


@dataclass(frozen=True)
class Limits:
    """Upper bounds a decoder enforces (reason codes ``bhttp.*_too_large``)."""

    max_field_bytes: int = 64 * 1024
    max_fields: int = 512
    max_section_bytes: int = 256 * 1024
    max_content_bytes: int = 64 * 1024 * 1024
    max_informational: int = 16


DEFAULT_LIMITS = Limits()


@dataclass
class Request:
    method: str
    scheme: str = "https"
    authority: str = ""
    path: str = "/"
    headers: Fields = field(default_factory=list)
    content: bytes = b""
    trailers: Fields = field(default_factory=list)


@dataclass
class InformationalResponse:
    status: int
    headers: Fields = field(default_factory=list)


@dataclass
class Response:
    status: int
    headers: Fields = field(default_factory=list)
    content: bytes = b""
    trailers: Fields = field(default_factory=list)
    informational: list[InformationalResponse] = field(default_factory=list)


# -- QUIC variable-length integers (RFC 9000 §16) ---------------------------------------------


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varint must be non-negative")
    if value < 1 << 6:
        return value.to_bytes(1, "big")
    if value < 1 << 14:
        return (value | 0x4000).to_bytes(2, "big")
    if value < 1 << 30:
        return (value | 0x80000000).to_bytes(4, "big")
    if value < 1 << 62:
        return (value | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError("varint too large")


def decode_varint(data: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, new position), or None when ``data`` ends inside the integer."""
    if pos >= len(data):
        return None
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > len(data):
        return None
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | data[pos + i]
    return value, pos + size


# -- encoding ---------------------------------------------------------------------------------


def _lp(value: bytes) -> bytes:
    return encode_varint(len(value)) + value


def _b(text: str) -> bytes:
    return text.encode("latin-1")


def _field_lines(fields: Fields) -> bytes:
    return b"".join(_lp(_b(n.lower())) + _lp(_b(v)) for n, v in fields)


def _known_section(fields: Fields) -> bytes:
    return _lp(_field_lines(fields))


def _indeterminate_section(fields: Fields) -> bytes:
    return _field_lines(fields) + b"\x00"


def encode_request(req: Request, *, indeterminate: bool = False, padding: int = 0) -> bytes:
    """Encode a request; ``padding`` zero bytes are appended (RFC 9292 §3.8)."""
    control = _lp(_b(req.method)) + _lp(_b(req.scheme)) + _lp(_b(req.authority)) + _lp(_b(req.path))
    if indeterminate:
        body = encode_varint(FRAMING_INDETERMINATE_REQUEST) + control + _indeterminate_section(req.headers)
        body += (_lp(req.content) if req.content else b"") + b"\x00" + _indeterminate_section(req.trailers)
    else:
        body = encode_varint(FRAMING_KNOWN_REQUEST) + control + _known_section(req.headers)
        body += _lp(req.content) + _known_section(req.trailers)
    return body + b"\x00" * padding


def _encode_informational(infos: list[InformationalResponse], indeterminate: bool) -> bytes:
    out = b""
    for info in infos:
        if not 100 <= info.status <= 199:
            raise ValueError("informational status must be 1xx")
        section = _indeterminate_section(info.headers) if indeterminate else _known_section(info.headers)
        out += encode_varint(info.status) + section
    return out


def encode_response(resp: Response, *, indeterminate: bool = False, padding: int = 0) -> bytes:
    if not 200 <= resp.status <= 599:
        raise ValueError("final status must be 200..599")
    if indeterminate:
        body = encode_varint(FRAMING_INDETERMINATE_RESPONSE) + _encode_informational(resp.informational, True)
        body += encode_varint(resp.status) + _indeterminate_section(resp.headers)
        body += (_lp(resp.content) if resp.content else b"") + b"\x00" + _indeterminate_section(resp.trailers)
    else:
        body = encode_varint(FRAMING_KNOWN_RESPONSE) + _encode_informational(resp.informational, False)
        body += encode_varint(resp.status) + _known_section(resp.headers)
        body += _lp(resp.content) + _known_section(resp.trailers)
    return body + b"\x00" * padding


# Pieces for writing an indeterminate-length response as it is produced (streaming).


def encode_response_head(status: int, headers: Fields) -> bytes:
    """Framing indicator, status and header section of an indeterminate-length response."""
    return encode_varint(FRAMING_INDETERMINATE_RESPONSE) + encode_varint(status) + _indeterminate_section(headers)


def encode_content_chunk(data: bytes) -> bytes:
    """One indeterminate-length content chunk; empty data encodes to nothing (0 would end content)."""
    return _lp(data) if data else b""


def encode_response_end(trailers: Fields | None = None) -> bytes:
    """Content terminator plus the trailer section."""
    return b"\x00" + _indeterminate_section(trailers or [])


# -- decoding ---------------------------------------------------------------------------------


class _Truncated(Exception):
    """Internal: the buffer ended; the caller decides whether that is allowed."""


class _Reader:
    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.pos = 0
        self.limits = limits

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        got = decode_varint(self.data, self.pos)
        if got is None:
            raise _Truncated
        value, self.pos = got
        return value

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Truncated
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def lp(self, limit: int, reason: str) -> bytes:
        n = self.varint()
        if n > limit:
            raise ParseError(reason, f"length {n} exceeds the limit of {limit}")
        return self.take(n)


def _text(raw: bytes) -> str:
    return raw.decode("latin-1")


def _check_field(name: bytes, value: bytes) -> None:
    if not name or name.startswith(b":") or name != name.lower() or any(c <= 0x20 or c >= 0x7F for c in name):
        raise ParseError("bhttp.invalid_field", "invalid field name")
    if any(c in (0, 0x0A, 0x0D) for c in value):
        raise ParseError("bhttp.invalid_field", "invalid field value")


def _parse_field_lines(r: _Reader, end: int | None) -> Fields:
    """Known-length when ``end`` is given, else up to the zero-length-name terminator."""
    lim = r.limits
    fields: Fields = []
    start = r.pos
    while True:
        if end is not None and r.pos >= end:
            break
        name = r.lp(lim.max_field_bytes, "bhttp.field_too_large")
        if end is None and not name:
            break
        value = r.lp(lim.max_field_bytes, "bhttp.field_too_large")
        _check_field(name, value)
        fields.append((_text(name), _text(value)))
        if len(fields) > lim.max_fields:
            raise ParseError("bhttp.too_many_fields", f"more than {lim.max_fields} fields")
        if r.pos - start > lim.max_section_bytes:
            raise ParseError("bhttp.section_too_large", "field section exceeds the limit")
    if end is not None and r.pos != end:
        raise ParseError("bhttp.malformed", "field line runs past its section")
    return fields


def _section(r: _Reader, known: bool) -> Fields:
    if known:
        n = r.varint()
        if n > r.limits.max_section_bytes:
            raise ParseError("bhttp.section_too_large", "field section exceeds the limit")
        if r.pos + n > len(r.data):
            raise _Truncated
        return _parse_field_lines(r, r.pos + n)
    return _parse_field_lines(r, None)


# A whole message's indeterminate-length content may come in any number of chunks; past the first
# few they must average MIN_AVERAGE_CHUNK bytes, so 8 MiB of one-byte chunks (4 million list
# items) is refused after the 17th instead of costing seconds of the gateway's event loop.
FREE_CONTENT_CHUNKS = 16
MIN_AVERAGE_CHUNK = 256


def _content(r: _Reader, known: bool) -> bytes:
    lim = r.limits.max_content_bytes
    if known:
        return r.lp(lim, "bhttp.content_too_large")
    parts: list[bytes] = []
    total = 0
    while True:
        chunk = r.lp(lim, "bhttp.content_too_large")
        if not chunk:
            return b"".join(parts)
        total += len(chunk)
        if total > lim:
            raise ParseError("bhttp.content_too_large", "content exceeds the limit")
        parts.append(chunk)
        if len(parts) > FREE_CONTENT_CHUNKS + total // MIN_AVERAGE_CHUNK:
            raise ParseError("bhttp.too_many_chunks", f"content chunks must average {MIN_AVERAGE_CHUNK} bytes or more")


def _check_padding(r: _Reader) -> None:
    if any(r.data[r.pos :]):
        raise ParseError("bhttp.bad_padding", "bytes after the message are not zero padding")


def _framing(r: _Reader, allowed: tuple[int, int], what: str) -> bool:
    try:
        framing = r.varint()
    except _Truncated:
        raise ParseError("bhttp.truncated", "empty message") from None
    if framing not in allowed:
        raise ParseError("bhttp.bad_framing", f"framing indicator {framing} is not a {what}")
    return framing == allowed[0]


def decode_request(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request:
    """Decode a request in either form; truncation after the control data is allowed (§3.8)."""
    data = bytes(data)
    r = _Reader(data, limits)
    known = _framing(r, (FRAMING_KNOWN_REQUEST, FRAMING_INDETERMINATE_REQUEST), "request")
    try:
        method = _text(r.lp(limits.max_field_bytes, "bhttp.field_too_large"))
        scheme = _text(r.lp(limits.max_field_bytes, "bhttp.field_too_large"))
        authority = _text(r.lp(limits.max_field_bytes, "bhttp.field_too_large"))
        path = _text(r.lp(limits.max_field_bytes, "bhttp.field_too_large"))
    except _Truncated:
        raise ParseError("bhttp.truncated", "request control data is truncated") from None
    if not method or any(c <= " " or c >= "\x7f" for c in method):
        raise ParseError("bhttp.invalid_field", "invalid method")
    req = Request(method, scheme, authority, path)
    _rest(r, req, known)
    return req


def _rest(r: _Reader, msg: Request | Response, known: bool) -> None:
    """Header section, content and trailers, each of which may be truncated away entirely."""
    try:
        if r.at_end():
            return
        msg.headers = _section(r, known)
        if r.at_end():
            return
        msg.content = _content(r, known)
        if r.at_end():
            return
        msg.trailers = _section(r, known)
    except _Truncated:
        raise ParseError("bhttp.truncated", "message is truncated") from None
    _check_padding(r)


def decode_response(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Response:
    data = bytes(data)
    r = _Reader(data, limits)
    known = _framing(r, (FRAMING_KNOWN_RESPONSE, FRAMING_INDETERMINATE_RESPONSE), "response")
    infos: list[InformationalResponse] = []
    try:
        while True:
            status = r.varint()
            if 100 <= status <= 199:
                if len(infos) >= limits.max_informational:
                    raise ParseError("bhttp.too_many_informational", "too many informational responses")
                infos.append(InformationalResponse(status, _section(r, known)))
                continue
            break
    except _Truncated:
        raise ParseError("bhttp.truncated", "response control data is truncated") from None
    if not 200 <= status <= 599:
        raise ParseError("bhttp.bad_status", f"status {status} is not valid")
    resp = Response(status, informational=infos)
    _rest(r, resp, known)
    return resp


# -- incremental decoding of an indeterminate-length response (streaming) ---------------------


@dataclass
class ResponseHead:
    """Emitted once the final status and header section have arrived."""

    status: int
    headers: Fields
    informational: list[InformationalResponse]


@dataclass
class BodyChunk:
    data: bytes


@dataclass
class Trailers:
    """Emitted at the end of the message (possibly with no fields)."""

    fields: Fields


Event = ResponseHead | BodyChunk | Trailers


class ResponseStreamDecoder:
    """Decode an indeterminate-length response fed in arbitrary pieces.

    Each :meth:`feed` returns the events completed so far; body chunks are released as soon as each
    whole content chunk has arrived, so tokens flow on as they are produced. :meth:`close` checks
    the message ended properly (content terminator and trailer section, then only zero padding).
    """

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._buf = bytearray()
        self._limits = limits
        self._state = "framing"
        self._infos: list[InformationalResponse] = []
        self._content_total = 0
        self.head: ResponseHead | None = None
        self.done = False

    def feed(self, data: bytes) -> list[Event]:
        if self.done:
            if any(data):
                raise ParseError("bhttp.bad_padding", "bytes after the message are not zero padding")
            return []
        self._buf += data
        if len(self._buf) > self._limits.max_section_bytes + self._limits.max_content_bytes + 16:
            raise ParseError("bhttp.content_too_large", "buffered message exceeds the limit")
        events: list[Event] = []
        while not self.done:
            step = self._step()
            if step is None:
                break
            if not isinstance(step, bool):
                events.append(step)
        return events

    def _step(self) -> Event | bool | None:
        """Parse one item; None when more data is needed, True when progress made without an event."""
        r = _Reader(bytes(self._buf), self._limits)
        try:
            if self._state == "framing":
                framing = r.varint()
                if framing != FRAMING_INDETERMINATE_RESPONSE:
                    raise ParseError("bhttp.bad_framing", "expected an indeterminate-length response")
                self._consume(r.pos, "status")
                return True
            if self._state == "status":
                status = r.varint()
                fields = _section(r, known=False)
                self._consume(r.pos, "status")
                if 100 <= status <= 199:
                    if len(self._infos) >= self._limits.max_informational:
                        raise ParseError("bhttp.too_many_informational", "too many informational responses")
                    self._infos.append(InformationalResponse(status, fields))
                    return True
                if not 200 <= status <= 599:
                    raise ParseError("bhttp.bad_status", f"status {status} is not valid")
                self._state = "content"
                self.head = ResponseHead(status, fields, self._infos)
                return self.head
            if self._state == "content":
                chunk = r.lp(self._limits.max_content_bytes, "bhttp.content_too_large")
                self._consume(r.pos, "content" if chunk else "trailers")
                if not chunk:
                    return True
                self._content_total += len(chunk)
                if self._content_total > self._limits.max_content_bytes:
                    raise ParseError("bhttp.content_too_large", "content exceeds the limit")
                return BodyChunk(chunk)
            if self._state == "trailers":
                fields = _section(r, known=False)
                self._consume(r.pos, "padding")
                self.done = True
                if any(self._buf):
                    raise ParseError("bhttp.bad_padding", "bytes after the message are not zero padding")
                self._buf.clear()
                return Trailers(fields)
        except _Truncated:
            return None
        return None

    def _consume(self, n: int, state: str) -> None:
        del self._buf[:n]
        self._state = state

    def close(self) -> None:
        """The stream ended: anything short of a complete message is truncation."""
        if not self.done:
            raise ParseError("bhttp.truncated", f"response ended in state {self._state}")
