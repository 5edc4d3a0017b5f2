"""httpx transports that send every request through Oblivious HTTP to a Veil gateway.

Plug into any httpx-based SDK (the ``openai`` SDK included)::

    http_client = httpx.Client(transport=OhttpTransport(key_config, "https://gateway.example"))
    client = openai.OpenAI(base_url="https://gateway.example/v1", api_key="x", http_client=http_client)

``OhttpTransport`` (sync) and ``AsyncOhttpTransport`` (asyncio) are two thin I/O shells around
one sans-I/O core (``_Core``: encrypt, pad, decrypt), as httpx itself splits ``HTTPTransport``
and ``AsyncHTTPTransport``. Each wraps an httpx *transport* (default: a plain HTTP transport),
never a client, so closing it closes exactly what it opened.

By default the response uses chunked OHTTP, so a streamed completion is decrypted and handed to
the caller chunk by chunk as the engine produces it. The inner request is padded with zero bytes
(RFC 9292 §3.8) to the next power of two >= ``pad_requests`` (256 by default; None: off), so its
size reveals only a bucket (docs/tenants-and-padding.md).

The key configuration comes from a *key source*: a fixed ``KeyConfig`` (the caller verified it),
or a ``veil.client.freshness`` verifier that hands out only keys of its current attestation and
re-verifies when the gateway refuses a request (a rotated key, a gateway that changed).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from email.utils import formatdate
from typing import Protocol

import httpx

from veil.errors import ParseError, ProtocolError
from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedRequestSender, ChunkedResponseReceiver
from veil.ohttp.keyconfig import KeyConfig, SymmetricSuite, decode_key_config_list
from veil.ohttp.ohttp import ClientResponseContext, encapsulate_request
from veil.ohttp.padding import pad_message
from veil.ohttp.preference import choose_suite
from veil.wire import (
    DEFAULT_REQUEST_PADDING,
    GATEWAY_PATH,
    MEDIA_TYPE_CHUNKED_REQUEST,
    MEDIA_TYPE_CHUNKED_RESPONSE,
    MEDIA_TYPE_REQUEST,
    MEDIA_TYPE_RESPONSE,
)

REQUEST_CHUNK = 16 * 1024
MAX_REFUSAL_BYTES = 64 * 1024  # a clear-text gateway refusal is a small JSON object


class GatewayRefused(ProtocolError):
    """The gateway refused the encrypted request before opening it (outer layer, in the clear).

    Nothing was decrypted, so the request may be sent again, e.g. to a re-verified key."""


class KeySource(Protocol):
    """Where :class:`OhttpTransport` gets the configuration to encrypt to."""

    def config(self) -> KeyConfig:
        """The configuration for the next request (raises when none may be used)."""
        ...

    def refused(self, config: KeyConfig, err: GatewayRefused) -> KeyConfig | None:
        """The gateway refused a request sent to ``config``: a configuration to retry with, or None."""
        ...


class AsyncKeySource(Protocol):
    """The asyncio twin of :class:`KeySource`, for :class:`AsyncOhttpTransport`."""

    async def config(self) -> KeyConfig: ...

    async def refused(self, config: KeyConfig, err: GatewayRefused) -> KeyConfig | None: ...


class _FixedKey:
    """A configuration the caller verified itself: always the same one, never a retry."""

    def __init__(self, config: KeyConfig) -> None:
        self._config = config

    def config(self) -> KeyConfig:
        return self._config

    def refused(self, config: KeyConfig, err: GatewayRefused) -> KeyConfig | None:
        return None


class _AsyncFixedKey:
    def __init__(self, config: KeyConfig) -> None:
        self._config = config

    async def config(self) -> KeyConfig:
        return self._config

    async def refused(self, config: KeyConfig, err: GatewayRefused) -> KeyConfig | None:
        return None


def as_key_config(key_config: KeyConfig | bytes) -> KeyConfig:
    """One configuration, or Veil's choice from an ``application/ohttp-keys`` body (X-Wing first)."""
    if isinstance(key_config, KeyConfig):
        return key_config
    try:
        return KeyConfig.decode(key_config)
    except ParseError:
        return choose_suite(decode_key_config_list(key_config)).config


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
    return str(resp.headers.get("content-type", "")).split(";")[0].strip().lower() == expected


def _refusal(status: int, body: bytes) -> GatewayRefused:
    try:
        err = json.loads(body)["error"]
        return GatewayRefused(str(err["reason"]), str(err.get("message", "")))
    except Exception:
        return GatewayRefused("ohttp.gateway_error", f"gateway answered HTTP {status}")


class _Core:
    """What the sync and async transports share: encryption, framing and decryption, no I/O."""

    def __init__(
        self,
        gateway_url: str,
        chunked: bool,
        suite: SymmetricSuite | None,
        pad_requests: int | None,
    ) -> None:
        self.url = _gateway_url(gateway_url)
        self.chunked = chunked
        self.suite = suite
        self.pad_requests = pad_requests

    def seal(
        self, config: KeyConfig, request: httpx.Request, body: bytes
    ) -> tuple[httpx.Request, ClientResponseContext | ChunkedRequestSender]:
        """The outer POST carrying ``request`` encrypted to ``config``, and its response context."""
        inner = _inner_request(request, body)
        ctx: ClientResponseContext | ChunkedRequestSender
        if not self.chunked:
            plain = pad_message(bhttp.encode_request(inner), self.pad_requests)  # RFC 9292 §3.8 zeros
            wire, ctx = encapsulate_request(config, plain, suite=self.suite)
            media, accept = MEDIA_TYPE_REQUEST, MEDIA_TYPE_RESPONSE
        else:
            tx = ChunkedRequestSender(config, suite=self.suite)
            plain = pad_message(bhttp.encode_request(inner, indeterminate=True), self.pad_requests)
            pieces = [plain[i : i + REQUEST_CHUNK] for i in range(0, len(plain), REQUEST_CHUNK)] or [b""]
            wire = tx.header + b"".join(tx.seal_chunk(p) for p in pieces[:-1]) + tx.seal_final(pieces[-1])
            ctx, media, accept = tx, MEDIA_TYPE_CHUNKED_REQUEST, MEDIA_TYPE_CHUNKED_RESPONSE
        # the caller's timeouts apply to the outer exchange, which is the only one on the wire
        extensions = {k: v for k, v in request.extensions.items() if k == "timeout"}
        outer = httpx.Request(
            "POST", self.url, content=wire, headers={"content-type": media, "accept": accept}, extensions=extensions
        )
        return outer, ctx

    def refused(self, outer: httpx.Response) -> bool:
        expected = MEDIA_TYPE_CHUNKED_RESPONSE if self.chunked else MEDIA_TYPE_RESPONSE
        return outer.status_code != 200 or not _is_media(outer, expected)

    @staticmethod
    def whole_response(request: httpx.Request, ctx: ClientResponseContext, body: bytes) -> httpx.Response:
        inner = bhttp.decode_response(ctx.decapsulate_response(body))
        return httpx.Response(inner.status, headers=inner.headers, content=inner.content, request=request)

    @staticmethod
    def head_response(
        request: httpx.Request, dec: _Decryptor, stream: httpx.SyncByteStream | httpx.AsyncByteStream
    ) -> httpx.Response:
        head = dec.decoder.head
        assert head is not None
        return httpx.Response(head.status, headers=head.headers, stream=stream, request=request)


class _Decryptor:
    """Feeds chunked OHTTP bytes through decryption and the incremental BHTTP decoder.

    ``feed`` returns the body pieces decrypted so far; ``close`` checks the final chunk (a stream
    cut before it raises ``chunked.truncated``) and returns what it held.
    """

    def __init__(self, tx: ChunkedRequestSender) -> None:
        self.rx: ChunkedResponseReceiver = tx.response_receiver()
        self.decoder = bhttp.ResponseStreamDecoder()
        self.closed = False

    def feed(self, data: bytes) -> list[bytes]:
        events: list[bhttp.Event] = []
        for pt in self.rx.feed(data):
            events += self.decoder.feed(pt)
        return [e.data for e in events if isinstance(e, bhttp.BodyChunk)]

    def close(self) -> list[bytes]:
        if self.closed:
            return []
        self.closed = True
        events = self.decoder.feed(self.rx.close())
        self.decoder.close()
        return [e.data for e in events if isinstance(e, bhttp.BodyChunk)]

    def require_head(self) -> None:
        if self.decoder.head is None:
            raise ProtocolError("chunked.truncated", "response ended before its head")


class OhttpTransport(httpx.BaseTransport):
    """Encrypts each request and POSTs it to the gateway at ``gateway_url`` (synchronous).

    ``keys``: a verified ``KeyConfig`` (or ``application/ohttp-keys`` bytes), or a :class:`KeySource`
    such as ``veil.client.freshness.Reverifier``. ``gateway_url`` may be a base URL
    (``/.well-known/ohttp-gateway`` is then appended) or the full gateway endpoint. The inner
    request keeps its own URL path (e.g. ``/v1/chat/completions``); relays only ever see the outer
    POST. ``transport`` carries the outer POST (default: ``httpx.HTTPTransport()``).
    """

    def __init__(
        self,
        keys: KeyConfig | bytes | KeySource,
        gateway_url: str,
        *,
        chunked: bool = True,
        suite: SymmetricSuite | None = None,
        transport: httpx.BaseTransport | None = None,
        pad_requests: int | None = DEFAULT_REQUEST_PADDING,
    ) -> None:
        self._keys: KeySource = _FixedKey(as_key_config(keys)) if isinstance(keys, (KeyConfig, bytes)) else keys
        self._core = _Core(gateway_url, chunked, suite, pad_requests)
        self._transport = transport or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        config = self._keys.config()
        try:
            return self._exchange(request, body, config)
        except GatewayRefused as err:
            retry = self._keys.refused(config, err)
            if retry is None:
                raise
            return self._exchange(request, body, retry)

    def _exchange(self, request: httpx.Request, body: bytes, config: KeyConfig) -> httpx.Response:
        outer_request, ctx = self._core.seal(config, request, body)
        outer = self._transport.handle_request(outer_request)
        try:
            if self._core.refused(outer):
                raise _refusal(outer.status_code, _read_some(outer.iter_bytes(), MAX_REFUSAL_BYTES))
            if not self._core.chunked:
                return self._core.whole_response(request, ctx, outer.read())  # type: ignore[arg-type]
            dec = _Decryptor(ctx)  # type: ignore[arg-type]
            raw = outer.iter_bytes()
            pending: list[bytes] = []
            while dec.decoder.head is None:
                piece = next(raw, None)
                if piece is None:  # the whole (padded) answer may sit in the final chunk
                    pending += dec.close()
                    dec.require_head()
                    break
                pending += dec.feed(piece)
        except BaseException:
            outer.close()
            raise
        return self._core.head_response(request, dec, _SyncStream(outer, raw, dec, pending))

    def close(self) -> None:
        self._transport.close()


class AsyncOhttpTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`OhttpTransport` (``transport``: default ``httpx.AsyncHTTPTransport()``)."""

    def __init__(
        self,
        keys: KeyConfig | bytes | AsyncKeySource,
        gateway_url: str,
        *,
        chunked: bool = True,
        suite: SymmetricSuite | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        pad_requests: int | None = DEFAULT_REQUEST_PADDING,
    ) -> None:
        self._keys: AsyncKeySource = _AsyncFixedKey(as_key_config(keys)) if isinstance(keys, (KeyConfig, bytes)) else keys
        self._core = _Core(gateway_url, chunked, suite, pad_requests)
        self._transport = transport or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        config = await self._keys.config()
        try:
            return await self._exchange(request, body, config)
        except GatewayRefused as err:
            retry = await self._keys.refused(config, err)
            if retry is None:
                raise
            return await self._exchange(request, body, retry)

    async def _exchange(self, request: httpx.Request, body: bytes, config: KeyConfig) -> httpx.Response:
        outer_request, ctx = self._core.seal(config, request, body)
        outer = await self._transport.handle_async_request(outer_request)
        try:
            if self._core.refused(outer):
                raise _refusal(outer.status_code, await _aread_some(outer.aiter_bytes(), MAX_REFUSAL_BYTES))
            if not self._core.chunked:
                return self._core.whole_response(request, ctx, await outer.aread())  # type: ignore[arg-type]
            dec = _Decryptor(ctx)  # type: ignore[arg-type]
            raw = outer.aiter_bytes()
            pending: list[bytes] = []
            while dec.decoder.head is None:
                piece = await anext(raw, None)
                if piece is None:  # the whole (padded) answer may sit in the final chunk
                    pending += dec.close()
                    dec.require_head()
                    break
                pending += dec.feed(piece)
        except BaseException:
            await outer.aclose()
            raise
        return self._core.head_response(request, dec, _AsyncStream(outer, raw, dec, pending))

    async def aclose(self) -> None:
        await self._transport.aclose()


def _read_some(raw: Iterator[bytes], limit: int) -> bytes:
    buf = bytearray()
    for piece in raw:
        buf += piece
        if len(buf) > limit:
            break
    return bytes(buf)


async def _aread_some(raw: AsyncIterator[bytes], limit: int) -> bytes:
    buf = bytearray()
    async for piece in raw:
        buf += piece
        if len(buf) > limit:
            break
    return bytes(buf)


class _SyncStream(httpx.SyncByteStream):
    def __init__(self, outer: httpx.Response, raw: Iterator[bytes], dec: _Decryptor, pending: list[bytes]) -> None:
        self._outer, self._raw, self._dec, self._pending = outer, raw, dec, pending

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._pending
            for piece in self._raw:
                yield from self._dec.feed(piece)
            yield from self._dec.close()
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
                for p in self._dec.feed(piece):
                    yield p
            for p in self._dec.close():
                yield p
        finally:
            await self._outer.aclose()

    async def aclose(self) -> None:
        await self._outer.aclose()
