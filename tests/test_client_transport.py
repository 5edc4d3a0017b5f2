"""The client transports: sync and async shells around one sans-I/O core, each wrapping a transport.

Against the real gateway app (in-process through httpx's ASGI/mock transports): closing releases
exactly the wrapped transport, the caller's timeouts reach the outer exchange, a refusal body is
read only up to its cap, and a key source decides whether a refused request is re-sent.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from veil.client.transport import AsyncOhttpTransport, GatewayRefused, OhttpTransport
from veil.errors import ProtocolError
from veil.ohttp.keyconfig import KeyConfig, KeyPair, KeyStore
from veil.worker.gateway import create_gateway_app


async def _echo(request: Request) -> JSONResponse:
    return JSONResponse({"echo": await request.json()})


ENGINE = Starlette(routes=[Route("/v1/echo", _echo, methods=["POST"])])


def _gateway(keys: KeyStore) -> Starlette:
    upstream = httpx.ASGITransport(ENGINE)
    return create_gateway_app(keys, upstream)


class _SyncGateway(httpx.BaseTransport):
    """The gateway app behind a sync transport (a thread runs its event loop), recording calls."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.closed = 0
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = request.read()

        async def go() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(self.app), base_url="http://gw") as c:
                r = await c.post(request.url.path, content=body, headers=dict(request.headers))
                return httpx.Response(r.status_code, headers=r.headers, content=r.content)

        return asyncio.run(go())

    def close(self) -> None:
        self.closed += 1


class _AsyncGateway(httpx.ASGITransport):
    def __init__(self, app: Starlette) -> None:
        super().__init__(app)
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1


@pytest.mark.parametrize("chunked", [True, False])
def test_sync_transport_round_trip_and_close(chunked: bool) -> None:
    pair = KeyPair.generate(1)
    outer = _SyncGateway(_gateway(KeyStore([pair])))
    with httpx.Client(transport=OhttpTransport(pair.config, "http://gw", chunked=chunked, transport=outer)) as c:
        r = c.post("http://gw/v1/echo", json={"hi": 1}, timeout=7.5)
        assert r.json() == {"echo": {"hi": 1}}
    assert outer.closed == 1  # the wrapped transport, once; the transport opens nothing else
    assert outer.requests[0].extensions["timeout"]["read"] == 7.5  # the caller's timeout reaches the wire


def test_async_transport_round_trip_and_close() -> None:
    pair = KeyPair.generate(1)
    outer = _AsyncGateway(_gateway(KeyStore([pair])))

    async def go() -> None:
        async with httpx.AsyncClient(transport=AsyncOhttpTransport(pair.config, "http://gw", transport=outer)) as c:
            assert (await c.post("http://gw/v1/echo", json=[1, 2])).json() == {"echo": [1, 2]}

    asyncio.run(go())
    assert outer.closed == 1


def test_default_transports_are_plain_http_transports() -> None:
    pair = KeyPair.generate(1)
    assert isinstance(OhttpTransport(pair.config, "http://gw")._transport, httpx.HTTPTransport)
    assert isinstance(AsyncOhttpTransport(pair.config, "http://gw")._transport, httpx.AsyncHTTPTransport)
    assert not any(
        isinstance(v, (httpx.Client, httpx.AsyncClient)) for v in vars(OhttpTransport(pair.config, "http://gw")).values()
    )


class _RotatingSource:
    """A key source that knows the gateway's new key only after a refusal (like a re-verification)."""

    def __init__(self, first: KeyConfig, second: KeyConfig | None) -> None:
        self.current, self.second = first, second
        self.refusals: list[str] = []

    async def config(self) -> KeyConfig:
        return self.current

    async def refused(self, config: KeyConfig, err: GatewayRefused) -> KeyConfig | None:
        self.refusals.append(err.reason)
        if self.second is None:
            return None
        self.current = self.second
        return self.current


def test_a_refused_key_is_retried_once_with_the_sources_answer() -> None:
    old, new = KeyPair.generate(1), KeyPair.generate(2)
    source = _RotatingSource(old.config, new.config)

    async def go() -> None:
        t = AsyncOhttpTransport(source, "http://gw", transport=httpx.ASGITransport(_gateway(KeyStore([new]))))
        async with httpx.AsyncClient(transport=t) as c:
            assert (await c.post("http://gw/v1/echo", json="x")).json() == {"echo": "x"}

    asyncio.run(go())
    assert source.refusals == ["ohttp.unknown_key_id"]


def test_without_a_new_key_the_refusal_is_raised() -> None:
    source = _RotatingSource(KeyPair.generate(1).config, None)

    async def go() -> None:
        t = AsyncOhttpTransport(source, "http://gw", transport=httpx.ASGITransport(_gateway(KeyStore([KeyPair.generate(2)]))))
        async with httpx.AsyncClient(transport=t) as c:
            await c.post("http://gw/v1/echo", json="x")

    with pytest.raises(GatewayRefused) as info:
        asyncio.run(go())
    assert info.value.reason == "ohttp.unknown_key_id" and source.refusals == ["ohttp.unknown_key_id"]


def test_a_huge_refusal_body_is_not_buffered() -> None:
    """A hostile gateway answering 400 with an endless body: the transport reads its cap, no more."""
    sent = 0

    def endless():
        nonlocal sent
        while sent < 1 << 30:
            sent += 1 << 16
            yield b" " * (1 << 16)

    outer = httpx.MockTransport(lambda req: httpx.Response(400, content=endless()))
    with httpx.Client(transport=OhttpTransport(KeyPair.generate(1).config, "http://gw", transport=outer)) as c:
        with pytest.raises(ProtocolError) as info:
            c.post("http://gw/v1/echo", json="x")
    assert info.value.reason == "ohttp.gateway_error" and sent <= 2 << 16


def test_refusal_reason_comes_from_the_gateways_json() -> None:
    body = json.dumps({"error": {"reason": "ohttp.too_large", "message": "big"}}).encode()
    outer = httpx.MockTransport(lambda req: httpx.Response(413, content=body))
    with httpx.Client(transport=OhttpTransport(KeyPair.generate(1).config, "http://gw", transport=outer)) as c:
        with pytest.raises(GatewayRefused) as info:
            c.post("http://gw/v1/echo", json="x")
    assert info.value.reason == "ohttp.too_large"
