"""Forward: an admitted inner request → the engine on its Unix socket, and the engine's answer back.

The engine is untrusted AI code. It gets what it needs to answer and nothing that identifies or
tracks the caller: the method, the path and query, the body, and only the request headers in
:data:`FORWARDED_HEADERS`. Cookies, ``Referer``, ``Origin``, ``User-Agent``, ``X-Forwarded-For``,
the OpenAI SDK's ``x-stainless-*`` telemetry, API keys and the client's ``Date`` all stay in the
gateway. Engine failures become encrypted refusals (``gateway.upstream_*``).

``upstream`` is an httpx *transport* (``EngineLink`` in a worker, ``httpx.ASGITransport`` around an
in-process engine in tests), called directly: no client-side defaults, cookies or redirects, and
the answer's body is read as the transport delivers it (no decoding: we ask for none, and refuse
an answer that arrives encoded anyway).
"""

from __future__ import annotations

import functools

import httpx

from veil.ohttp import bhttp
from veil.worker.refusals import Refusal

#: The inner request headers an engine receives; every other header is dropped (an allowlist).
FORWARDED_HEADERS = frozenset({"accept", "content-type"})
#: Engine response headers that describe the engine's own connection, not the answer.
_STRIP_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


def upstream_request(req: bhttp.Request) -> httpx.Request:
    headers = [(n, v) for n, v in req.headers if n.lower() in FORWARDED_HEADERS]
    return httpx.Request(req.method, _engine_url(req.path), headers=headers, content=req.content)


@functools.lru_cache(maxsize=256)
def _engine_url(path: str) -> httpx.URL:
    """The engine URL of an inner path, parsed once per path (httpx's URL parsing is a good part
    of a request's fixed cost, and clients use a handful of paths)."""
    return httpx.URL("http://engine" + (path if path.startswith("/") else "/" + path))


async def open_upstream(upstream: httpx.AsyncBaseTransport, req: bhttp.Request) -> httpx.Response:
    """Send the request and return once the engine's answer head has arrived (body still streaming)."""
    try:
        return await upstream.handle_async_request(upstream_request(req))
    except httpx.HTTPError:
        raise unavailable() from None


def answer_body(resp: httpx.Response) -> httpx.AsyncByteStream:
    """The answer's body as the transport delivers it (pieces as they arrived); ``aclose`` it."""
    stream = resp.stream
    assert isinstance(stream, httpx.AsyncByteStream), "the engine hop is an async transport"
    return stream


def answer_headers(resp: httpx.Response) -> bhttp.Fields:
    """The engine's answer headers that travel (encrypted) to the client."""
    out: bhttp.Fields = []
    for raw_name, raw_value in resp.headers.raw:
        name = raw_name.decode("latin-1").lower()
        if name == "content-encoding" and raw_value.strip().lower() not in (b"", b"identity"):
            raise failed()  # we asked for none: an encoded body would reach the client undecodable
        if name not in _STRIP_RESPONSE:
            out.append((name, raw_value.decode("latin-1")))
    return out


async def read_whole(resp: httpx.Response, limit: int) -> bytes:
    """A whole (non-streamed) answer, at most ``limit`` bytes: the engine cannot exhaust our memory."""
    buf = bytearray()
    try:
        async for piece in answer_body(resp):
            buf += piece
            if len(buf) > limit:
                raise Refusal(
                    502, "gateway.answer_too_large", "The engine's answer exceeds the gateway's limit.", code="upstream_error"
                )
    except httpx.HTTPError:
        raise failed() from None
    return bytes(buf)


def unavailable() -> Refusal:
    return Refusal(502, "gateway.upstream_unavailable", "The engine could not be reached.", code="upstream_unavailable")


def failed() -> Refusal:
    return Refusal(502, "gateway.upstream_failed", "The engine failed while answering.", code="upstream_error")
