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

from veil.client.transport import AsyncOhttpTransport
from veil.errors import ProtocolError
from veil.manifest import GatewaySettings
from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedRequestSender
from veil.ohttp.keyconfig import KeyPair, KeyStore, SymmetricSuite, decode_key_config_list
from veil.ohttp.ohttp import encapsulate_request
from veil.worker.engine_link import EngineLink
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
    return JSONResponse(
        {"echo": body, "path": request.url.path, "query": request.url.query, "auth": request.headers.get("authorization")}
    )


async def _boom(request: Request) -> Response:
    return JSONResponse({"detail": "nope"}, status_code=404)


UPSTREAM = Starlette(
    routes=[Route("/v1/chat/completions", _chat, methods=["POST"]), Route("/v1/missing", _boom, methods=["GET"])]
)


@pytest.fixture
def pair() -> KeyPair:
    return KeyPair.generate(4)


def _app(pair: KeyPair, **kw: object) -> Starlette:
    upstream = httpx.ASGITransport(UPSTREAM)
    return create_gateway_app(KeyStore([pair]), upstream, **kw)  # type: ignore[arg-type]


def _client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw")


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_key_discovery(pair: KeyPair) -> None:
    async def go() -> None:
        async with _client(_app(pair)) as c:
            r = await c.get("/.well-known/ohttp-gateway")
            assert r.status_code == 200 and r.headers["content-type"] == "application/ohttp-keys"
            assert decode_key_config_list(r.content) == [pair.config]
            r = await c.get("/discover")  # ohttpy's route exists only when the manifest enables it
            assert r.status_code == 404 and r.json()["error"]["reason"] == "gateway.compat_disabled"
        async with _client(_app(pair, settings=GatewaySettings(ohttpy_compat=True))) as c:
            r = await c.get("/discover")
            assert r.status_code == 200 and decode_key_config_list(r.content) == [pair.config]

    _run(go())


@pytest.mark.parametrize("chunked", [False, True])
def test_own_transport_plain_and_stream(pair: KeyPair, chunked: bool) -> None:
    async def go() -> None:
        t = AsyncOhttpTransport(pair.config, "http://gw", chunked=chunked, transport=httpx.ASGITransport(_app(pair)))
        async with httpx.AsyncClient(transport=t) as c:
            r = await c.post("http://api.local/v1/chat/completions?a=1", json={"q": 1}, headers={"authorization": "Bearer k"})
            assert r.status_code == 200
            # the engine never sees the caller's key (only allowlisted headers reach it)
            assert r.json() == {"echo": {"q": 1}, "path": "/v1/chat/completions", "query": "a=1", "auth": None}
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
            r = await c.post("/.well-known/ohttp-gateway", content=bad, headers={"content-type": "message/ohttp-req"})
            assert r.status_code == 400 and r.json()["error"]["reason"] == "ohttp.decrypt_failed"
            # the same bytes under the chunked media type are read as chunked OHTTP, and refused
            r = await c.post("/.well-known/ohttp-gateway", content=bad, headers={"content-type": "message/ohttp-chunked-req"})
            assert r.status_code == 400 and r.json()["error"]["reason"].startswith("chunked.")

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
        t = AsyncOhttpTransport(other.config, "http://gw", transport=httpx.ASGITransport(_app(pair)))
        async with httpx.AsyncClient(transport=t) as c:
            with pytest.raises(ProtocolError) as e:
                await c.get("http://api.local/v1/models")
            assert e.value.reason in ("chunked.decrypt_failed", "chunked.final_mismatch")

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
        dead = EngineLink("/nonexistent/veil.sock")
        app = create_gateway_app(KeyStore([pair]), dead)
        for chunked in (False, True):
            t = AsyncOhttpTransport(pair.config, "http://gw", chunked=chunked, transport=httpx.ASGITransport(app))
            async with httpx.AsyncClient(transport=t) as c:
                r = await c.get("http://api.local/v1/models")
                assert r.status_code == 502 and r.json()["error"]["reason"] == "gateway.upstream_unavailable"

    _run(go())


def test_draft_chunked_request_by_hand(pair: KeyPair) -> None:
    async def go() -> None:
        tx = ChunkedRequestSender(pair.config, suite=SymmetricSuite(1, 3))
        req = bhttp.encode_request(
            bhttp.Request(
                "POST", "https", "x", "/v1/chat/completions", [("content-type", "application/json")], b'{"stream": true}'
            ),
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
            t = AsyncOhttpTransport(pair.config, "http://gw", chunked=chunked, transport=httpx.ASGITransport(_app(pair)))
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


def _compat_request(config: object, inner: bytes) -> tuple[bytes, object]:
    return encapsulate_request(config, inner)  # type: ignore[arg-type]  # ohttpy sends plain RFC 9458


def test_framing_is_chosen_by_route_never_by_trial(pair: KeyPair) -> None:
    """A message/ohttp-req re-posted as message/ohttp-chunked-req is not answered in ohttpy's
    framing on the standard route, nor on /score unless the manifest enables it."""
    from veil.ohttp.compat import CompatResponseReceiver

    req = bhttp.encode_request(bhttp.Request("GET", "https", "x", "/v1/missing"))

    async def go() -> None:
        async with _client(_app(pair)) as c:
            enc, _ = encapsulate_request(pair.config, req)
            r = await c.post("/.well-known/ohttp-gateway", content=enc, headers={"content-type": "message/ohttp-chunked-req"})
            assert r.status_code == 400 and r.json()["error"]["reason"].startswith("chunked.")
            r = await c.post("/score", content=enc, headers={"content-type": "message/ohttp-chunked-req"})
            assert r.status_code == 404 and r.json()["error"]["reason"] == "gateway.compat_disabled"
        async with _client(_app(pair, settings=GatewaySettings(ohttpy_compat=True))) as c:
            enc, ctx = encapsulate_request(pair.config, req)
            r = await c.post("/score", content=enc, headers={"content-type": "message/ohttp-req"})
            assert r.status_code == 415  # /score speaks only ohttpy's media type
            r = await c.post("/score", content=enc, headers={"content-type": "message/ohttp-chunked-req"})
            assert r.status_code == 404  # the engine's answer: ohttpy reads the inner status outside
            rx = CompatResponseReceiver(ctx)  # type: ignore[arg-type]
            body = b"".join(rx.feed(r.content))
            rx.close()
            assert len(body) == 256 and json.loads(body) == {"detail": "nope"}  # padded like the rest
            # a draft chunked request is not accepted on /score either
            tx = ChunkedRequestSender(pair.config)
            wire = tx.header + tx.seal_final(
                bhttp.encode_request(bhttp.Request("GET", "https", "x", "/v1/models"), indeterminate=True)
            )
            r = await c.post("/score", content=wire, headers={"content-type": "message/ohttp-chunked-req"})
            assert r.status_code == 400 and r.json()["error"]["reason"] == "ohttp.decrypt_failed"

    _run(go())


def test_engine_receives_only_allowlisted_headers(pair: KeyPair) -> None:
    from veil.testing import FakeEngine

    seen: list = []
    upstream = httpx.ASGITransport(FakeEngine(record=seen))
    app = create_gateway_app(KeyStore([pair]), upstream)
    sent = {
        "Cookie": "session=secret",
        "Referer": "https://intranet.example/page",
        "Origin": "https://evil.example",
        "User-Agent": "Mozilla/5.0 (X11; Linux)",
        "X-Forwarded-For": "203.0.113.7",
        "X-Real-IP": "203.0.113.7",
        "X-Stainless-OS": "Linux",
        "X-Stainless-Runtime-Version": "3.11.7",
        "OpenAI-Organization": "org-1",
        "Authorization": "Bearer sk-user-secret",
    }

    async def go() -> None:
        import openai

        t = AsyncOhttpTransport(pair.config, "http://gw", transport=httpx.ASGITransport(app))
        client = openai.AsyncOpenAI(
            base_url="http://api.local/v1",
            api_key="sk-user-secret",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=t),
            default_headers=sent,
        )
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        await client.close()

    _run(go())
    headers, body = seen[0]
    assert body["messages"][0]["content"] == "hi"
    assert set(headers) <= {"accept", "content-type", "content-length", "host"}
    joined = json.dumps(headers)
    for value in ("secret", "intranet", "evil", "Mozilla", "203.0.113.7", "Linux", "org-1", "Stainless"):
        assert value not in joined, value


def test_nothing_after_decryption_answers_in_the_clear(
    pair: KeyPair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body nested deep enough to raise RecursionError, or any unexpected failure, gets an
    encrypted answer and a log line naming only the exception type (issue 15.8)."""
    caplog.set_level(logging.DEBUG)
    deep = b'{"cache_salt":' + b"[" * 200_000 + b"]" * 200_000 + b"}"  # json.loads: RecursionError

    async def go() -> None:
        t = AsyncOhttpTransport(pair.config, "http://gw", transport=httpx.ASGITransport(_app(pair)))
        async with httpx.AsyncClient(transport=t) as c:
            r = await c.post("http://api.local/v1/chat/completions", content=deep, headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["reason"] == "gateway.invalid_body"

        app = _app(pair)

        def explode(req: object) -> None:
            raise KeyError(CANARY)

        monkeypatch.setattr(app.state.gateway.tenancy, "admit", explode)
        for chunked in (False, True):
            t = AsyncOhttpTransport(pair.config, "http://gw", chunked=chunked, transport=httpx.ASGITransport(app))
            async with httpx.AsyncClient(transport=t) as c:
                r = await c.post("http://api.local/v1/chat/completions", json={"prompt": CANARY})
                assert r.status_code == 500 and r.json()["error"]["reason"] == "gateway.internal_error"

    _run(go())
    assert "KeyError" in caplog.text and CANARY not in caplog.text and "Traceback" not in caplog.text
