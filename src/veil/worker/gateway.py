"""The worker's OHTTP gateway (RFC 9458 / RFC 9540): decrypt, forward to the engine, encrypt back.

Only outer-layer failures (wrong media type, unknown key, failed decryption, oversized body) are
answered in the clear, as ``{"error": {"reason", "message"}}``. Once a request has been opened,
every answer, errors included, goes back encrypted to that client. Nothing here logs plaintext:
log lines carry media types, sizes, status codes and reason codes only.

Inside the encryption the gateway also authenticates tenants and applies their rate limits and
prefix-cache salts (``tenants.py``), and pads answers to size buckets (``veil.ohttp.padding``); see
docs/tenants-and-padding.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from veil.errors import ParseError, ProtocolError, VeilError
from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedRequestReceiver, ChunkedResponseSender
from veil.ohttp.compat import CompatResponseSender
from veil.ohttp.keyconfig import KeyStore
from veil.ohttp.ohttp import ServerResponseContext, decapsulate_request
from veil.ohttp.padding import SsePadder, pad_message, split_whole
from veil.manifest import Manifest, PaddingSettings, TenantEntry
from veil.wire import (
    COMPAT_KEYS_PATH,
    COMPAT_PATH,
    GATEWAY_PATH,
    MEDIA_TYPE_CHUNKED_REQUEST,
    MEDIA_TYPE_CHUNKED_RESPONSE,
    MEDIA_TYPE_KEYS,
    MEDIA_TYPE_REQUEST,
    MEDIA_TYPE_RESPONSE,
)
from veil.worker.tenants import Admission, Tenancy

log = logging.getLogger("veil.worker.gateway")

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host", "content-length"}
)
_STRIP_RESPONSE = _HOP_BY_HOP | {"content-encoding"}


def _outer_error(status: int, err: VeilError) -> JSONResponse:
    log.info("ohttp gateway refused request: status=%d reason=%s", status, err.reason)
    return JSONResponse({"error": {"reason": err.reason, "message": err.message}}, status_code=status)


def _inner_error(status: int, reason: str, message: str) -> tuple[int, bhttp.Fields, bytes]:
    body = json.dumps({"error": {"reason": reason, "message": message}}).encode()
    return status, [("content-type", "application/json")], body


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProtocolError("ohttp.too_large", f"request body exceeds {limit} bytes")
    buf = bytearray()
    async for piece in request.stream():
        buf += piece
        if len(buf) > limit:
            raise ProtocolError("ohttp.too_large", f"request body exceeds {limit} bytes")
    return bytes(buf)


def _upstream_request(client: httpx.AsyncClient, req: bhttp.Request) -> httpx.Request:
    headers = [(n, v) for n, v in req.headers if n.lower() not in _HOP_BY_HOP]
    path = req.path if req.path.startswith("/") else "/" + req.path
    return client.build_request(req.method, path, headers=headers, content=req.content)


def _response_headers(resp: httpx.Response) -> bhttp.Fields:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in resp.headers.raw if k.decode("latin-1").lower() not in _STRIP_RESPONSE]


def _is_sse(resp: httpx.Response) -> bool:
    return resp.headers.get("content-type", "").split(";")[0].strip().lower() == "text/event-stream"


def _usage_tokens(headers: bhttp.Fields, content: bytes) -> int | None:
    """``usage.total_tokens`` of a JSON answer, for tokens-per-minute accounting (None if absent)."""
    if not any(n == "content-type" and "json" in v for n, v in headers) or len(content) > 1 << 20:
        return None
    try:
        total = json.loads(content).get("usage", {}).get("total_tokens")
    except (ValueError, AttributeError):
        return None
    return total if isinstance(total, int) and total >= 0 else None


class _Gateway:
    def __init__(
        self, keys: KeyStore, upstream: httpx.AsyncClient, max_request_bytes: int, limits: bhttp.Limits,
        tenancy: Tenancy, padding: PaddingSettings,
    ) -> None:
        self.keys = keys
        self.upstream = upstream
        self.max_request_bytes = max_request_bytes
        self.limits = limits
        self.tenancy = tenancy
        self.padding = padding

    def apply_manifest(self, manifest: Manifest, keys: KeyStore | None = None) -> None:
        """A newer manifest (from re-registration) takes effect for the next request."""
        self.tenancy = self.tenancy.updated(manifest.tenants)
        self.padding = manifest.padding or PaddingSettings()
        if keys is not None:
            self.keys = keys

    def _admit(self, plaintext: bytes) -> Admission | tuple[int, bhttp.Fields, bytes]:
        """Decode the inner request, then authenticate, rate-limit and rewrite it (tenants.py)."""
        try:
            req = bhttp.decode_request(plaintext, self.limits)
        except ParseError as err:
            return _inner_error(400, err.reason, err.message)
        got = self.tenancy.admit(req)
        if not isinstance(got, Admission):
            log.info("ohttp inner request refused: status=%d", got[0])
        return got

    async def keys_endpoint(self, request: Request) -> Response:
        return Response(self.keys.encode_configs(), media_type=MEDIA_TYPE_KEYS, headers={"cache-control": "max-age=300"})

    async def post(self, request: Request) -> Response:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media not in (MEDIA_TYPE_REQUEST, MEDIA_TYPE_CHUNKED_REQUEST):
            return _outer_error(415, ProtocolError("ohttp.bad_media_type", f"expected {MEDIA_TYPE_REQUEST} or {MEDIA_TYPE_CHUNKED_REQUEST}"))
        try:
            body = await _read_body(request, self.max_request_bytes)
        except ProtocolError as err:
            return _outer_error(413, err)
        log.info("ohttp request: media=%s bytes=%d", media, len(body))
        try:
            if media == MEDIA_TYPE_REQUEST:
                plaintext, ctx = decapsulate_request(self.keys, body)
                return await self._whole(plaintext, ctx)
            return await self._chunked(body)
        except (ProtocolError, ParseError) as err:
            return _outer_error(400, err)

    # -- message/ohttp-req: one encrypted answer ---------------------------------------------

    async def _whole(self, plaintext: bytes, ctx: ServerResponseContext) -> Response:
        status, headers, content = await self._forward_buffered(plaintext)
        inner = pad_message(bhttp.encode_response(bhttp.Response(status, headers, content)), self.padding.responses)
        log.info("ohttp response: media=%s status-inner=<encrypted> bytes=%d", MEDIA_TYPE_RESPONSE, len(inner))
        return Response(ctx.encapsulate_response(inner), media_type=MEDIA_TYPE_RESPONSE)

    async def _forward_buffered(self, plaintext: bytes) -> tuple[int, bhttp.Fields, bytes]:
        adm = self._admit(plaintext)
        if not isinstance(adm, Admission):
            return adm
        try:
            resp = await self.upstream.send(_upstream_request(self.upstream, adm.request))
        except httpx.HTTPError:
            return _inner_error(502, "gateway.upstream_unavailable", "the engine could not be reached")
        headers = _response_headers(resp)
        if adm.counts_tokens:
            adm.settle(total_tokens=_usage_tokens(headers, resp.content))
        return resp.status_code, headers, resp.content

    # -- message/ohttp-chunked-req: the draft, or ohttpy's variant ----------------------------

    async def _chunked(self, body: bytes) -> Response:
        try:
            rx = ChunkedRequestReceiver(self.keys)
            parts = rx.feed(body)
            parts.append(rx.close())
        except ProtocolError as err:
            if err.reason == "ohttp.unknown_key_id":
                raise
            draft_error: VeilError = err
        except ParseError as err:
            draft_error = err
        else:
            return await self._stream_draft(b"".join(parts), rx)
        # Not the draft's framing: ohttpy sends a plain RFC 9458 request under this media type.
        try:
            plaintext, ctx = decapsulate_request(self.keys, body)
        except (ProtocolError, ParseError):
            raise ProtocolError("ohttp.decrypt_failed", "request failed authentication") from draft_error
        return await self._stream_compat(plaintext, ctx)

    async def _open_upstream(
        self, plaintext: bytes
    ) -> tuple[httpx.Response | None, tuple[int, bhttp.Fields, bytes] | None, Admission | None]:
        adm = self._admit(plaintext)
        if not isinstance(adm, Admission):
            return None, adm, None
        try:
            return await self.upstream.send(_upstream_request(self.upstream, adm.request), stream=True), None, adm
        except httpx.HTTPError:
            return None, _inner_error(502, "gateway.upstream_unavailable", "the engine could not be reached"), None

    def _sealed_whole(self, tx: ChunkedResponseSender, status: int, headers: bhttp.Fields, content: bytes) -> list[bytes]:
        """A complete answer as chunked OHTTP: padded to a bucket, or head + content unpadded."""
        if self.padding.responses is None:
            return [
                tx.seal_chunk(bhttp.encode_response_head(status, headers)),
                tx.seal_final(bhttp.encode_content_chunk(content) + bhttp.encode_response_end()),
            ]
        message = bhttp.encode_response_head(status, headers) + bhttp.encode_content_chunk(content) + bhttp.encode_response_end()
        pieces, last = split_whole(pad_message(message, self.padding.responses))
        return [tx.seal_chunk(p) for p in pieces] + [tx.seal_final(last)]

    async def _stream_draft(self, plaintext: bytes, rx: ChunkedRequestReceiver) -> Response:
        tx: ChunkedResponseSender = rx.response_sender()
        resp, err, adm = await self._open_upstream(plaintext)

        async def body() -> AsyncIterator[bytes]:
            if resp is None:
                assert err is not None
                for out in self._sealed_whole(tx, *err):
                    yield out
                return
            headers = _response_headers(resp)
            events = 0
            try:
                if _is_sse(resp) and self.padding.stream_chunks is not None:
                    # Token stream: every chunk one bucket long, whatever the token text.
                    pad = SsePadder(self.padding.stream_chunks)
                    yield tx.seal_chunk(pad.head(bhttp.encode_response_head(resp.status_code, headers)))
                    async for piece in resp.aiter_bytes():
                        events += piece.count(b"data:")
                        for pt in pad.feed(piece):
                            yield tx.seal_chunk(pt)
                    yield tx.seal_final(pad.final())
                elif not _is_sse(resp) and self.padding.responses is not None:
                    # A whole answer (JSON): buffered, padded as one message.
                    content = await resp.aread()
                    if adm is not None and adm.counts_tokens:
                        adm.settle(total_tokens=_usage_tokens(headers, content))
                    for out in self._sealed_whole(tx, resp.status_code, headers, content):
                        yield out
                else:
                    yield tx.seal_chunk(bhttp.encode_response_head(resp.status_code, headers))
                    async for piece in resp.aiter_bytes():
                        if piece:
                            events += piece.count(b"data:")
                            yield tx.seal_chunk(bhttp.encode_content_chunk(piece))
                    yield tx.seal_final(bhttp.encode_response_end())
            except httpx.HTTPError:
                log.warning("ohttp stream: upstream failed mid-response; closing without a final chunk")
            finally:
                if adm is not None and adm.counts_tokens and _is_sse(resp):
                    adm.settle(stream_events=max(0, events - 1))  # minus the "data: [DONE]" event
                await resp.aclose()

        return StreamingResponse(body(), media_type=MEDIA_TYPE_CHUNKED_RESPONSE)

    async def _stream_compat(self, plaintext: bytes, ctx: ServerResponseContext) -> Response:
        # ohttpy's variant has no inner Binary HTTP response, so there is nowhere to pad.
        tx = CompatResponseSender(ctx)
        resp, err, _ = await self._open_upstream(plaintext)
        status = resp.status_code if resp is not None else err[0]  # type: ignore[index]

        async def body() -> AsyncIterator[bytes]:
            if resp is None:
                assert err is not None
                yield tx.seal_final(err[2])
                return
            try:
                async for piece in resp.aiter_bytes():
                    if piece:
                        yield tx.seal_chunk(piece)
                yield tx.seal_final(b"")
            except httpx.HTTPError:
                log.warning("ohttp stream: upstream failed mid-response; closing without a final chunk")
            finally:
                await resp.aclose()

        # ohttpy reads the status from the outer response: it is the one inner detail exposed.
        return StreamingResponse(body(), status_code=status, media_type=MEDIA_TYPE_CHUNKED_RESPONSE)


def create_gateway_app(
    keys: KeyStore,
    upstream: httpx.AsyncClient,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ohttpy_compat: bool = True,
    limits: bhttp.Limits = bhttp.DEFAULT_LIMITS,
    manifest: Manifest | None = None,
    engine: str | None = None,
    tenants: list[TenantEntry] | None = None,
    padding: PaddingSettings | None = None,
    tenant_salt_secret: bytes | None = None,
) -> Starlette:
    """Build the gateway ASGI app. ``upstream`` needs a ``base_url`` (e.g. ``http://engine`` over a UDS).

    ``manifest`` supplies ``tenants`` and ``padding`` (explicit arguments win); ``engine`` names the
    engine behind ``upstream`` (per-tenant ``cache_salt`` goes only to engines that take it, vLLM).
    ``tenant_salt_secret`` keys the prefix-cache salts; by default a fresh random one per worker.
    No tenants: no API key is required. Padding defaults: see :class:`veil.manifest.PaddingSettings`.
    """
    if tenants is None:
        tenants = manifest.tenants if manifest is not None else []
    if padding is None:
        padding = (manifest.padding if manifest is not None else None) or PaddingSettings()
    tenancy = Tenancy(tenants, salt_secret=tenant_salt_secret, engine=engine)
    gw = _Gateway(keys, upstream, max_request_bytes, limits, tenancy, padding)
    routes = [
        Route(GATEWAY_PATH, gw.keys_endpoint, methods=["GET"]),
        Route(GATEWAY_PATH, gw.post, methods=["POST"]),
    ]
    if ohttpy_compat:
        routes += [Route(COMPAT_PATH, gw.post, methods=["POST"]), Route(COMPAT_KEYS_PATH, gw.keys_endpoint, methods=["GET"])]
    app = Starlette(routes=routes)
    app.state.gateway = gw  # the worker applies newer manifests through it
    return app
