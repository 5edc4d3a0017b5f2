"""Existing OpenAI clients, unchanged, through `veil proxy`'s app.

client ─plain HTTP─▶ proxy app (uvicorn) ─OHTTP─▶ real gateway app (uvicorn) ─UDS─▶ real llama.cpp
engine (SmolLM2). Clients: the openai SDK (sync and async), plain httpx, curl, LangChain's ChatOpenAI.
One engine, one gateway and one proxy serve the whole module; max_tokens stays small.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from veil.client.proxy import create_encrypting_proxy
from veil.engines.launcher import EngineProcess
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.testing import ServerThread, free_port
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
SUMMARY = {"verdict": "accept", "simulated": True, "note": "test stand-in for an attestation"}
MESSAGES: list[Any] = [{"role": "user", "content": "Count from one to ten."}]
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    sock = tmp_path_factory.mktemp("compat") / "engine.sock"
    pair = KeyPair.generate(3)
    with EngineProcess(sock, threads=2, n_ctx=1024, startup_timeout=120):
        upstream = EngineLink(str(sock))
        with ServerThread(create_gateway_app(KeyStore([pair]), upstream)) as gateway:
            with ServerThread(create_encrypting_proxy(pair.config, gateway.url, SUMMARY)) as proxy:
                yield SimpleNamespace(proxy_url=proxy.url, gateway_url=gateway.url)


@pytest.fixture()
def proxy_url(stack: SimpleNamespace) -> str:
    return stack.proxy_url


def _sdk(proxy_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_openai_sdk_sync(proxy_url: str) -> None:
    sdk = _sdk(proxy_url)
    resp = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0)
    assert resp.choices[0].message.content.strip() and resp.model == MODEL
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 3
    assert [m.id for m in sdk.models.list()] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=2)


def test_openai_sdk_async(proxy_url: str) -> None:
    async def go() -> None:
        async with openai.AsyncOpenAI(base_url=f"{proxy_url}/v1", api_key="unused", max_retries=0) as sdk:
            resp = await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6)
            assert resp.choices[0].message.content.strip()
            stream = await sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, stream=True)
            pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
            assert len(pieces) >= 3
            emb = await sdk.embeddings.create(model=MODEL, input="hello")
            assert len(emb.data[0].embedding) > 100

    asyncio.run(go())


def test_plain_httpx(proxy_url: str) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 6}
    r = httpx.post(f"{proxy_url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", f"{proxy_url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])
    bad = httpx.post(f"{proxy_url}/v1/chat/completions", json={"messages": []}, timeout=120)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_curl(proxy_url: str) -> None:
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 6})
    base = [CURL, "-sS", "--fail-with-body", "-H", "Content-Type: application/json", "-H", "Authorization: Bearer unused"]
    out = subprocess.run([*base, "-d", body, f"{proxy_url}/v1/chat/completions"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["choices"][0]["message"]["content"]
    stream_body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 6, "stream": True})
    out = subprocess.run(
        [*base, "-N", "-d", stream_body, f"{proxy_url}/v1/chat/completions"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    events = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) >= 4
    models = subprocess.run([CURL, "-sS", f"{proxy_url}/v1/models"], capture_output=True, text=True, timeout=60)
    assert json.loads(models.stdout)["data"][0]["id"] == MODEL


def test_langchain_chat_openai(proxy_url: str) -> None:
    lc = pytest.importorskip("langchain_openai", reason="langchain-openai is not installed")
    llm = lc.ChatOpenAI(base_url=f"{proxy_url}/v1", api_key="unused", model=MODEL, max_tokens=6, temperature=0, max_retries=0)
    msg = llm.invoke("Say hello.")
    assert isinstance(msg.content, str) and msg.content.strip()
    chunks = list(llm.stream("Count from one to ten.", stream_usage=True))
    assert sum(1 for c in chunks if c.content) >= 3
    usage = sum(chunks[1:], chunks[0]).usage_metadata
    assert usage is not None and usage["output_tokens"] == 6

    def get_weather(city: str) -> str:
        """Current weather in a city."""
        return "sunny"

    tooled = llm.bind_tools([get_weather], tool_choice="get_weather").bind(max_tokens=24)
    (call,) = tooled.invoke("What is the weather in Paris?").tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"].get("city"), str)


def test_streaming_through_the_proxy_is_incremental(proxy_url: str) -> None:
    """Each token reaches the client as it is produced, not in one burst once generation ends."""
    sdk = _sdk(proxy_url)
    start = time.perf_counter()
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a story about a dragon."}],
        max_tokens=24,
        temperature=0,
        stream=True,
    )
    arrivals = [time.perf_counter() for c in stream if c.choices and c.choices[0].delta.content]
    total = time.perf_counter() - start
    assert len(arrivals) >= 12
    spread = arrivals[-1] - arrivals[0]
    # Buffering anywhere on the path (proxy, OHTTP transport, gateway, engine) would collapse the
    # arrivals into one instant at the end. Decoding dominates this request, so the first token
    # must come long before the last one is produced.
    assert spread > 0.1, arrivals
    assert arrivals[0] - start < total - spread / 2
    distinct = len({round(t, 3) for t in arrivals})
    assert distinct >= len(arrivals) // 2, arrivals


def test_verification_summary(proxy_url: str) -> None:
    assert httpx.get(f"{proxy_url}/veil/verification").json() == SUMMARY


def test_unreachable_gateway_is_an_openai_error() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with ServerThread(create_encrypting_proxy(KeyPair.generate(5).config, dead, SUMMARY)) as proxy:
        with pytest.raises(openai.InternalServerError) as info:
            _sdk(proxy.url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert info.value.status_code == 502 and info.value.code == "proxy.gateway_unreachable"


def test_gateway_refusal_is_an_openai_error(stack: SimpleNamespace) -> None:
    """A key the gateway does not hold: its clear-text refusal becomes a 502 in OpenAI's shape."""
    stranger = KeyPair.generate(4).config
    with ServerThread(create_encrypting_proxy(stranger, stack.gateway_url, SUMMARY)) as proxy:
        with pytest.raises(openai.InternalServerError) as info:
            _sdk(proxy.url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert info.value.status_code == 502 and info.value.code == "ohttp.unknown_key_id"
