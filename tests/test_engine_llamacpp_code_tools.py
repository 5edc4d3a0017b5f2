"""The llama.cpp engine's code completion (FIM) and tool calls, on tiny GGUFs the tests write.

The models (tests/tiny_models.py) are bigram machines with a real GGUF vocabulary, so every answer
is known in advance: the exact token sequence each FIM family's model receives is shown in
process, and the engine process (over its socket, through the OpenAI, Anthropic and llama.cpp
request shapes) must stop at the end-of-middle token and turn the model's Hermes-style output into
tool calls, streamed as deltas.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tiny_models import AFTER_END, FAMILY_TOKENS, MIDDLE, TEXT_ANSWER, TinyModel, write_gguf
from veil.engines.fim import FimRequest
from veil.engines.launcher import ENGINE_BASE_URL, EngineProcess

pytestmark = pytest.mark.slow

MODEL_ID = "tiny-coder"
CANARY = "VEIL-CANARY-3f1e-code-and-tools-must-not-be-logged"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": "a tool",
            "parameters": {"type": "object", "properties": props, "additionalProperties": False},
        },
    }
    for name, props in (("get_weather", {"city": {"type": "string"}}), ("get_time", {}))
]
PREFIX, SUFFIX = "def add(a, b):\n", "\n\nprint(add(1, 2))\n"


@pytest.mark.parametrize("family", sorted(FAMILY_TOKENS))
def test_each_family_gets_its_exact_token_sequence(tmp_path: Path, family: str) -> None:
    from veil.engines.llamacpp import LlamaBackend

    add_bos = family in ("codellama", "deepseek-coder", "codestral")
    model = write_gguf(tmp_path / f"{family}.gguf", family, add_bos=add_bos)
    backend = LlamaBackend(model.path, family, n_ctx=256, threads=1)
    assert backend.fim is not None and backend.fim.family == family
    llm = backend.llm

    def text(s: str) -> list[int]:
        return llm.tokenize(s.encode(), add_bos=False, special=False)

    tokens = FAMILY_TOKENS[family]
    pre, suf, mid = (model.id(t) if t else None for t in tokens[:3])
    bos = [model.id("<s>")] if add_bos else []
    # A prefix that spells a control token must stay text: it cannot end the prefix early.
    prefix = PREFIX + tokens[1]
    got = backend.fim_prompt(FimRequest(prefix, SUFFIX))
    if family == "codestral":  # [SUFFIX] suffix [PREFIX] prefix, and the middle follows the prefix
        expected = [*bos, suf, *text(SUFFIX), pre, *text(prefix)]
    elif family == "codellama":  # <PRE> prefix <SUF>suffix <MID>: the suffix without its leading space
        assert text(SUFFIX)[0] != backend.fim_prompt(FimRequest("", SUFFIX))[len(bos) + 2]
        expected = [*bos, pre, *text(prefix), suf, *backend.fim_prompt(FimRequest("", SUFFIX))[len(bos) + 2 : -1], mid]
    else:
        expected = [*bos, pre, *text(prefix), suf, *text(SUFFIX), mid]
    assert got == expected
    pieces = [llm._model.token_get_text(i) for i in got]
    assert pieces.count(tokens[1]) == 1  # the smuggled spelling did not become the control token


def test_smollm2_has_no_fim_tokens_and_no_tool_template() -> None:
    from veil.engines.llamacpp import LlamaBackend
    from veil.engines.models import default_model_path

    backend = LlamaBackend(default_model_path(), "smollm2", n_ctx=256, threads=1)
    assert backend.fim is None and backend.tool_syntax is None and backend.formatter is not None


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return write_gguf(tmp_path_factory.mktemp("tiny") / "tiny-coder.gguf")


@pytest.fixture(scope="module")
def engine(model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EngineProcess]:
    sock = tmp_path_factory.mktemp("tiny-engine") / "engine.sock"
    with EngineProcess(sock, model.path, model_id=MODEL_ID, threads=1, n_ctx=2048, startup_timeout=120) as eng:
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


def test_fim_stops_at_the_end_of_middle_token(oai: openai.OpenAI) -> None:
    done = oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, temperature=0)
    # The model writes the middle, then its end-of-middle token, then more: the engine stops there.
    assert done.choices[0].text == MIDDLE and AFTER_END not in done.choices[0].text
    assert done.choices[0].finish_reason == "stop" and done.usage is not None and done.usage.completion_tokens == 1
    streamed = list(oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == MIDDLE
    cut = oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, stop=["+"])
    assert cut.choices[0].text == "    return a " and cut.choices[0].finish_reason == "stop"


def test_infill_request_shape(http: httpx.Client) -> None:
    body = {
        "input_prefix": PREFIX,
        "input_suffix": SUFFIX,
        "n_predict": 8,
        "input_extra": [{"filename": "util.py", "text": "x = 1\n"}],
    }
    whole = http.post("/infill", json=body).json()
    assert whole["content"] == MIDDLE and whole["stop"] is True and whole["stop_type"] == "eos"
    assert whole["tokens_predicted"] == 1 and whole["tokens_evaluated"] > len(PREFIX)
    with http.stream("POST", "/infill", json={**body, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == MIDDLE and events[-1]["stop"] is True


def test_tool_calls_auto_parallel_and_streamed(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "Weather and time in Paris?"}]
    resp = oai.chat.completions.create(model=MODEL_ID, messages=messages, tools=TOOLS, max_tokens=32)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and not choice.message.content
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert len({c.id for c in calls}) == 2
    one = oai.chat.completions.create(model=MODEL_ID, messages=messages, tools=TOOLS, max_tokens=32, parallel_tool_calls=False)
    assert [c.function.name for c in one.choices[0].message.tool_calls or []] == ["get_weather"]
    deltas = [
        c.choices[0].delta
        for c in oai.chat.completions.create(model=MODEL_ID, messages=messages, tools=TOOLS, max_tokens=32, stream=True)
        if c.choices
    ]
    streamed: dict[int, dict[str, str]] = {}
    for delta in deltas:
        for call in delta.tool_calls or []:
            entry = streamed.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += call.function.name or "" if call.function else ""
            entry["arguments"] += call.function.arguments or "" if call.function else ""
    assert [(e["name"], json.loads(e["arguments"])) for e in streamed.values()] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    # The same model answering in text when it does not open a call (steered off it here).
    text = oai.chat.completions.create(
        model=MODEL_ID, messages=messages, tools=TOOLS, max_tokens=32, logit_bias={"12": -100}, temperature=0
    )
    assert text.choices[0].message.content == "".join(TEXT_ANSWER) and text.choices[0].finish_reason == "stop"
    # The tool results go back; the template replays the calls in the model's own syntax.
    follow = [
        *messages,
        choice.message.model_dump(exclude_none=True),
        *[{"role": "tool", "tool_call_id": c.id, "content": "sunny"} for c in calls],
    ]
    again = oai.chat.completions.create(model=MODEL_ID, messages=follow, tools=TOOLS, max_tokens=32)
    assert again.usage is not None and again.usage.prompt_tokens > resp.usage.prompt_tokens  # type: ignore[union-attr]


def test_named_and_required_tools_and_counts(oai: openai.OpenAI, http: httpx.Client) -> None:
    named = oai.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "hi"}],
        tools=TOOLS,
        max_tokens=64,
        temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    (call,) = named.choices[0].message.tool_calls or []  # a grammar holds the bigram model to the schema
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {}
    count = http.post("/v1/messages/count_tokens", json={"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}]})
    plain = oai.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert count.json()["input_tokens"] == plain.usage.prompt_tokens  # type: ignore[union-attr]


def test_anthropic_tool_use_over_the_socket(engine: EngineProcess) -> None:
    import httpx2  # the anthropic SDK's own HTTP client (it refuses httpx objects)

    http = httpx2.Client(transport=httpx2.HTTPTransport(uds=str(engine.socket_path)), timeout=120)
    claude = anthropic.Anthropic(base_url=ENGINE_BASE_URL, api_key="unused", http_client=http, max_retries=0)
    tools: Any = [
        {"name": t["function"]["name"], "description": "a tool", "input_schema": t["function"]["parameters"]} for t in TOOLS
    ]
    msg = claude.messages.create(
        model=MODEL_ID, max_tokens=32, tools=tools, messages=[{"role": "user", "content": "Weather in Paris?"}]
    )
    assert msg.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in msg.content if b.type == "tool_use"] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    with claude.messages.stream(
        model=MODEL_ID, max_tokens=32, tools=tools, messages=[{"role": "user", "content": "Weather in Paris?"}]
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["tool_use", "tool_use"] and final.stop_reason == "tool_use"


def test_responses_function_calls_over_the_socket(oai: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", **t["function"]} for t in TOOLS]
    with oai.responses.stream(model=MODEL_ID, input="Weather in Paris?", tools=tools, max_output_tokens=32) as s:
        final = s.get_final_response()
    assert [(o.name, json.loads(o.arguments)) for o in final.output if o.type == "function_call"] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]


def test_zz_canary_never_reaches_the_engine_log(engine: EngineProcess, http: httpx.Client) -> None:
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("/v1/completions", {"prompt": CANARY, "suffix": CANARY, "max_tokens": 4}),
        (
            "/infill",
            {
                "input_prefix": CANARY,
                "input_suffix": CANARY,
                "input_extra": [{"filename": CANARY, "text": CANARY}],
                "n_predict": 4,
                "stream": True,
            },
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": CANARY}],
                "max_tokens": 8,
                "stream": True,
                "tools": [{"type": "function", "function": {"name": "f", "description": CANARY}}],
            },
        ),
        (
            "/v1/chat/completions",
            {
                "messages": [{"role": "user", "content": CANARY}],
                "max_tokens": 8,
                "tool_choice": "required",
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": CANARY}}},
                    {"type": "function", "function": {"name": "g"}},
                ],
            },
        ),
        (
            "/v1/messages",
            {
                "model": MODEL_ID,
                "max_tokens": 8,
                "system": CANARY,
                "stream": True,
                "messages": [{"role": "user", "content": [{"type": "image", "source": CANARY}]}],
            },
        ),
        ("/v1/messages", {"model": MODEL_ID, "max_tokens": 8, "messages": [{"role": "user", "content": CANARY}]}),
        ("/v1/responses", {"input": CANARY, "instructions": CANARY, "stream": True, "max_output_tokens": 8}),
        ("/v1/responses", {"input": CANARY, "previous_response_id": CANARY}),
    ]
    for path, body in attempts:
        http.post(path, json=body)
    time.sleep(0.2)
    log = engine.log_text()
    assert f"serving {MODEL_ID}" in log
    assert CANARY not in log and "Traceback" not in log
