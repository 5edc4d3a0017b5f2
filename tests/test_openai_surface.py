"""The OpenAI API surface, end to end *through the encryption*, with the official ``openai`` SDK.

client (openai SDK) ─ OhttpTransport ─▶ real gateway app (uvicorn, TCP) ─▶ real llama.cpp engine
(SmolLM2, Unix socket). No coordinator: the gateway gets a freshly generated key pair and the client
encrypts to its key configuration. One engine serves the whole module; max_tokens stays small.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from veil.client.transport import OhttpTransport
from veil.engines.launcher import EngineProcess
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.testing import ServerThread
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app

pytestmark = pytest.mark.slow

MODEL = "SmolLM2-135M-Instruct"
CANARY = f"CANARY{uuid.uuid4().hex}"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def veil_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyPair, str, EngineProcess]]:
    sock = tmp_path_factory.mktemp("surface") / "engine.sock"
    pair = KeyPair.generate(7)
    with EngineProcess(sock, threads=2, n_ctx=1024, startup_timeout=120) as engine:
        upstream = EngineLink(str(sock))
        with ServerThread(create_gateway_app(KeyStore([pair]), upstream)) as gateway:
            yield pair, gateway.url, engine


@pytest.fixture(scope="module")
def sdk(veil_gateway: tuple[KeyPair, str, EngineProcess]) -> Iterator[openai.OpenAI]:
    pair, url, _ = veil_gateway
    http = httpx.Client(transport=OhttpTransport(pair.config, url), timeout=120)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", http_client=http, max_retries=0)
    yield client
    client.close()


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def _chat(sdk: openai.OpenAI, text: str, **kw: Any) -> Any:
    kw.setdefault("max_tokens", 8)
    return sdk.chat.completions.create(model=MODEL, messages=_user(text), **kw)


def test_models(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == [MODEL]


def test_chat_non_streaming(sdk: openai.OpenAI) -> None:
    resp = _chat(sdk, "Say hello.", temperature=0)
    assert resp.object == "chat.completion" and resp.model == MODEL
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content.strip()
    assert resp.usage is not None and resp.usage.completion_tokens >= 1


def test_chat_streaming(sdk: openai.OpenAI) -> None:
    chunks = list(_chat(sdk, "Count from one to ten.", max_tokens=12, temperature=0, stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) >= 3 and "".join(pieces).strip()
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_stream_usage_matches_the_whole_answer(sdk: openai.OpenAI) -> None:
    """``stream_options.include_usage``: a last chunk with no choices and the same usage."""
    whole = _chat(sdk, "Name three colours.", max_tokens=8, temperature=0)
    chunks = list(
        _chat(sdk, "Name three colours.", max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True})
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")  # cached_tokens depends on the last request
    assert {k: getattr(chunks[-1].usage, k) for k in counts} == {k: getattr(whole.usage, k) for k in counts}
    plain = list(_chat(sdk, "Name three colours.", max_tokens=2, stream=True))
    assert all(c.choices and c.usage is None for c in plain)
    done = list(
        sdk.completions.create(
            model=MODEL, prompt="Once upon", max_tokens=3, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert done[-1].usage is not None and done[-1].usage.completion_tokens == 3


def test_max_tokens_and_max_completion_tokens(sdk: openai.OpenAI) -> None:
    for kw in ({"max_tokens": 3}, {"max_completion_tokens": 3, "max_tokens": None}):
        kw = {k: v for k, v in kw.items() if v is not None}
        resp = sdk.chat.completions.create(
            model=MODEL, messages=_user("Tell me a long story about a dragon."), temperature=0, **kw
        )
        assert resp.choices[0].finish_reason == "length"
        assert resp.usage is not None and resp.usage.completion_tokens == 3


def test_stop(sdk: openai.OpenAI) -> None:
    prompt = "List the days of the week, separated by commas."
    full = _chat(sdk, prompt, max_tokens=16, temperature=0).choices[0].message.content
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]  # a word that greedy decoding reaches after a few tokens
    cut = _chat(sdk, prompt, max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    text = cut.choices[0].message.content
    assert stop not in text and full.startswith(text.rstrip())
    assert len(text) < len(full)


def test_temperature_zero_is_greedy_and_bad_temperature_is_refused(sdk: openai.OpenAI) -> None:
    a = _chat(sdk, "Name a fruit.", temperature=0).choices[0].message.content
    b = _chat(sdk, "Name a fruit.", temperature=0).choices[0].message.content
    assert a == b
    with pytest.raises(openai.BadRequestError) as info:
        _chat(sdk, "Name a fruit.", temperature=5)
    assert info.value.code == "invalid_request" and info.value.param == "temperature"


def test_seed_makes_sampling_reproducible(sdk: openai.OpenAI) -> None:
    prompt = "Write a sentence about the sea."
    runs = {s: _chat(sdk, prompt, temperature=1.2, seed=s).choices[0].message.content for s in (11, 12, 13)}
    again = _chat(sdk, prompt, temperature=1.2, seed=11).choices[0].message.content
    assert again == runs[11]
    assert len(set(runs.values())) >= 2  # the seed, not greedy decoding, made them equal


def test_logprobs_and_top_logprobs(sdk: openai.OpenAI) -> None:
    resp = _chat(sdk, "Say hi.", max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    for tok in content:
        assert tok.logprob <= 0 and len(tok.top_logprobs) == 3
        assert tok.top_logprobs[0].token == tok.token  # greedy picks the most likely token
        assert abs(tok.top_logprobs[0].logprob - tok.logprob) < 1e-4
        assert bytes(tok.bytes) == tok.token.encode()
    plain = _chat(sdk, "Say hi.", max_tokens=2, temperature=0, logprobs=True)
    assert all(t.top_logprobs == [] for t in plain.choices[0].logprobs.content)
    with pytest.raises(openai.BadRequestError) as info:
        _chat(sdk, "Say hi.", top_logprobs=2)
    assert info.value.param == "top_logprobs"


def test_logit_bias(sdk: openai.OpenAI) -> None:
    plain = _chat(sdk, "Say hi.", max_tokens=4, temperature=0).choices[0].message.content
    forced = _chat(sdk, "Say hi.", max_tokens=4, temperature=0, logprobs=True, logit_bias={"1000": 100})
    tokens = [t.token for t in forced.choices[0].logprobs.content]
    assert len(tokens) == 4 and len(set(tokens)) == 1  # token 1000, every time
    assert forced.choices[0].message.content != plain
    with pytest.raises(openai.BadRequestError) as info:
        _chat(sdk, "Say hi.", logit_bias={"99999999": 1})
    assert info.value.param == "logit_bias"


def test_logprobs_streaming(sdk: openai.OpenAI) -> None:
    chunks = list(_chat(sdk, "Say hi.", max_tokens=3, temperature=0, logprobs=True, top_logprobs=2, stream=True))
    scored = [c for c in chunks if c.choices[0].delta.content]
    assert scored and all(len(c.choices[0].logprobs.content[0].top_logprobs) == 2 for c in scored)


def test_json_mode_output_parses(sdk: openai.OpenAI) -> None:
    resp = _chat(
        sdk,
        'Reply with a JSON object with one key "answer" whose value is the number 4.',
        max_tokens=40,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_json_schema_structured_output(sdk: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    resp = _chat(
        sdk,
        "What is 2+2? Answer in JSON.",
        max_tokens=24,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "sum", "schema": schema}},
    )
    data = json.loads(resp.choices[0].message.content)
    assert set(data) == {"answer"} and isinstance(data["answer"], int)


def test_sdk_structured_output_parse(sdk: openai.OpenAI) -> None:
    """The SDK's own helper: a pydantic model becomes a strict json_schema, the reply parses back."""
    from pydantic import BaseModel

    class Sum(BaseModel):
        answer: int

    resp = sdk.chat.completions.parse(
        model=MODEL,
        messages=_user("What is 2+2? Answer in JSON."),
        max_tokens=24,
        temperature=0,
        response_format=Sum,
    )
    assert isinstance(resp.choices[0].message.parsed, Sum)


def test_tool_call_forced_by_name(sdk: openai.OpenAI) -> None:
    resp = _chat(
        sdk,
        "What is the weather in Paris?",
        max_tokens=24,
        temperature=0,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.function_call is None  # legacy field only for legacy `functions`
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    args = json.loads(call.function.arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str)


def test_tool_call_streaming(sdk: openai.OpenAI) -> None:
    stream = _chat(
        sdk,
        "What is the weather in Rome?",
        max_tokens=24,
        temperature=0,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    args, names, finish = "", set(), None
    for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or []:
            assert call.index == 0
            names.add(call.function.name)
            args += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert names - {None} == {"get_weather"} and finish == "tool_calls"
    assert "city" in json.loads(args)


def test_tool_choice_auto_is_refused_clearly(sdk: openai.OpenAI) -> None:
    for choice in ("auto", None):
        kw = {"tool_choice": choice} if choice else {}
        with pytest.raises(openai.BadRequestError) as info:
            _chat(sdk, "What is the weather in Paris?", tools=[WEATHER_TOOL], **kw)
        assert info.value.code == "unsupported_tools" and info.value.param == "tool_choice"
        assert info.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as info:
        _chat(sdk, "hi", tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "nope"}})
    assert info.value.code == "invalid_request"
    # "none" means: answer in text, which the engine can always do.
    assert _chat(sdk, "hi", tools=[WEATHER_TOOL], tool_choice="none").choices[0].message.content


def test_completions(sdk: openai.OpenAI) -> None:
    resp = sdk.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0)
    assert resp.object == "text_completion" and resp.choices[0].text
    chunks = list(sdk.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=4, stream=True))
    assert sum(1 for c in chunks if c.choices and c.choices[0].text) >= 2
    scored = sdk.completions.create(model=MODEL, prompt="Once upon", max_tokens=2, temperature=0, logprobs=2)
    lp = scored.choices[0].logprobs
    assert len(lp.tokens) == 2 and all(len(d) >= 2 for d in lp.top_logprobs)


def test_completion_suffix_refused_in_openai_shape(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model=MODEL, prompt="def add(a, b):\n    ", suffix="\n    return c")
    err = info.value
    assert err.status_code == 400 and err.code == "unsupported_suffix" and err.param == "suffix"
    assert err.body["type"] == "invalid_request_error"


def test_embeddings(sdk: openai.OpenAI) -> None:
    resp = sdk.embeddings.create(model=MODEL, input=["hello", "world"])
    assert [d.index for d in resp.data] == [0, 1]
    vec = resp.data[0].embedding
    assert len(vec) > 100 and all(isinstance(x, float) for x in vec[:8])
    assert resp.data[0].embedding != resp.data[1].embedding
    # The SDK asks for base64 unless told otherwise; both encodings carry the same float32s.
    floats = sdk.embeddings.create(model=MODEL, input="hello", encoding_format="float").data[0].embedding
    assert len(floats) == len(vec) and max(abs(a - b) for a, b in zip(floats, vec)) < 1e-6
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model=MODEL, input="hello", dimensions=8)
    assert info.value.code == "unsupported_dimensions"


def test_errors_arrive_in_openai_shape(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        sdk.chat.completions.create(model="gpt-4o", messages=_user("hi"), max_tokens=2)
    assert nf.value.code == "model_not_found" and nf.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=MODEL, messages=[], max_tokens=2)
    assert bad.value.code == "invalid_request" and bad.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as n:
        _chat(sdk, "hi", n=2)
    assert n.value.param == "n"
    with pytest.raises(openai.BadRequestError) as ctx:
        _chat(sdk, "word " * 1500)
    assert ctx.value.code == "context_length_exceeded"


def test_schema_a_grammar_cannot_enforce_is_refused(sdk: openai.OpenAI) -> None:
    bad = {"type": "object", "properties": {"a": {"type": "string", "pattern": "(unclosed"}}}
    with pytest.raises(openai.BadRequestError) as info:
        _chat(sdk, "hi", response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}})
    assert info.value.code == "unsupported_schema" and info.value.param == "response_format"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}
    with pytest.raises(openai.BadRequestError) as info:
        _chat(sdk, "hi", tools=[tool], tool_choice={"type": "function", "function": {"name": "f"}})
    assert info.value.code == "unsupported_schema" and info.value.param == "tools"


def test_zz_canary_never_reaches_engine_logs(sdk: openai.OpenAI, veil_gateway: tuple[KeyPair, str, EngineProcess]) -> None:
    """The new paths (grammars, tools, logprobs, base64 embeddings) keep the engine log clean."""
    engine = veil_gateway[2]
    schema = {"type": "object", "properties": {CANARY: {"type": "string", "enum": [CANARY]}}}
    tool = {"type": "function", "function": {"name": "f", "description": CANARY, "parameters": schema}}
    named = {"type": "function", "function": {"name": "f"}}
    attempts = [
        lambda: _chat(sdk, CANARY, max_tokens=4, logprobs=True, top_logprobs=2),
        lambda: _chat(sdk, CANARY, max_tokens=4, tools=[tool], tool_choice=named),
        lambda: _chat(sdk, CANARY, max_tokens=4, tools=[tool]),
        lambda: _chat(sdk, CANARY, max_tokens=4, response_format={"type": "json_object"}),
        lambda: _chat(
            sdk,
            CANARY,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": CANARY, "schema": {"type": "string", "pattern": "(" + CANARY}},
            },
        ),
        lambda: _chat(
            sdk,
            CANARY,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": CANARY}}}],
            tool_choice=named,
        ),
        lambda: sdk.embeddings.create(model=MODEL, input=CANARY),
        lambda: sdk.completions.create(model=MODEL, prompt=CANARY, max_tokens=2, logprobs=1),
    ]
    for attempt in attempts:
        try:
            attempt()
        except openai.BadRequestError:
            pass
    time.sleep(0.2)
    log = engine.log_text()
    assert "serving SmolLM2-135M-Instruct" in log
    assert CANARY not in log and "Traceback" not in log
