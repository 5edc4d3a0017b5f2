"""Tenants: keys checked inside the encryption, encrypted 401/429, per-tenant cache salts."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

import httpx
import openai
import pytest

from veil.admin import add_tenant, create_tenant, tenant_key_digest
from veil.client.transport import AsyncOhttpTransport
from veil.errors import ParseError, PolicyError
from veil.manifest import Manifest, PaddingSettings, ReferenceValues, TenantEntry
from veil.ohttp import bhttp
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.ohttp.ohttp import encapsulate_request
from veil.worker import tenants as tenants_mod
from veil.worker.gateway import create_gateway_app
from veil.worker.refusals import Refusal
from veil.worker.tenants import Tenancy, TokenBucket, Usage

SECRET = b"\x01" * 32


class _Echo(httpx.AsyncBaseTransport):
    """A fake engine that answers with what it was sent (headers and JSON body) and a usage block."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], dict]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread() or b"{}")
        self.seen.append((dict(request.headers), body))
        answer = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
        return httpx.Response(200, json=answer)


def _manifest(entries: list[TenantEntry]) -> Manifest:
    ref = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
    return Manifest(coordinator=ref, workers=ref, admin_keys=["00" * 32], tenants=entries)


@pytest.fixture
def pair() -> KeyPair:
    return KeyPair.generate(5)


def _setup(pair: KeyPair, entries: list[TenantEntry], engine: str | None = "vllm") -> tuple[_Echo, object]:
    echo = _Echo()
    upstream = echo
    app = create_gateway_app(KeyStore([pair]), upstream, manifest=_manifest(entries), engine=engine, tenant_salt_secret=SECRET)
    return echo, app


def _openai(pair: KeyPair, app: object, key: str) -> openai.AsyncOpenAI:
    t = AsyncOhttpTransport(pair.config, "http://gw", transport=httpx.ASGITransport(app))  # type: ignore[arg-type]
    return openai.AsyncOpenAI(
        base_url="http://api.local/v1", api_key=key, http_client=httpx.AsyncClient(transport=t), max_retries=0
    )


MSG = [{"role": "user", "content": "hi"}]


def test_create_tenant_and_manifest_entry() -> None:
    key, entry = create_tenant("acme", 60, 10_000)
    assert key.startswith("veil-") and len(key) == len("veil-") + 43  # token_urlsafe(32): 256 bits
    assert entry.key_sha256 == hashlib.sha256(key.encode()).hexdigest() == tenant_key_digest(key)
    assert key not in entry.model_dump_json()
    base = _manifest([])
    assert b"tenants" not in base.canonical() and b"padding" not in base.canonical()  # old digests hold
    key2, entry2, updated = add_tenant(base, "acme", 60)
    assert updated.tenants == [entry2] and updated.digest() != base.digest()
    assert Manifest.model_validate_json(updated.canonical()) == updated
    with pytest.raises(PolicyError) as e:
        add_tenant(updated, "acme", 60)
    assert e.value.reason == "tenant.exists"
    with pytest.raises(ParseError) as e:
        create_tenant("bad id!", 60)
    assert e.value.reason == "tenant.invalid"
    with pytest.raises(ValueError):  # pydantic: ids and key hashes must be unique
        Manifest.model_validate({**updated.model_dump(), "tenants": [entry2.model_dump(), entry2.model_dump()]})


def test_keys_are_checked_inside_the_encryption(pair: KeyPair) -> None:
    key_a, a = create_tenant("a", 100)
    key_b, b = create_tenant("b", 100)
    echo, app = _setup(pair, [a, b])

    async def go() -> None:
        for bad in ("veil-wrong", key_a + "x", key_a[:-1]):
            client = _openai(pair, app, bad)
            with pytest.raises(openai.AuthenticationError) as e:
                await client.chat.completions.create(model="m", messages=MSG)
            assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
            assert e.value.body["reason"] == "tenant.unauthorized"  # type: ignore[index]
        async with httpx.AsyncClient(
            transport=AsyncOhttpTransport(pair.config, "http://gw", transport=httpx.ASGITransport(app))
        ) as c:  # type: ignore[arg-type]
            r = await c.post("http://api.local/v1/chat/completions", json={"messages": MSG})  # no key at all
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert echo.seen == []  # refused requests never reach the engine

        for key in (key_a, key_b):
            r = await _openai(pair, app, key).chat.completions.create(
                model="m", messages=MSG, extra_body={"cache_salt": "client-chosen"}
            )
            assert r.choices[0].message.content == "ok"
        (h_a, body_a), (h_b, body_b) = echo.seen
        assert "authorization" not in h_a and "authorization" not in h_b  # the engine never sees keys
        salt = lambda tid: hmac.new(SECRET, b"veil/cache-salt/v1\x00" + tid, hashlib.sha256).hexdigest()  # noqa: E731
        assert body_a["cache_salt"] == salt(b"a") and body_b["cache_salt"] == salt(b"b")
        assert body_a["messages"] == MSG

    asyncio.run(go())


def test_the_401_is_encrypted(pair: KeyPair) -> None:
    _, app = _setup(pair, [create_tenant("a", 100)[1]])

    async def go() -> None:
        req = bhttp.Request("POST", "https", "x", "/v1/chat/completions", [("authorization", "Bearer nope")], b"{}")
        enc, ctx = encapsulate_request(pair.config, bhttp.encode_request(req))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as c:  # type: ignore[arg-type]
            r = await c.post("/.well-known/ohttp-gateway", content=enc, headers={"content-type": "message/ohttp-req"})
        assert r.status_code == 200 and r.headers["content-type"] == "message/ohttp-res"
        assert b"invalid_api_key" not in r.content and "www-authenticate" not in r.headers
        inner = bhttp.decode_response(ctx.decapsulate_response(r.content))
        err = json.loads(inner.content)["error"]
        assert inner.status == 401 and set(err) >= {"message", "type", "param", "code"}

    asyncio.run(go())


def test_no_tenants_no_key_and_client_salt_stripped(pair: KeyPair) -> None:
    echo, app = _setup(pair, [])

    async def go() -> None:
        await _openai(pair, app, "anything").chat.completions.create(model="m", messages=MSG, extra_body={"cache_salt": "mine"})

    asyncio.run(go())
    headers, body = echo.seen[0]
    assert "cache_salt" not in body and "authorization" not in headers  # the engine never sees a key


def test_every_chat_engine_gets_the_tenants_salt_and_onnx_none(pair: KeyPair) -> None:
    """llama.cpp and transformers take the salt too (a per-caller cache scope); ONNX runs tensors."""
    key, entry = create_tenant("a", 100)
    for engine, salted in (("llama.cpp", True), ("transformers", True), ("onnxruntime", False)):
        echo, app = _setup(pair, [entry], engine=engine)

        async def go() -> None:
            await _openai(pair, app, key).chat.completions.create(model="m", messages=MSG, extra_body={"cache_salt": "mine"})

        asyncio.run(go())
        expected = hmac.new(SECRET, b"veil/cache-salt/v1\x00a", hashlib.sha256).hexdigest()
        assert echo.seen[0][1].get("cache_salt") == (expected if salted else None), engine


def test_requests_per_minute_429_with_retry_after_inside(pair: KeyPair) -> None:
    key, entry = create_tenant("a", 2)
    echo, app = _setup(pair, [entry])

    async def go() -> None:
        client = _openai(pair, app, key)
        for _ in range(2):
            await client.chat.completions.create(model="m", messages=MSG)
        with pytest.raises(openai.RateLimitError) as e:
            await client.chat.completions.create(model="m", messages=MSG)
        assert e.value.status_code == 429 and e.value.code == "rate_limit_exceeded"
        assert 1 <= int(e.value.response.headers["retry-after"]) <= 30  # 2/min: one back every 30 s

    asyncio.run(go())
    assert len(echo.seen) == 2


def test_token_bucket_and_tokens_per_minute() -> None:
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    bucket = TokenBucket(60, clock)
    assert all(bucket.take(1) == 0 for _ in range(60))
    assert bucket.take(1) == pytest.approx(1.0)
    now[0] += 1.0
    assert bucket.take(1) == 0

    key, entry = create_tenant("t", 1000, tokens_per_minute=100)
    ten = Tenancy([entry], salt_secret=SECRET, engine="vllm", clock=clock)

    def req(max_tokens: int) -> bhttp.Request:
        body = json.dumps({"model": "m", "prompt": "x" * 40, "max_tokens": max_tokens}).encode()
        return bhttp.Request("POST", "https", "x", "/v1/completions", [("authorization", f"Bearer {key}")], body)

    adm = ten.admit(req(40))  # estimate: 22 prompt tokens (bytes/4) + 40 = 62 of 100
    assert json.loads(adm.request.content)["cache_salt"]
    with pytest.raises(Refusal) as refused:
        ten.admit(req(40))
    status, headers, body = refused.value.answer()
    assert status == 429 and dict(headers)["retry-after"] and json.loads(body)["error"]["type"] == "tokens"
    adm.settle(Usage(total_tokens=10))  # the engine used far less: the difference comes back
    assert isinstance(ten.admit(req(40)), tenants_mod.Admission)


def test_authentication_compares_every_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    made = [create_tenant(f"t{i}", 10) for i in range(5)]
    ten = Tenancy([e for _, e in made], salt_secret=SECRET)
    calls: list[int] = []
    real = hmac.compare_digest
    monkeypatch.setattr(tenants_mod.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    assert ten.authenticate([("authorization", f"Bearer {made[0][0]}")]) == made[0][1]
    assert ten.authenticate([("authorization", "Bearer nope")]) is None
    assert len(calls) == 10  # no early exit on a match
    assert ten.authenticate([("authorization", f"Bearer {made[1][0]}"), ("authorization", f"Bearer {made[1][0]}")]) is None
    assert ten.authenticate([("authorization", f"Basic {made[1][0]}")]) is None


def test_padding_settings_come_from_the_manifest(pair: KeyPair) -> None:
    ref = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
    m = Manifest(coordinator=ref, workers=ref, admin_keys=["00" * 32], padding=PaddingSettings(responses=4096))
    assert json.loads(m.canonical())["padding"]["responses"] == 4096
    upstream = _Echo()
    app = create_gateway_app(KeyStore([pair]), upstream, manifest=m)

    async def go() -> int:
        req = bhttp.Request("POST", "https", "x", "/v1/chat/completions", [], b"{}")
        enc, ctx = encapsulate_request(pair.config, bhttp.encode_request(req))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as c:
            r = await c.post("/.well-known/ohttp-gateway", content=enc, headers={"content-type": "message/ohttp-req"})
        return len(ctx.decapsulate_response(r.content))

    assert asyncio.run(go()) == 4096


class _Streamer(httpx.AsyncBaseTransport):
    """A fake engine that streams three one-token SSE events, whatever max_tokens says."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "t"}, "finish_reason": None}],
        }
        events = [b"data: " + json.dumps(chunk).encode() + b"\n\n"] * 3 + [b"data: [DONE]\n\n"]
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=httpx.ByteStream(b"".join(events)))


def test_streams_are_settled_by_their_events(pair: KeyPair) -> None:
    key, entry = create_tenant("s", 1000, tokens_per_minute=1000)
    upstream = _Streamer()
    app = create_gateway_app(KeyStore([pair]), upstream, tenants=[entry], engine="vllm")

    async def go() -> None:
        client = _openai(pair, app, key)
        # Each reserves ~23 + 150 tokens but is settled at ~23 + 3 once streamed: without settlement
        # the sixth request would be refused (1000 / 173).
        for _ in range(8):
            stream = await client.chat.completions.create(model="m", messages=MSG, max_tokens=150, stream=True)
            assert "".join([c.choices[0].delta.content async for c in stream]) == "ttt"

    asyncio.run(go())


def test_client_salts_are_stripped_however_spelt() -> None:
    key, entry = create_tenant("a", 100)
    for tenancy, auth in (
        (Tenancy([], salt_secret=SECRET, engine="vllm"), []),
        (Tenancy([entry], salt_secret=SECRET, engine="vllm"), [("authorization", f"Bearer {key}")]),
    ):
        for raw in (
            b'{"prompt":"x","cache\\u005fsalt":"mine"}',
            b'{"prompt":"x","cache_salt":null}',
            b'{"cache_salt":"a","cache_salt":"b","prompt":"\\u00e9"}',
        ):
            adm = tenancy.admit(bhttp.Request("POST", "https", "x", "/v1/completions", list(auth), raw))
            doc = json.loads(adm.request.content)
            assert doc.get("cache_salt") in (None, tenancy.cache_salt("a")) and b"mine" not in adm.request.content
            assert (doc.get("cache_salt") is not None) == tenancy.enabled
        with pytest.raises(Refusal) as bad:  # unreadable: never forwarded
            tenancy.admit(bhttp.Request("POST", "https", "x", "/v1/completions", list(auth), b'{"cache_salt": "x",'))
        assert bad.value.status == 400 and bad.value.reason == "gateway.invalid_body"


def _compat_call(app: object, pair: KeyPair, path: str, doc: dict, key: str) -> tuple[int, bytes]:
    """One request in ohttpy's variant, by hand (ohttpy itself blocks the event loop)."""
    from veil.ohttp.compat import CompatResponseReceiver

    body = json.dumps(doc).encode()
    req = bhttp.Request(
        "POST", "https", "x", path, [("content-type", "application/json"), ("authorization", f"Bearer {key}")], body
    )
    enc, ctx = encapsulate_request(pair.config, bhttp.encode_request(req))

    async def go() -> tuple[int, bytes]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as c:  # type: ignore[arg-type]
            r = await c.post("/score", content=enc, headers={"content-type": "message/ohttp-chunked-req"})
        rx = CompatResponseReceiver(ctx)
        out = b"".join(rx.feed(r.content))
        rx.close()
        return r.status_code, out

    return asyncio.run(go())


@pytest.mark.parametrize("framing", ["rfc9458", "chunked", "ohttpy"])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("padded", [True, False])
def test_usage_is_settled_on_every_path(pair: KeyPair, framing: str, stream: bool, padded: bool) -> None:
    """Every answer replaces the admission estimate by the usage it showed (issue 9.8 / 10.3).

    Before the pipeline, a non-streamed answer with padding off, and every answer in ohttpy's
    variant, kept the up-front estimate (here ~500 tokens for a 3-token answer)."""
    from veil.manifest import GatewaySettings
    from veil.testing import FakeEngine

    key, entry = create_tenant("t", 1000, tokens_per_minute=1000)
    padding = None if padded else PaddingSettings(requests=None, responses=None, stream_chunks=None)
    upstream = httpx.ASGITransport(FakeEngine(tokens=3))
    app = create_gateway_app(
        KeyStore([pair]), upstream, tenants=[entry], padding=padding, settings=GatewaySettings(ohttpy_compat=True)
    )
    doc = {"model": "m", "messages": MSG, "max_tokens": 500, "stream": stream}
    if framing == "ohttpy":
        status, body = _compat_call(app, pair, "/v1/chat/completions", doc, key)
        assert status == 200 and (b"data: [DONE]" in body if stream else json.loads(body)["usage"]["total_tokens"] == 4)
    else:

        async def go() -> None:
            t = AsyncOhttpTransport(pair.config, "http://gw", chunked=framing == "chunked", transport=httpx.ASGITransport(app))
            async with httpx.AsyncClient(transport=t) as c:
                r = await c.post("http://api.local/v1/chat/completions", json=doc, headers={"authorization": f"Bearer {key}"})
                assert r.status_code == 200 and (r.text.count("data:") == 4 if stream else r.json()["usage"]["total_tokens"] == 4)

        asyncio.run(go())
    level = app.state.gateway.tenancy._tpm["t"].level
    assert level > 1000 - 100, level  # charged ~4-30 tokens (usage or counted events), not the ~520 estimate
