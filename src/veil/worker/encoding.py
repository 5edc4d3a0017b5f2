"""Encode: one engine answer → sealed response bytes, padded to size buckets, for one framing.

The framing (how the response is sealed) was fixed by the request's route and media type
(``opening.py``); the encoder (how the answer is laid out and padded inside the encryption) is
chosen once, by :func:`choose_encoder`, when the engine's answer head is known:

==========================  =============================  ==================================
framing                     streamed answer (SSE)          whole answer (JSON, errors)
==========================  =============================  ==================================
``message/ohttp-res``       whole BHTTP, padded            whole BHTTP, padded
chunked OHTTP (draft -08)   padded SSE in BHTTP chunks     whole BHTTP, padded, cut in chunks
ohttpy's variant            padded SSE, raw body chunks    JSON padded with whitespace
==========================  =============================  ==================================

"Padded" means to the manifest's buckets (``PaddingSettings``); a bucket set to None sends that
kind of answer raw, sized as the engine made it. Every encoder has the same three calls —
:meth:`Encoder.head`, :meth:`Encoder.body`, :meth:`Encoder.end` — each returning the wire bytes to
send now; whole encoders buffer and return everything from ``end``. None of this does I/O.
"""

from __future__ import annotations

from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedResponseSender
from veil.ohttp.compat import CompatResponseSender
from veil.ohttp.ohttp import ServerResponseContext
from veil.manifest import PaddingSettings
from veil.wire import MEDIA_TYPE_CHUNKED_RESPONSE, MEDIA_TYPE_RESPONSE
from veil.ohttp.padding import SsePadder, pad_json, pad_message, split_whole
from veil.worker.refusals import Refusal


class Sealer:
    """Seals plaintext for one framing; ``streams``: it can send before the end; ``bhttp``: the
    plaintext is a Binary HTTP response (False only for ohttpy's variant, whose status therefore
    travels on the outer response)."""

    media_type: str
    streams: bool = True
    bhttp: bool = True

    def chunk(self, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def final(self, plaintext: bytes) -> bytes:
        raise NotImplementedError

    def message(self, plaintext: bytes) -> list[bytes]:
        """A complete (already padded) plaintext: cut where only its length decides, then sealed."""
        pieces, last = split_whole(plaintext)
        return [self.chunk(p) for p in pieces] + [self.final(last)]


class WholeSealer(Sealer):
    """RFC 9458 ``message/ohttp-res``: one AEAD over the whole answer."""

    media_type = MEDIA_TYPE_RESPONSE
    streams = False

    def __init__(self, ctx: ServerResponseContext) -> None:
        self._ctx = ctx

    def message(self, plaintext: bytes) -> list[bytes]:
        return [self._ctx.encapsulate_response(plaintext)]


class ChunkSealer(Sealer):
    """A streamed framing: chunked OHTTP (draft -08) around an indeterminate-length BHTTP
    response, or — ``bhttp=False`` — ohttpy's variant, whose chunks are raw body bytes and whose
    status travels on the outer response."""

    media_type = MEDIA_TYPE_CHUNKED_RESPONSE

    def __init__(self, tx: ChunkedResponseSender | CompatResponseSender, *, bhttp: bool = True) -> None:
        self._tx = tx
        self.bhttp = bhttp

    def chunk(self, plaintext: bytes) -> bytes:
        return self._tx.seal_chunk(plaintext)

    def final(self, plaintext: bytes) -> bytes:
        return self._tx.seal_final(plaintext)


class Encoder:
    """Lays out one answer inside the encryption. Subclasses: the table in the module docstring."""

    streams = False  # True: sends as the engine produces; False: the whole answer at ``end``

    def __init__(self, sealer: Sealer, minimum: int | None) -> None:
        self.sealer = sealer
        self.minimum = minimum

    def head(self, status: int, headers: bhttp.Fields) -> list[bytes]:
        raise NotImplementedError

    def body(self, piece: bytes) -> list[bytes]:
        raise NotImplementedError

    def end(self) -> list[bytes]:
        raise NotImplementedError


class WholeBhttp(Encoder):
    """The whole answer as one Binary HTTP message padded with RFC 9292 §3.8 zeros."""

    def __init__(self, sealer: Sealer, minimum: int | None, *, indeterminate: bool) -> None:
        super().__init__(sealer, minimum)
        self.indeterminate = indeterminate  # chunked OHTTP's decoder reads the indeterminate form
        self._status = 0
        self._headers: bhttp.Fields = []
        self._content = bytearray()

    def head(self, status: int, headers: bhttp.Fields) -> list[bytes]:
        self._status, self._headers = status, headers
        return []

    def body(self, piece: bytes) -> list[bytes]:
        self._content += piece
        return []

    def end(self) -> list[bytes]:
        response = bhttp.Response(self._status, self._headers, bytes(self._content))
        message = bhttp.encode_response(response, indeterminate=self.indeterminate)
        return self.sealer.message(pad_message(message, self.minimum))


class SseBhttp(Encoder):
    """A token stream as BHTTP content chunks: each chunk one bucket long (or raw when off)."""

    streams = True

    def __init__(self, sealer: Sealer, minimum: int | None) -> None:
        super().__init__(sealer, minimum)
        self._pad = SsePadder(minimum) if minimum is not None else None

    def head(self, status: int, headers: bhttp.Fields) -> list[bytes]:
        head = bhttp.encode_response_head(status, headers)
        return [self.sealer.chunk(self._pad.head(head) if self._pad else head)]

    def body(self, piece: bytes) -> list[bytes]:
        if self._pad is None:
            return [self.sealer.chunk(bhttp.encode_content_chunk(piece))] if piece else []
        return [self.sealer.chunk(p) for p in self._pad.feed(piece)]

    def end(self) -> list[bytes]:
        return [self.sealer.final(self._pad.final() if self._pad else bhttp.encode_response_end())]


class WholeJson(Encoder):
    """ohttpy's variant, whole answer: the JSON body padded with trailing whitespace."""

    def __init__(self, sealer: Sealer, minimum: int | None) -> None:
        super().__init__(sealer, minimum)
        self._content = bytearray()

    def head(self, status: int, headers: bhttp.Fields) -> list[bytes]:
        media = _media(headers)
        if self.minimum is not None and media != "application/json" and not media.endswith("+json"):
            # Nothing to pad in: only a JSON text takes trailing filler without changing meaning.
            raise Refusal(
                502,
                "gateway.unpaddable_answer",
                f"A {media or 'typeless'} answer cannot be padded for this client.",
                code="upstream_error",
            )
        return []

    def body(self, piece: bytes) -> list[bytes]:
        self._content += piece
        return []

    def end(self) -> list[bytes]:
        return self.sealer.message(pad_json(bytes(self._content), self.minimum))


class SseRaw(Encoder):
    """ohttpy's variant, token stream: raw body chunks, each filled to a bucket with an SSE comment."""

    streams = True

    def __init__(self, sealer: Sealer, minimum: int | None) -> None:
        super().__init__(sealer, minimum)
        self._pad = SsePadder(minimum, framed=False) if minimum is not None else None

    def head(self, status: int, headers: bhttp.Fields) -> list[bytes]:
        return []

    def body(self, piece: bytes) -> list[bytes]:
        if self._pad is None:
            return [self.sealer.chunk(piece)] if piece else []
        return [self.sealer.chunk(p) for p in self._pad.feed(piece)]

    def end(self) -> list[bytes]:
        return [self.sealer.final(self._pad.final() if self._pad else b"")]


def _media(headers: bhttp.Fields) -> str:
    for name, value in headers:
        if name == "content-type":
            return value.split(";", 1)[0].strip().lower()
    return ""


def is_event_stream(headers: bhttp.Fields) -> bool:
    return _media(headers) == "text/event-stream"


def choose_encoder(sealer: Sealer, headers: bhttp.Fields, padding: PaddingSettings) -> Encoder:
    """The one place the layout of an answer is decided (see the table in the module docstring)."""
    streamed = sealer.streams and is_event_stream(headers)
    if not sealer.bhttp:
        return SseRaw(sealer, padding.stream_chunks) if streamed else WholeJson(sealer, padding.responses)
    if streamed:
        return SseBhttp(sealer, padding.stream_chunks)
    return WholeBhttp(sealer, padding.responses, indeterminate=sealer.streams)
