"""Attack: a relay cuts or tampers with an encrypted answer, hoping `veil proxy` passes it on as complete.

The attacker controls the network between the proxy and the gateway: here a real relay process
(``cutting_relay.py``) that ends the encrypted response cleanly at a chunk boundary, drops the
connection there, or flips a bit in one chunk. Downstream is the official ``openai`` SDK.

Refused with: a streamed answer ends with an SSE error event carrying the reason
(``chunked.truncated``, ``chunked.decrypt_failed``) and no clean end of the HTTP body; a
non-streamed answer is checked whole, so the client gets HTTP 502 with the reason instead of a
200 with a shortened body.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from veil.client.proxy import create_encrypting_proxy
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.testing import ServerThread, free_port
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app

pytestmark = pytest.mark.slow  # live servers and processes on loopback

TOKENS = [f"tok{i} " for i in range(8)]
LONG = "x" * 150_000  # a non-streamed answer longer than one 64 KiB chunk
MESSAGES = [{"role": "user", "content": "hi"}]


def _chunk(content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    event = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(event)}\n\n".encode()


async def _chat(request: Request) -> Response:
    body = await request.json()
    if body.get("stream"):

        async def gen() -> AsyncIterator[bytes]:
            for tok in TOKENS:
                yield _chunk(tok)
                await asyncio.sleep(0.005)  # one token per encrypted chunk, as a real engine produces them
            yield _chunk(None, "stop")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(gen(), media_type="text/event-stream")
    return JSONResponse(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": LONG}}],
        }
    )


ENGINE = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    pair = KeyPair.generate(1)
    sock = str(tmp_path_factory.mktemp("cut") / "engine.sock")
    with ServerThread(ENGINE, uds=sock), ServerThread(create_gateway_app(KeyStore([pair]), EngineLink(sock))) as gateway:
        port = free_port()
        relay = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cutting_relay.py")), "--upstream", gateway.url, "--port", str(port)]
        )
        relay_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.post(f"{relay_url}/relay/mode", json={"mode": "pass"}, timeout=2)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or relay.poll() is not None:
                        raise RuntimeError("the relay did not start") from None
                    time.sleep(0.1)
            with ServerThread(create_encrypting_proxy(pair.config, relay_url, {"note": "test"})) as proxy:
                yield SimpleNamespace(proxy=proxy.url, relay=relay_url, pair=pair)
        finally:
            relay.terminate()
            relay.wait(10)


def _mode(stack: SimpleNamespace, mode: str, after: int = 0) -> None:
    httpx.post(f"{stack.relay}/relay/mode", json={"mode": mode, "after": after}, timeout=10).raise_for_status()


def _sdk(stack: SimpleNamespace) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.proxy}/v1", api_key="unused", max_retries=0, timeout=60)


def _stream_text(stack: SimpleNamespace) -> str:
    text = ""
    for c in _sdk(stack).chat.completions.create(model="m", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        if c.choices and c.choices[0].delta.content:
            text += c.choices[0].delta.content
    return text


def test_control_an_untouched_answer_arrives_whole(stack: SimpleNamespace) -> None:
    _mode(stack, "pass")
    assert _stream_text(stack) == "".join(TOKENS)
    resp = _sdk(stack).chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert resp.choices[0].message.content == LONG


@pytest.mark.parametrize(
    "mode, after, reason",
    [
        ("end", 3, "chunked.truncated"),  # a clean end of the outer body after three chunks
        ("abort", 3, "proxy.gateway_stream_broken"),  # the relay drops the connection there
        ("flip", 2, "chunked.decrypt_failed"),  # one bit of the third chunk
    ],
)
def test_a_damaged_stream_raises_in_the_openai_sdk(stack: SimpleNamespace, mode: str, after: int, reason: str) -> None:
    _mode(stack, mode, after)
    with pytest.raises(openai.APIError) as info:
        _stream_text(stack)
    assert info.value.code == reason  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["end", "flip"])
def test_a_damaged_stream_never_ends_cleanly_on_the_wire(stack: SimpleNamespace, mode: str) -> None:
    """Any HTTP client, not only the OpenAI SDK: the chunked body is left unterminated."""
    _mode(stack, mode, 2)
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", f"{stack.proxy}/v1/chat/completions", json=body, timeout=60) as resp:
            assert resp.status_code == 200
            for piece in resp.iter_raw():
                received += piece
    assert b"[DONE]" not in received and b'"veil_error"' in received


def test_a_cut_whole_answer_is_a_502_not_a_short_200(stack: SimpleNamespace) -> None:
    _mode(stack, "end", 1)  # the head and the first 64 KiB arrive, the rest never does
    resp = httpx.post(f"{stack.proxy}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}, timeout=60)
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "chunked.truncated"
    with pytest.raises(openai.InternalServerError) as info:
        _sdk(stack).chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.code == "chunked.truncated"
