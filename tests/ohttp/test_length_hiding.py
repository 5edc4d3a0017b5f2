"""Length hiding: requests, whole responses and every streamed chunk padded to size buckets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
from starlette.applications import Starlette

from veil.client.transport import AsyncOhttpTransport
from veil.manifest import PaddingSettings
from veil.ohttp import bhttp
from veil.ohttp.bhttp import decode_varint
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.worker.gateway import create_gateway_app
from veil.ohttp.padding import SsePadder, bucket, pad_message

# Tokens of very different lengths (and UTF-8 widths): unpadded, each shows in its chunk's size.
TOKENS = ["a", " hello", ",", " extraordinarily", " 🙂", "\n", " ünïcödé", " x" * 40, "", " the", "!" * 120, "."]
NONCE_LEN = 16  # AES-128-GCM, the X25519 configuration's first suite: max(Nk, Nn)
TAG = 16


def _event(delta: dict, finish: str | None = None) -> bytes:
    doc = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


class _Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for p in self.pieces:
            await asyncio.sleep(0)
            yield p


class _Engine(httpx.AsyncBaseTransport):
    """A fake OpenAI engine whose stream arrives in separate pieces, one per token event.

    (httpx's ASGITransport joins a streamed body into one piece, so it cannot stand in here.)
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(await request.aread())
        if body.get("stream"):
            pieces = [_event({"role": "assistant", "content": ""})]
            for tok in TOKENS:
                ev = _event({"content": tok})
                if body.get("crlf"):
                    ev = ev.replace(b"\n", b"\r\n")
                    pieces += [ev[:7], ev[7:]]  # split mid-line: the padder must hold the partial line
                else:
                    pieces.append(ev)
            pieces += [_event({}, "stop"), b"data: [DONE]\n\n"]
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_Pieces(pieces))
        text = body["messages"][-1]["content"]
        answer = {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return httpx.Response(200, json=answer)


OFF = PaddingSettings(requests=None, responses=None, stream_chunks=None)


@pytest.fixture
def pair() -> KeyPair:
    return KeyPair.generate(3)


def _gateway(pair: KeyPair, padding: PaddingSettings | None = None) -> Starlette:
    upstream = _Engine()
    return create_gateway_app(KeyStore([pair]), upstream, padding=padding)


class _Tap(httpx.AsyncBaseTransport):
    """Records what a relay sees: outer request bodies and whole outer response bodies."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests: list[bytes] = []
        self.responses: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(await request.aread())
        resp = await self.inner.handle_async_request(request)
        body = b"".join([p async for p in resp.aiter_raw()])
        self.responses.append(body)
        return httpx.Response(resp.status_code, headers=resp.headers, stream=_Replay(body))


class _Replay(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body


def _chunk_sizes(body: bytes) -> tuple[list[int], int]:
    """Ciphertext sizes of the non-final chunks of a chunked OHTTP response, and the final one's."""
    pos, sizes = NONCE_LEN, []
    while True:
        length, pos = decode_varint(body, pos)  # type: ignore[misc]
        if length == 0:
            return sizes, len(body) - pos
        sizes.append(length)
        pos += length


def _stream_tokens(pair: KeyPair, padding: PaddingSettings | None, *, crlf: bool = False) -> tuple[list[str], _Tap]:
    tap = _Tap(httpx.ASGITransport(_gateway(pair, padding)))

    async def go() -> list[str]:
        t = AsyncOhttpTransport(pair.config, "http://gw", transport=tap)
        client = openai.AsyncOpenAI(
            base_url="http://api.local/v1", api_key="x", http_client=httpx.AsyncClient(transport=t), max_retries=0
        )
        kw = {"extra_body": {"crlf": True}} if crlf else {}
        stream = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True, **kw)
        out = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content is not None]
        await client.close()
        return out

    return asyncio.run(go()), tap


def test_bucket_sizes() -> None:
    assert [bucket(n, 256) for n in (0, 1, 256, 257, 1000, 4096)] == [256, 256, 256, 512, 1024, 4096]
    assert bucket(300, 300) == 512  # the minimum is a floor, sizes stay powers of two
    assert bucket((1 << 20) + 1, 256) == 2 << 20 and bucket(3 << 20, 256) == 3 << 20  # multiples above 1 MiB
    assert pad_message(b"abc", None) == b"abc" and pad_message(b"abc", 16) == b"abc" + bytes(13)


def test_sse_padder_chunks_fill_buckets_and_decode() -> None:
    body = b"".join(_event({"content": t}) for t in TOKENS) + b": keep-alive\n\ndata: [DONE]\n\n"
    pieces = [body[i : i + 37] for i in range(0, len(body), 37)] + [b"x" * 70000 + b"\n\n"]
    pad = SsePadder(512)
    plain = [pad.head(bhttp.encode_response_head(200, [("content-type", "text/event-stream")]))]
    for p in pieces:
        plain += pad.feed(p)
    plain.append(pad.final())
    sizes = {len(p) for p in plain}
    assert all(512 <= n <= 1 << 16 and n & (n - 1) == 0 for n in sizes), sizes  # powers of two only
    assert len([p for p in plain if len(p) == 512]) >= len(TOKENS)  # small events: all one size
    dec = bhttp.ResponseStreamDecoder()
    events = [e for p in plain for e in dec.feed(p)]
    dec.close()
    got = b"".join(e.data for e in events if isinstance(e, bhttp.BodyChunk))
    strip = lambda data: [ln for ln in data.split(b"\n") if not ln.startswith(b":")]  # noqa: E731
    assert strip(got) == strip(body + b"x" * 70000 + b"\n\n")


def test_without_padding_chunk_sizes_follow_the_tokens(pair: KeyPair) -> None:
    tokens, tap = _stream_tokens(pair, OFF)
    assert tokens == ["", *TOKENS]  # the role event carries content ""
    sizes, _ = _chunk_sizes(tap.responses[0])
    assert len(set(sizes)) >= 6  # a relay could read each token's length off its chunk


@pytest.mark.parametrize("crlf", [False, True])
def test_padded_stream_hides_token_lengths_and_sdk_still_parses(pair: KeyPair, crlf: bool) -> None:
    tokens, tap = _stream_tokens(pair, None, crlf=crlf)  # default settings: streams padded
    assert tokens == ["", *TOKENS]  # the role event carries content ""
    sizes, final = _chunk_sizes(tap.responses[0])
    assert len(sizes) >= len(TOKENS)  # still one chunk per event: the count and timing stay visible
    assert set(sizes) == {512 + TAG}, set(sizes)  # every token event, long or short, looks the same
    assert final - TAG in (512, 1024)


def test_whole_responses_and_requests_are_padded(pair: KeyPair) -> None:
    async def go(
        padding: PaddingSettings | None, pad_requests: int | None, chunked: bool
    ) -> tuple[list[int], list[int], list[str]]:
        tap = _Tap(httpx.ASGITransport(_gateway(pair, padding)))
        t = AsyncOhttpTransport(pair.config, "http://gw", chunked=chunked, transport=tap, pad_requests=pad_requests)
        client = openai.AsyncOpenAI(
            base_url="http://api.local/v1", api_key="x", http_client=httpx.AsyncClient(transport=t), max_retries=0
        )
        texts = []
        for prompt in ("hi", "a much longer question about the weather in Lisbon tomorrow " * 2):
            r = await client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
            texts.append(r.choices[0].message.content)
        await client.close()
        return [len(b) for b in tap.requests], [len(b) for b in tap.responses], texts

    for chunked in (False, True):
        req, resp, texts = asyncio.run(go(None, 256, chunked))
        assert texts[0] == "hi" and texts[1].startswith("a much longer")
        assert req[0] == req[1] and resp[0] == resp[1], (chunked, req, resp)
        req, resp, _ = asyncio.run(go(OFF, None, chunked))
        assert req[0] != req[1] and resp[0] != resp[1]


def test_whole_response_is_a_power_of_two_inside(pair: KeyPair) -> None:
    async def go() -> bytes:
        tap = _Tap(httpx.ASGITransport(_gateway(pair)))
        t = AsyncOhttpTransport(pair.config, "http://gw", chunked=False, transport=tap)
        async with httpx.AsyncClient(transport=t) as c:
            r = await c.post("http://api.local/v1/chat/completions", json={"messages": [{"role": "user", "content": "z" * 700}]})
            assert r.json()["choices"][0]["message"]["content"] == "z" * 700
        return tap.responses[0]

    inner = len(asyncio.run(go())) - NONCE_LEN - TAG
    assert inner == 1024
