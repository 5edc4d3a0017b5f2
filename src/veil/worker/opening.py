"""Open: read one outer OHTTP request within bounds and decrypt it, in the framing its route names.

The framing is decided by the route and the media type before a byte is decrypted, never by
trying one decryption after another (a captured request must not be answerable in a weaker
framing than its sender chose):

====================================  ===========================  ==============================
route                                 media type                   framing
====================================  ===========================  ==============================
``/.well-known/ohttp-gateway``        ``message/ohttp-req``        RFC 9458, whole answer
``/.well-known/ohttp-gateway``        ``message/ohttp-chunked-req``  chunked OHTTP (draft -08)
``/score`` (only if the manifest      ``message/ohttp-chunked-req``  ohttpy's variant
enables ``gateway.ohttpy_compat``)
====================================  ===========================  ==============================

Chunked requests are decrypted as their bytes arrive, so the event loop never holds a whole
8 MiB body's worth of chunk work at once, and the chunk-count bound in ``veil.ohttp.chunked``
refuses a body of tiny chunks early. Every failure here is an outer error, answered in the clear:
nothing has been decrypted yet, or decryption failed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from starlette.requests import Request

from veil.errors import ParseError, ProtocolError, VeilError
from veil.ohttp.chunked import ChunkedRequestReceiver
from veil.ohttp.compat import CompatResponseSender
from veil.ohttp.keyconfig import KEM_ENC_LEN, KeyStore
from veil.ohttp.ohttp import HEADER_LEN, decapsulate_request, parse_header
from veil.worker.encoding import ChunkSealer, Sealer, WholeSealer
from veil.worker.replay import Claim, ReplayGuard


class Framing(enum.Enum):
    WHOLE = "rfc9458"
    CHUNKED = "chunked"
    COMPAT = "ohttpy"


@dataclass
class Opened:
    """A decrypted request: the inner Binary HTTP bytes and the sealer for its answer."""

    plaintext: bytes
    sealer: Sealer
    claim: Claim  # its entry in the replay cache


def _too_large(limit: int) -> ProtocolError:
    return ProtocolError("ohttp.too_large", f"request body exceeds {limit} bytes")


def _check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)


async def _read_all(request: Request, limit: int) -> bytes:
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) > limit:
            raise _too_large(limit)
    return bytes(buf)


def _enc_of(body: bytes) -> bytes:
    """The encapsulated key of an RFC 9458 request whose header has already been accepted."""
    _, kem_id, _ = parse_header(body)
    return body[HEADER_LEN : HEADER_LEN + KEM_ENC_LEN[kem_id]]


async def open_request(request: Request, framing: Framing, keys: KeyStore, replay: ReplayGuard, limit: int) -> Opened:
    """Read and decrypt; raises ``ProtocolError``/``ParseError`` (outer errors, in the clear)."""
    _check_declared(request, limit)
    if framing is Framing.CHUNKED:
        return await _open_chunked(request, keys, replay, limit)
    body = await _read_all(request, limit)
    plaintext, ctx = decapsulate_request(keys, body)  # authenticated before it can take a cache entry
    claim = replay.claim(_enc_of(body))
    sealer: Sealer = WholeSealer(ctx) if framing is Framing.WHOLE else ChunkSealer(CompatResponseSender(ctx), bhttp=False)
    return Opened(plaintext, sealer, claim)


async def _open_chunked(request: Request, keys: KeyStore, replay: ReplayGuard, limit: int) -> Opened:
    rx = ChunkedRequestReceiver(keys)
    parts: list[bytes] = []
    claim: Claim | None = None
    seen = 0
    try:
        async for piece in request.stream():
            seen += len(piece)
            if seen > limit:
                raise _too_large(limit)
            parts += rx.feed(piece)
            if claim is None and rx.enc is not None:
                claim = replay.claim(rx.enc)  # a replay is refused before its chunks are opened
        parts.append(rx.close())
    except VeilError:
        if claim is not None:
            replay.release(claim)  # it never authenticated: it must not take a cache entry
        raise
    if claim is None:  # close() succeeded, so the header arrived
        raise ParseError("ohttp.truncated", "request ended inside the header")
    return Opened(b"".join(parts), ChunkSealer(rx.response_sender()), claim)
