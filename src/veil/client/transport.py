"""httpx transports that send every request through Oblivious HTTP to a Veil gateway.

Plug into any httpx-based SDK (the ``openai`` SDK included)::

    http_client = httpx.Client(transport=OhttpTransport(key_config, "https://gateway.example"))
    client = openai.OpenAI(base_url="https://gateway.example/v1", api_key="x", http_client=http_client)

By default the response uses chunked OHTTP, so a streamed completion is decrypted and handed to
the caller chunk by chunk as the engine produces it. The inner request is padded with zero bytes
(RFC 9292 §3.8) to the next power of two >= ``pad_requests`` (256 by default; None: off), so its
size reveals only a bucket (docs/tenants-and-padding.md).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate

import httpx

from veil.errors import ParseError, ProtocolError
from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedRequestSender, ChunkedResponseReceiver
from veil.ohttp.keyconfig import KeyConfig, SymmetricSuite, decode_key_config_list
from veil.ohttp.ohttp import ClientResponseContext, encapsulate_request
from veil.ohttp.padding import pad_message
from veil.wire import (
    DEFAULT_REQUEST_PADDING,
    GATEWAY_PATH,
    MEDIA_TYPE_CHUNKED_REQUEST,
    MEDIA_TYPE_CHUNKED_RESPONSE,
    MEDIA_TYPE_REQUEST,
    MEDIA_TYPE_RESPONSE,
)

REQUEST_CHUNK = 16 * 1024


def _as_config(key_config: KeyConfig | bytes) -> KeyConfig:
    if isinstance(key_config, KeyConfig):
        return key_config
    try:
        return KeyConfig.decode(key_config)
    except ParseError:
        return decode_key_config_list(key_config)[0]  # an application/ohttp-keys body


def _gateway_url(url: str) -> httpx.URL:
    parsed = httpx.URL(url)
    if parsed.path in ("", "/"):
        parsed = parsed.copy_with(path=GATEWAY_PATH)
    return parsed


def _inner_request(request: httpx.Request, body: bytes) -> bhttp.Request:
    url = request.url
    path = url.raw_path.decode("ascii") or "/"
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers.raw]
    headers = [(k, v) for k, v in headers if k not in ("host", "connection", "transfer-encoding", "content-length", "date")]
    headers.append(("date", formatdate(usegmt=True)))  # inside the encryption: replays expire (RFC 9458 §6.5)
    if body:
        headers.append(("content-length", str(len(body))))
    return bhttp.Request(request.method, url.scheme, url.netloc.decode("ascii"), path, headers, body)


def _is_media(resp: httpx.Response, expected: str) -> bool:
    return resp.headers.get("content-type", "").split(";")[0].strip().lower() == expected


def _outer_failure(status: int, body: bytes) -> ProtocolError:
    try:
        err = json.loads(body)["error"]
        return ProtocolError(str(err["reason"]), str(err.get("message", "")))
    except Exception:
        return ProtocolError("ohttp.gateway_error", f"gateway answered HTTP {status}")


class _Core:
    """What the sync and async transports share: encryption and decryption, no I/O."""

    def __init__(
        self, key_config: KeyConfig | bytes, gateway_url: str, chunked: bool, suite: SymmetricSuite | None,
        pad_requests: int | None = DEFAULT_REQUEST_PADDING,
    ) -> None:
        self.config = _as_config(key_config)
        self.url = _gateway_url(gateway_url)
        self.chunked = chunked
        self.suite = suite
        self.pad_requests = pad_requests

    def encrypt(self, request: httpx.Request, body: bytes) -> tuple[bytes, str, object]:
        inner = _inner_request(request, body)
        if not self.chunked:
            plain = pad_message(bhttp.encode_request(inner), self.pad_requests)  # RFC 9292 §3.8 zeros
            enc, ctx = encapsulate_request(self.config, plain, suite=self.suite)
            return enc, MEDIA_TYPE_REQUEST, ctx
        tx = ChunkedRequestSender(self.config, suite=self.suite)
        plain = pad_message(bhttp.encode_request(inner, indeterminate=True), self.pad_requests)
        pieces = [plain[i : i + REQUEST_CHUNK] for i in range(0, len(plain), REQUEST_CHUNK)] or [b""]
        wire = tx.header + b"".join(tx.seal_chunk(p) for p in pieces[:-1]) + tx.seal_final(pieces[-1])
        return wire, MEDIA_TYPE_CHUNKED_REQUEST, tx

    def outer_request(self, body: bytes, media: str) -> httpx.Request:
        accept = MEDIA_TYPE_CHUNKED_RESPONSE if media == MEDIA_TYPE_CHUNKED_REQUEST else MEDIA_TYPE_RESPONSE
        return httpx.Request("POST", self.url, content=body, headers={"content-type": media, "accept": accept})

    @staticmethod
    def check_outer(resp: httpx.Response, expected: str, body: bytes) -> None:
        if resp.status_code != 200 or not _is_media(resp, expected):
            raise _outer_failure(resp.status_code, body)

    @staticmethod
    def whole_response(request: httpx.Request, ctx: ClientResponseContext, body: bytes) -> httpx.Response:
        inner = bhttp.decode_response(ctx.decapsulate_response(body))
        return httpx.Response(inner.status, headers=inner.headers, content=inner.content, request=request)


class _Decryptor:
    """Feeds chunked OHTTP bytes through decryption and the incremental BHTTP decoder."""

    def __init__(self, tx: ChunkedRequestSender) -> None:
        self.rx: ChunkedResponseReceiver = tx.response_receiver()
        self.decoder = bhttp.ResponseStreamDecoder()
        self.closed = False

    def feed(self, data: bytes) -> list[bhttp.Event]:
        events: list[bhttp.Event] = []
        for pt in self.rx.feed(data):
            events += self.decoder.feed(pt)
        return events

    def close(self) -> list[bhttp.Event]:
        if self.closed:
            return []
        self.closed = True
        events = self.decoder.feed(self.rx.close())
        self.decoder.close()
        return events


class OhttpTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Encrypts each request to ``key_config`` and POSTs it to the gateway at ``gateway_url``.

    ``gateway_url`` may be a base URL (``/.well-known/ohttp-gateway`` is then appended) or the full
    gateway endpoint. The inner request keeps its own URL path (e.g. ``/v1/chat/completions``).
    Relays only ever see the outer POST. Works both as a sync and an async transport.
    """

    def __init__(
        self,
        key_config: KeyConfig | bytes,
        gateway_url: str,
        *,
        chunked: bool = True,
        suite: SymmetricSuite | None = None,
        outer_transport: httpx.BaseTransport | None = None,
        async_outer_transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | float | None = 60.0,
        pad_requests: int | None = DEFAULT_REQUEST_PADDING,
    ) -> None:
        self._core = _Core(key_config, gateway_url, chunked, suite, pad_requests)
        self._sync = httpx.Client(transport=outer_transport, timeout=timeout)
        self._async = httpx.AsyncClient(transport=async_outer_transport, timeout=timeout)

    # -- sync ---------------------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        wire, media, ctx = self._core.encrypt(request, body)
        outer = self._sync.send(self._core.outer_request(wire, media), stream=True)
        if not self._core.chunked:
            try:
                data = outer.read()
            finally:
                outer.close()
            self._core.check_outer(outer, MEDIA_TYPE_RESPONSE, data)
            return self._core.whole_response(request, ctx, data)  # type: ignore[arg-type]
        if outer.status_code != 200 or not _is_media(outer, MEDIA_TYPE_CHUNKED_RESPONSE):
            data = outer.read()
            outer.close()
            raise _outer_failure(outer.status_code, data)
        dec = _Decryptor(ctx)  # type: ignore[arg-type]
        pending: list[bytes] = []
        raw = outer.iter_raw()
        try:
            while dec.decoder.head is None:
                try:
                    piece = next(raw)
                except StopIteration:  # the whole (padded) answer may sit in the final chunk
                    pending += [e.data for e in dec.close() if isinstance(e, bhttp.BodyChunk)]
                    if dec.decoder.head is None:
                        raise ProtocolError("chunked.truncated", "response ended before its head") from None
                    break
                pending += [e.data for e in dec.feed(piece) if isinstance(e, bhttp.BodyChunk)]
        except BaseException:
            outer.close()
            raise
        head = dec.decoder.head
        return httpx.Response(head.status, headers=head.headers, stream=_SyncStream(outer, raw, dec, pending), request=request)

    def close(self) -> None:
        self._sync.close()

    # -- async --------------------------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        wire, media, ctx = self._core.encrypt(request, body)
        outer = await self._async.send(self._core.outer_request(wire, media), stream=True)
        if not self._core.chunked:
            try:
                data = await outer.aread()
            finally:
                await outer.aclose()
            self._core.check_outer(outer, MEDIA_TYPE_RESPONSE, data)
            return self._core.whole_response(request, ctx, data)  # type: ignore[arg-type]
        if outer.status_code != 200 or not _is_media(outer, MEDIA_TYPE_CHUNKED_RESPONSE):
            data = await outer.aread()
            await outer.aclose()
            raise _outer_failure(outer.status_code, data)
        dec = _Decryptor(ctx)  # type: ignore[arg-type]
        pending: list[bytes] = []
        raw = outer.aiter_raw()
        try:
            while dec.decoder.head is None:
                try:
                    piece = await raw.__anext__()
                except StopAsyncIteration:  # the whole (padded) answer may sit in the final chunk
                    pending += [e.data for e in dec.close() if isinstance(e, bhttp.BodyChunk)]
                    if dec.decoder.head is None:
                        raise ProtocolError("chunked.truncated", "response ended before its head") from None
                    break
                pending += [e.data for e in dec.feed(piece) if isinstance(e, bhttp.BodyChunk)]
        except BaseException:
            await outer.aclose()
            raise
        head = dec.decoder.head
        return httpx.Response(head.status, headers=head.headers, stream=_AsyncStream(outer, raw, dec, pending), request=request)

    async def aclose(self) -> None:
        await self._async.aclose()


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, outer: httpx.Response, raw: Iterator[bytes], dec: _Decryptor, pending: list[bytes]) -> None:
        self._outer, self._raw, self._dec, self._pending = outer, raw, dec, pending

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._pending
            for piece in self._raw:
                for e in self._dec.feed(piece):
                    if isinstance(e, bhttp.BodyChunk):
                        yield e.data
            for e in self._dec.close():
                if isinstance(e, bhttp.BodyChunk):
                    yield e.data
        finally:
            self._outer.close()

    def close(self) -> None:
        self._outer.close()


class _AsyncStream(httpx.AsyncByteStream):
    def __init__(self, outer: httpx.Response, raw: AsyncIterator[bytes], dec: _Decryptor, pending: list[bytes]) -> None:
        self._outer, self._raw, self._dec, self._pending = outer, raw, dec, pending

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            for p in self._pending:
                yield p
            async for piece in self._raw:
                for e in self._dec.feed(piece):
                    if isinstance(e, bhttp.BodyChunk):
                        yield e.data
            for e in self._dec.close():
                if isinstance(e, bhttp.BodyChunk):
                    yield e.data
        finally:
            await self._outer.aclose()

    async def aclose(self) -> None:
        await self._outer.aclose()
