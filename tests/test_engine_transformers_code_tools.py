"""The transformers engine's code completion (FIM) and tool calls, on a tiny GPT-BigCode built here.

GPT-BigCode is SantaCoder's and StarCoder's architecture. The model (tests/tiny_models.py) is a
bigram machine with SantaCoder's ``<fim-prefix>`` spelling (and a twin with StarCoder's
``<fim_prefix>``) and a Hermes tool template, so its answers are known: the exact ids it receives
are shown in process, and the engine process must stop at the end of the middle and parse the
model's tool calls, through the OpenAI, Anthropic and llama.cpp request shapes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0, CPU)")
pytest.importorskip("transformers", reason="transformers is not installed (pip install it)")

from tiny_models import FAMILY_TOKENS, MIDDLE, TinyModel, write_gpt_bigcode  # noqa: E402
from veil.engines.fim import FimRequest  # noqa: E402
from veil.engines.launcher import ENGINE_BASE_URL, EngineProcess  # noqa: E402

pytestmark = pytest.mark.slow

MODEL_ID = "tiny-santacoder"
CANARY = "VEIL-CANARY-9b7d-transformers-code-must-not-be-logged"
TOOLS: Any = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object", "properties": {}}}}
    for n in ("get_weather", "get_time")
]
PREFIX, SUFFIX = "def add(a, b):\n", "\nprint(add(1, 2))\n"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_gpt_bigcode(tmp_path_factory.mktemp("bigcode") / MODEL_ID)


@pytest.mark.parametrize("family", ["santacoder", "starcoder"])
def test_exact_ids_the_model_receives(model: TinyModel, tmp_path: Path, family: str) -> None:
    from veil.engines.transformers_engine import TransformersBackend

    tokens = FAMILY_TOKENS[family][:4]
    built = model if family == "santacoder" else write_gpt_bigcode(tmp_path / family, tokens)
    backend = TransformersBackend(built.path, family, n_ctx=512, threads=1)
    assert backend.fim is not None and backend.fim.family == family
    tok = backend.tokenizer
    prefix = PREFIX + tokens[1]  # spells the suffix token: must stay text, not end the prefix
    ids = backend.fim_prompt(FimRequest(prefix, SUFFIX))
    text = tok(prefix, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert ids == [
        built.id(tokens[0]),
        *text,
        built.id(tokens[1]),
        *tok(SUFFIX, add_special_tokens=False)["input_ids"],
        built.id(tokens[2]),
    ]
    assert tok.convert_ids_to_tokens(ids).count(tokens[1]) == 1
    assert {built.id("<|endoftext|>"), built.id(tokens[3])} <= backend.fim.ends


@pytest.fixture(scope="module")
def engine(model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    sock = tmp_path_factory.mktemp("bigcode-engine") / "engine.sock"
    with EngineProcess(
        sock,
        model.path,
        engine_module="veil.engines.transformers_engine",
        model_id=MODEL_ID,
        threads=1,
        n_ctx=1024,
        startup_timeout=180,
    ) as eng:
        yield eng


@pytest.fixture(scope="module")
def http(engine: EngineProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(engine.socket_path)), base_url=ENGINE_BASE_URL, timeout=120
    ) as client:
        yield client


@pytest.fixture(scope="module")
def oai(http: httpx.Client) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{ENGINE_BASE_URL}/v1", api_key="unused", http_client=http, max_retries=0)


def test_fim_through_completions_and_infill(oai: openai.OpenAI, http: httpx.Client) -> None:
    done = oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, temperature=0)
    assert done.choices[0].text == MIDDLE and done.choices[0].finish_reason == "stop"
    streamed = list(oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == MIDDLE
    whole = http.post("/infill", json={"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8}).json()
    assert whole["content"] == MIDDLE and whole["stop_type"] == "eos"


def test_tool_calls_auto(oai: openai.OpenAI, http: httpx.Client) -> None:
    resp = oai.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Weather?"}], tools=TOOLS, max_tokens=24
    )
    assert resp.choices[0].finish_reason == "tool_calls"
    calls = resp.choices[0].message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    msg = http.post(
        "/v1/messages",
        json={
            "model": MODEL_ID,
            "max_tokens": 24,
            "messages": [{"role": "user", "content": "Weather?"}],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
        },
    )
    # Only get_weather was offered this time: the other call stays text, never a call to something not offered.
    blocks = msg.json()["content"]
    assert [b["type"] for b in blocks] == ["tool_use", "text"] and blocks[0]["input"] == {"city": "Paris"}


def test_what_transformers_cannot_force_is_refused(oai: openai.OpenAI) -> None:
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        with pytest.raises(openai.BadRequestError) as info:
            oai.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice=choice, max_tokens=4
            )  # type: ignore[arg-type]
        assert info.value.code == "unsupported_tools" and info.value.param == "tool_choice"


def test_zz_canary_never_reaches_the_engine_log(engine: EngineProcess, http: httpx.Client) -> None:
    http.post("/v1/completions", json={"prompt": CANARY, "suffix": CANARY, "max_tokens": 3})
    http.post("/infill", json={"input_prefix": CANARY, "input_suffix": CANARY, "n_predict": 3, "stream": True})
    http.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": CANARY}],
            "max_tokens": 8,
            "tools": [{"type": "function", "function": {"name": CANARY}}],
        },
    )
    http.post("/v1/messages", json={"model": MODEL_ID, "max_tokens": 4, "messages": [{"role": "user", "content": CANARY}]})
    http.post("/v1/responses", json={"input": CANARY, "max_output_tokens": 4, "stream": True})
    time.sleep(0.2)
    log = engine.log_text()
    assert f"serving {MODEL_ID} (transformers" in log
    assert CANARY not in log and "Traceback" not in log
