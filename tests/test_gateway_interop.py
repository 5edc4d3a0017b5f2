"""End to end over real sockets: uvicorn runs the gateway (TCP) and an OpenAI-shaped engine (Unix
socket) in a child process; the ``openai`` SDK talks to it through ``ohttpy`` (Microsoft's OHTTP
stack, as used by Azure confidential inferencing) and through Veil's own ``OhttpTransport``.

The server lives in another process because ohttpy's Rust call holds the GIL while it waits.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from veil.client.transport import AsyncOhttpTransport, OhttpTransport
from veil.ohttp.keyconfig import KeyPair, SymmetricSuite, encode_key_config_list

SERVER = textwrap.dedent(
    '''
    import asyncio, json, sys, time
    import httpx, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
    from veil.manifest import GatewaySettings
    from veil.ohttp.keyconfig import KeyPair, KeyStore
    from veil.worker.gateway import create_gateway_app

    TOKENS = ["Hello", " from", " the", " enclave"]
    DELAY = float(sys.argv[4])

    def chunk(i, delta, finish=None):
        return {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    async def chat(request):
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        if body.get("stream"):
            async def gen():
                yield "data: " + json.dumps(chunk(0, {"role": "assistant", "content": ""})) + "\\n\\n"
                for tok in TOKENS:
                    await asyncio.sleep(DELAY)
                    yield "data: " + json.dumps(chunk(0, {"content": tok})) + "\\n\\n"
                yield "data: " + json.dumps(chunk(0, {}, "stop")) + "\\n\\n"
                yield "data: [DONE]\\n\\n"
            return StreamingResponse(gen(), media_type="text/event-stream")
        return JSONResponse({"id": "c1", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "echo: " + prompt}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})

    engine = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

    async def main():
        port, key, uds = int(sys.argv[1]), bytes.fromhex(sys.argv[2]), sys.argv[3]
        upstream = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=uds), base_url="http://engine")
        app = create_gateway_app(KeyStore([KeyPair.from_private_bytes(1, key)]), upstream,
                                 settings=GatewaySettings(ohttpy_compat=True))
        servers = [uvicorn.Server(uvicorn.Config(engine, uds=uds, log_level="warning")),
                   uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))]
        await asyncio.gather(*(s.serve() for s in servers))

    asyncio.run(main())
    '''
)
DELAY = 0.4
MESSAGES = [{"role": "user", "content": "ping"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, KeyPair]]:
    tmp: Path = tmp_path_factory.mktemp("gw")
    (tmp / "server.py").write_text(SERVER)
    pair = KeyPair.generate(1)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, str(tmp / "server.py"), str(port), pair.private_bytes().hex(), str(tmp / "engine.sock"), str(DELAY)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/.well-known/ohttp-gateway", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail("gateway did not start")
            time.sleep(0.1)
        yield url, pair
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _assert_streamed(times: list[float], text: str) -> None:
    assert text == "Hello from the enclave"
    # Tokens arrive as the engine produces them, not in one lump at the end.
    assert times[-1] - times[0] >= 2 * DELAY, times


def test_served_key_config(gateway: tuple[str, KeyPair]) -> None:
    url, pair = gateway
    r = httpx.get(url + "/.well-known/ohttp-gateway")
    assert r.headers["content-type"] == "application/ohttp-keys"
    assert r.content == encode_key_config_list([pair.config])


def test_ohttpy_with_openai_sdk(gateway: tuple[str, KeyPair]) -> None:
    ohttpy = pytest.importorskip("ohttpy")
    url, pair = gateway
    # ohttpy always takes the first listed suite and has no AES-256-GCM: list AES-128-GCM first.
    keys = encode_key_config_list([pair.config.preferring(SymmetricSuite(1, 1))])
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", http_client=httpx.Client(transport=ohttpy.Transport(key_config=keys)))
    done = client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert done.choices[0].message.content == "echo: ping"

    times: list[float] = []
    text = ""
    for ev in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        if ev.choices and ev.choices[0].delta.content:
            times.append(time.monotonic())
            text += ev.choices[0].delta.content
    _assert_streamed(times, text)


@pytest.mark.parametrize("chunked", [True, False])
def test_own_transport_sync(gateway: tuple[str, KeyPair], chunked: bool) -> None:
    url, pair = gateway
    transport = OhttpTransport(pair.config, url, chunked=chunked)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", http_client=httpx.Client(transport=transport))
    done = client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
    assert done.choices[0].message.content == "echo: ping"
    times: list[float] = []
    text = ""
    for ev in client.chat.completions.create(model="m", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        if ev.choices and ev.choices[0].delta.content:
            times.append(time.monotonic())
            text += ev.choices[0].delta.content
    if chunked:
        _assert_streamed(times, text)
    else:
        assert text == "Hello from the enclave"  # message/ohttp-res is one sealed message: no streaming


def test_own_transport_async(gateway: tuple[str, KeyPair]) -> None:
    url, pair = gateway

    async def go() -> None:
        transport = AsyncOhttpTransport(pair.config, url)
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", http_client=httpx.AsyncClient(transport=transport))
        done = await client.chat.completions.create(model="m", messages=MESSAGES)  # type: ignore[arg-type]
        assert done.choices[0].message.content == "echo: ping"
        times: list[float] = []
        text = ""
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        async for ev in stream:
            if ev.choices and ev.choices[0].delta.content:
                times.append(time.monotonic())
                text += ev.choices[0].delta.content
        _assert_streamed(times, text)
        await client.close()

    asyncio.run(go())


def test_relay_sees_only_ciphertext(gateway: tuple[str, KeyPair]) -> None:
    url, pair = gateway
    seen: list[bytes] = []

    class Tap(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.read())
            resp = super().handle_request(request)
            inner = resp.stream

            class Recorded(httpx.SyncByteStream):
                def __iter__(self) -> Iterator[bytes]:
                    for piece in inner:  # type: ignore[union-attr]
                        seen.append(piece)
                        yield piece

                def close(self) -> None:
                    inner.close()  # type: ignore[union-attr]

            resp.stream = Recorded()
            return resp

    transport = OhttpTransport(pair.config, url, transport=Tap())
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", http_client=httpx.Client(transport=transport))
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "SECRET-PROMPT"}])
    assert len(seen) >= 2 and not any(b"SECRET-PROMPT" in s or b"echo" in s or b"chat/completions" in s for s in seen)
