"""The OHTTP gateway in-process: key discovery, both encapsulations, outer errors, no plaintext logs."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from veil.client.transport import OhttpTransport
from veil.errors import ProtocolError
from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedRequestSender
from veil.ohttp.keyconfig import KeyPair, KeyStore, SymmetricSuite, decode_key_config_list
from veil.ohttp.ohttp import encapsulate_request
from veil.worker.gateway import create_gateway_app

CANARY = "CANARY-7f3a9-do-not-log"


async def _chat(request: Request) -> Response:
    body = await request.json()
    if body.get("stream"):

        async def gen() -> AsyncIterator[bytes]:
            for tok in ("Hel", "lo", CANARY):
                yield f"data: {json.dumps({'tok': tok})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")
    return JSONResponse({"echo": body, "path": request.url.path, "query": request.url.query, "auth": request.headers.get("authorization")})


async def _boom(request: Request) -> Response:
    return JSONResponse({"detail": "nope"}, status_code=404)


UPSTREAM = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"]), Route("/v1/missing", _boom, methods=["GET"])])


@pytest.fixture
def pair() -> KeyPair:
    return KeyPair.generate(4)


def _app(pair: KeyPair, **kw: object) -> Starlette:
    upstream = httpx.AsyncClient(transport=httpx.ASGITransport(UPSTREAM), base_url="http://engine")
    return create_gateway_app(KeyStore([pair]), upstream, **kw)  # type: ignore[arg-type]


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw")


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_key_discovery(pair: KeyPair) -> None:
    async def go() -> None:
        async with _client(_app(pair)) as c:
            for path in ("/.well-known/ohttp-gateway", "/discover"):
                r = await c.get(path)
                assert r.status_code == 200 and r.headers["content-type"] == "application/ohttp-keys"
                assert decode_key_config_list(r.content) == [pair.config]

    _run(go())


@pytest.mark.parametrize("chunked", [False, True])
def test_own_transport_plain_and_stream(pair: KeyPair, chunked: bool) -> None:
    async def go() -> None:
        t = OhttpTransport(pair.config, "http://gw", chunked=chunked, async_outer_transport=httpx.ASGITransport(_app(pair)))
        async with httpx.AsyncClient(transport=t) as c:
            r = await c.post("http://api.local/v1/chat/completions?a=1", json={"q": 1}, headers={"authorization": "Bearer k"})
            assert r.status_code == 200
            assert r.json() == {"echo": {"q": 1}, "path": "/v1/chat/completions", "query": "a=1", "auth": "Bearer k"}
            r = await c.post("http://api.local/v1/chat/completions", json={"stream": True})
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.text.count("data:") == 4
            r = await c.get("http://api.local/v1/missing")
            assert r.status_code == 404 and r.json() == {"detail": "nope"}

    _run(go())


def test_outer_errors_are_json_in_the_clear(pair: KeyPair) -> None:
    async def go() -> None:
        async with _client(_app(pair, max_request_bytes=1000)) as c:
            r = await c.post("/.well-known/ohttp-gateway", content=b"x", headers={"content-type": "application/json"})
            assert r.status_code == 415 and r.json()["error"]["reason"] == "ohttp.bad_media_type"

            enc, _ = encapsulate_request(KeyPair.generate(9).config, b"x")
            r = await c.post("/.well-known/ohttp-gateway", content=enc, headers={"content-type": "message/ohttp-req"})
            assert r.status_code == 400 and r.json()["error"]["reason"] == "ohttp.unknown_key_id"

            enc, _ = encapsulate_request(pair.config, b"x")
            bad = enc[:-1] + bytes([enc[-1] ^ 1])
            for media in ("message/ohttp-req", "message/ohttp-chunked-req"):
                r = await c.post("/.well-known/ohttp-gateway", content=bad, headers={"content-type": media})
                assert r.status_code == 400 and r.json()["error"]["reason"] == "ohttp.decrypt_failed"

            r = await c.post("/.well-known/ohttp-gateway", content=enc[:10], headers={"content-type": "message/ohttp-req"})
            assert r.status_code == 400 and r.json()["error"]["reason"] == "ohttp.truncated"

            big, _ = encapsulate_request(pair.config, b"y" * 2000)
            r = await c.post("/.well-known/ohttp-gateway", content=big, headers={"content-type": "message/ohttp-req"})
            assert r.status_code == 413 and r.json()["error"]["reason"] == "ohttp.too_large"

            async def body() -> AsyncIterator[bytes]:  # no content-length: the limit applies while reading
                yield big[:600]
                yield big[600:]

            r = await c.post("/.well-known/ohttp-gateway", content=body(), headers={"content-type": "message/ohttp-req"})
            assert r.status_code == 413

    _run(go())


def test_client_transport_surfaces_outer_errors(pair: KeyPair) -> None:
    async def go() -> None:
        other = KeyPair.generate(4)  # same key id, different key: decryption fails at the gateway
        t = OhttpTransport(other.config, "http://gw", async_outer_transport=httpx.ASGITransport(_app(pair)))
        async with httpx.AsyncClient(transport=t) as c:
            with pytest.raises(ProtocolError) as e:
                await c.get("http://api.local/v1/models")
            assert e.value.reason == "ohttp.decrypt_failed"

    _run(go())


def test_inner_errors_stay_encrypted(pair: KeyPair) -> None:
    async def go() -> None:
        async with _client(_app(pair)) as c:
            enc, ctx = encapsulate_request(pair.config, b"\x07garbage")
            r = await c.post("/.well-known/ohttp-gateway", content=enc, headers={"content-type": "message/ohttp-req"})
            assert r.status_code == 200 and r.headers["content-type"] == "message/ohttp-res"
            inner = bhttp.decode_response(ctx.decapsulate_response(r.content))
            assert inner.status == 400 and json.loads(inner.content)["error"]["reason"] == "bhttp.bad_framing"

    _run(go())


def test_unreachable_engine_is_an_encrypted_502(pair: KeyPair) -> None:
    async def go() -> None:
        dead = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds="/nonexistent/veil.sock"), base_url="http://engine")
        app = create_gateway_app(KeyStore([pair]), dead)
        for chunked in (False, True):
            t = OhttpTransport(pair.config, "http://gw", chunked=chunked, async_outer_transport=httpx.ASGITransport(app))
            async with httpx.AsyncClient(transport=t) as c:
                r = await c.get("http://api.local/v1/models")
                assert r.status_code == 502 and r.json()["error"]["reason"] == "gateway.upstream_unavailable"

    _run(go())


def test_draft_chunked_request_by_hand(pair: KeyPair) -> None:
    async def go() -> None:
        tx = ChunkedRequestSender(pair.config, suite=SymmetricSuite(1, 3))
        req = bhttp.encode_request(
            bhttp.Request("POST", "https", "x", "/v1/chat/completions", [("content-type", "application/json")], b'{"stream": true}'),
            indeterminate=True,
        )
        wire = tx.header + tx.seal_chunk(req[:10]) + tx.seal_final(req[10:])
        async with _client(_app(pair)) as c:
            r = await c.post("/.well-known/ohttp-gateway", content=wire, headers={"content-type": "message/ohttp-chunked-req"})
        assert r.headers["content-type"] == "message/ohttp-chunked-res"
        rx = tx.response_receiver()
        dec = bhttp.ResponseStreamDecoder()
        events = [e for pt in rx.feed(r.content) for e in dec.feed(pt)]
        events += dec.feed(rx.close())
        dec.close()
        assert isinstance(events[0], bhttp.ResponseHead) and events[0].status == 200
        body = b"".join(e.data for e in events if isinstance(e, bhttp.BodyChunk))
        assert body.count(b"data:") == 4
        assert CANARY.encode() not in r.content

    _run(go())


def test_plaintext_never_logged(pair: KeyPair, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def go() -> None:
        for chunked in (False, True):
            t = OhttpTransport(pair.config, "http://gw", chunked=chunked, async_outer_transport=httpx.ASGITransport(_app(pair)))
            async with httpx.AsyncClient(transport=t) as c:
                r = await c.post("http://api.local/v1/chat/completions", json={"prompt": CANARY})
                assert CANARY in r.text
                r = await c.post("http://api.local/v1/chat/completions", json={"prompt": CANARY, "stream": True})
                assert CANARY in r.text
        async with _client(_app(pair)) as c:
            enc, _ = encapsulate_request(pair.config, CANARY.encode())
            await c.post("/.well-known/ohttp-gateway", content=enc[:-1], headers={"content-type": "message/ohttp-req"})

    _run(go())
    assert any(r.name == "veil.worker.gateway" for r in caplog.records)
    assert CANARY not in caplog.text
