"""The transformers engine over its Unix socket, with a tiny random Llama built here on CPU.

The model is random, so the text is noise: these tests check the protocol (OpenAI shapes, SSE
chunks and [DONE], usage counts, stop sequences, errors) and that prompts never reach the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0, CPU)")
pytest.importorskip("transformers", reason="transformers is not installed (pip install it)")

from veil.engines.launcher import ENGINE_BASE_URL, EngineProcess  # noqa: E402

pytestmark = pytest.mark.slow

CANARY = "VEIL-CANARY-5d2a-transformers-prompt-must-not-be-logged"
MODEL_ID = "tiny-llama"
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tiny_model(path: Path, hidden_size: int = 32, heads: int = 2) -> Path:
    """A 2-layer Llama with a byte-level BPE trained on a few sentences, plus a chat template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = [
        "the quick brown fox jumps over the lazy dog",
        "hello world, say hello",
        "count one two three four five six seven eight nine ten",
    ]
    tok.train_from_iterator(text * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>")
    fast.chat_template = TEMPLATE
    fast.save_pretrained(path)
    # Portable across transformers 4.x and 5.x (vLLM pins its own): name the classic class and
    # keep the template inside tokenizer_config.json as well as in chat_template.jinja.
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update(tokenizer_class="PreTrainedTokenizerFast", chat_template=TEMPLATE)
    cfg_file.write_text(json.dumps(cfg, indent=2))
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    base = tmp_path_factory.mktemp("hf")
    model = build_tiny_model(base / MODEL_ID)
    with EngineProcess(
        base / "engine.sock", model, engine_module="veil.engines.transformers_engine", threads=1, n_ctx=128, startup_timeout=120
    ) as eng:
        yield eng


@pytest.fixture()
def client(engine: EngineProcess) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(uds=str(engine.socket_path))
    with httpx.Client(transport=transport, base_url=ENGINE_BASE_URL, timeout=60) as c:
        yield c


def _chat(content: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 6, "seed": 1, **extra}


def _events(r: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]


def test_health_and_models(client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok", "model": MODEL_ID}
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [MODEL_ID]


def test_chat_non_streaming(client: httpx.Client) -> None:
    r = client.post("/v1/chat/completions", json=_chat("hello world"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == MODEL_ID
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 2 and 0 <= usage["completion_tokens"] <= 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_streaming(client: httpx.Client) -> None:
    req = _chat("count one two", max_tokens=8, stream=True, stream_options={"include_usage": True})
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    *content, final, usage = chunks
    assert final["choices"][0]["finish_reason"] in ("stop", "length")
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] <= 8
    assert len(content) >= 2  # role chunk, then text as it is produced
    # The same request without streaming yields the same text (same seed).
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in content)
    again = client.post("/v1/chat/completions", json={**req, "stream": False}).json()
    assert again["choices"][0]["message"]["content"] == text


def test_completion_and_echo(client: httpx.Client) -> None:
    r = client.post("/v1/completions", json={"prompt": "the quick", "max_tokens": 4, "echo": True, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"].startswith("the quick")
    assert body["usage"]["prompt_tokens"] >= 2


def test_completion_streaming(client: httpx.Client) -> None:
    req = {"prompt": "one two", "max_tokens": 5, "stream": True, "temperature": 0}
    with client.stream("POST", "/v1/completions", json=req) as r:
        events = _events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_stop_sequence_cuts_the_text(client: httpx.Client) -> None:
    """Greedy decoding is deterministic: stop on a piece of the free output, it must end there."""
    req = {"prompt": "hello world", "max_tokens": 24, "temperature": 0}
    free = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    if len(free) < 6:
        pytest.skip("the random model ended too early to pick a stop sequence")
    stop = free[3:5]
    cut = free[: free.index(stop)]
    body = client.post("/v1/completions", json={**req, "stop": [stop]}).json()
    assert body["choices"][0]["text"] == cut
    assert body["choices"][0]["finish_reason"] == "stop"
    with client.stream("POST", "/v1/completions", json={**req, "stop": stop, "stream": True}) as r:
        chunks = [json.loads(e) for e in _events(r)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == cut


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", b"not json", 400, "invalid_json"),
        ("/v1/chat/completions", b'{"messages": []}', 400, "invalid_request"),
        ("/v1/chat/completions", b'{"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}', 404, "model_not_found"),
        ("/v1/completions", b'{"prompt": "x", "suffix": "y"}', 400, "unsupported_suffix"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 500}', 400, "context_length_exceeded"),
        ("/v1/embeddings", b'{"input": "x"}', 404, "unsupported_endpoint"),  # no embeddings here
    ],
)
def test_bad_requests_get_openai_errors(client: httpx.Client, path: str, body: bytes, status: int, code: str) -> None:
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_context_overflow_is_a_400(client: httpx.Client) -> None:
    for stream in (False, True):
        r = client.post("/v1/chat/completions", json=_chat("hello " * 200, stream=stream))
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_openai_sdk_over_the_socket(engine: EngineProcess) -> None:
    openai = pytest.importorskip("openai")
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(engine.socket_path)))
    sdk = openai.OpenAI(base_url=f"{ENGINE_BASE_URL}/v1", api_key="unused", http_client=http)
    stream = sdk.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        stream=True,
    )
    assert sum(1 for _ in stream) >= 2
    done = sdk.completions.create(model=MODEL_ID, prompt="hi", max_tokens=3)
    assert done.usage is not None and done.usage.prompt_tokens >= 1


def test_canary_never_reaches_engine_logs(engine: EngineProcess, client: httpx.Client) -> None:
    client.post("/v1/chat/completions", json=_chat(f"Repeat exactly: {CANARY}"))
    with client.stream("POST", "/v1/chat/completions", json=_chat(CANARY, stream=True)) as r:
        list(r.iter_lines())
    client.post("/v1/completions", json={"prompt": CANARY, "max_tokens": 3, "echo": True})
    client.post("/v1/completions", json={"prompt": CANARY, "suffix": CANARY})
    client.post("/v1/chat/completions", json={"messages": [{"role": CANARY, "content": CANARY}]})
    client.post("/v1/chat/completions", content=f'{{"messages": "{CANARY}'.encode())
    client.post("/v1/chat/completions", json=_chat(CANARY + " hello" * 200))
    client.post(f"/v1/{CANARY}", json={})
    time.sleep(0.2)
    log = engine.log_text()
    assert f"serving {MODEL_ID} (transformers" in log
    assert CANARY not in log and "Traceback" not in log
