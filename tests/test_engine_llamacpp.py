"""The llama.cpp engine process with the real SmolLM2 model, over its Unix socket.

One engine serves the whole module (loading costs about a second); max_tokens stays small.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from veil.engines.launcher import ENGINE_BASE_URL, EngineProcess

pytestmark = pytest.mark.slow

CANARY = "VEIL-CANARY-7c41d9e0-prompt-must-not-be-logged"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    sock = tmp_path_factory.mktemp("engine") / "engine.sock"
    with EngineProcess(sock, threads=2, n_ctx=1024, startup_timeout=120) as eng:
        yield eng


@pytest.fixture()
def client(engine: EngineProcess) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(engine.socket_path))
    with httpx.Client(transport=transport, base_url=ENGINE_BASE_URL, timeout=60) as c:
        yield c


def _chat(content: str, **extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


def _sse(lines: Iterator[str]) -> Iterator[tuple[float, str]]:
    for line in lines:
        if line.startswith("data: "):
            yield time.perf_counter(), line[len("data: ") :]


def test_health_and_models(client: httpx.Client) -> None:
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["SmolLM2-135M-Instruct"]


def test_chat_non_streaming(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=_chat("Say hello.", temperature=0))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "SmolLM2-135M-Instruct"
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] >= 1


def test_chat_streaming_flushes_each_token(client: httpx.Client) -> None:
    req = _chat("Count from one to twenty.", max_tokens=24, stream=True, temperature=0)
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = list(_sse(r.iter_lines()))
    assert events[-1][1] == "[DONE]"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert len(chunks) >= 5
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.strip()
    # Tokens arrive as they are produced, not in one buffered burst at the end.
    assert events[-1][0] - events[1][0] > 0.01


def test_completion(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"prompt": "The capital of France is", "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "text_completion"
    assert r.json()["choices"][0]["text"]


def test_completion_streaming(client: httpx.Client) -> None:
    req = {"prompt": "One, two, three,", "max_tokens": 6, "stream": True}
    with client.stream("POST", "/v1/completions", json=req) as r:
        events = [d for _, d in _sse(r.iter_lines())]
    assert events[-1] == "[DONE]" and len(events) >= 3


def test_suffix_refused_without_fim_tokens(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"prompt": "def f(", "suffix": "return x"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unsupported_suffix"


def test_embeddings(client: httpx.Client) -> None:
    r = client.post("/v1/embeddings", json={"input": ["hello", "world"]})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1]
    assert len(data[0]["embedding"]) == len(data[1]["embedding"]) > 100
    assert isinstance(data[0]["embedding"][0], float)


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", b"not json", 400, "invalid_json"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "invalid_request"),
        ("/v1/chat/completions", b'{"messages": "hi"}', 400, "invalid_request"),
        ("/v1/chat/completions", b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
        ("/v1/completions", b'{"max_tokens": 0, "prompt": "x"}', 400, "invalid_request"),
        ("/v1/nothing", b"{}", 404, "not_found"),
    ],
)
def test_bad_requests_get_openai_errors(client: httpx.Client, path: str, body: bytes, status: int, code: str) -> None:
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code
    assert err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and err["message"]


def test_context_overflow_is_a_400(client: httpx.Client) -> None:
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json=_chat("word " * 1500, stream=stream))
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_openai_sdk_over_the_socket(engine: EngineProcess) -> None:
    openai = pytest.importorskip("openai")
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket_path)))
    sdk = openai.OpenAI(base_url=f"{ENGINE_BASE_URL}/v1", api_key="unused", http_client=http)
    stream = sdk.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        stream=True,
    )
    assert sum(1 for _ in stream) >= 2


def test_canary_never_reaches_engine_logs(engine: EngineProcess, client: httpx.Client) -> None:
    """Send a unique string every way we can, including failing requests; it must not be logged."""
    client.post("/v1/chat/completions", json=_chat(f"Repeat exactly: {CANARY}"))
    with client.stream("POST", "/v1/chat/completions", json=_chat(CANARY, stream=True)) as r:
        list(r.iter_lines())
    client.post("/v1/completions", json={"prompt": CANARY, "max_tokens": 4, "echo": True})
    client.post("/v1/embeddings", json={"input": CANARY})
    client.post("/v1/chat/completions", json={"messages": [{"role": CANARY, "content": CANARY}]})
    client.post("/v1/chat/completions", content=f'{{"messages": "{CANARY}'.encode())
    client.post("/v1/completions", json={"prompt": CANARY, "suffix": CANARY})
    client.post("/v1/chat/completions", json=_chat(CANARY + " word" * 1500))
    client.post(f"/v1/{CANARY}", json={})
    time.sleep(0.2)
    log = engine.log_text()
    assert "serving SmolLM2-135M-Instruct" in log  # we are reading the right log
    assert CANARY not in log
    assert "Traceback" not in log


def test_concurrent_requests_queue_and_health_stays_up(engine: EngineProcess) -> None:
    """Generations share one model thread: both finish, and /health answers meanwhile."""
    import asyncio

    from veil.engines.launcher import engine_client

    async def one(client: httpx.AsyncClient, n: int) -> list[str]:
        req = _chat(f"Tell me about the number {n}.", max_tokens=6, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=req) as r:
            return [line async for line in r.aiter_lines() if line.startswith("data: ")]

    async def scenario() -> None:
        async with await engine_client(engine.socket_path) as client:
            streams = [asyncio.create_task(one(client, n)) for n in range(3)]
            await asyncio.sleep(0.05)
            assert (await client.get("/health")).status_code == 200
            for events in await asyncio.gather(*streams):
                assert events[-1] == "data: [DONE]" and len(events) >= 3

    asyncio.run(scenario())


def test_disconnect_stops_generation(client: httpx.Client) -> None:
    """A client that hangs up must not leave the model thread busy for the rest of max_tokens."""
    req = {"prompt": "Once upon a time", "max_tokens": 900, "stream": True, "seed": 7}
    with client.stream("POST", "/v1/completions", json=req) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 6:
                break
    start = time.perf_counter()
    r = client.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert r.status_code == 200
    assert time.perf_counter() - start < 8  # 900 tokens would take far longer than this
