"""Anthropic's Messages API, OpenAI's Responses API and llama.cpp's /infill, as the SDKs parse them.

The engines' shared app (uvicorn, TCP) over a scripted backend: the backend yields the chunks a
model would (text, tool-call deltas, finish reasons, a failure mid-stream), so every shape, event
order and error body is checked by the official ``openai`` and ``anthropic`` SDKs' own parsers,
including their stream helpers, which refuse events out of order. The real engines behind the
same app are tested in test_engine_*.py and through `veil up` in test_sdk_interop.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from veil.engines.base import Backend, Chunk, FinishChunk, TextChunk, ToolCallChunk, Usage
from veil.engines.fim import FimRequest
from veil.engines.openai_api import ChatCompletionRequest, CompletionRequest, EngineAPIError
from veil.engines.openai_app import create_openai_app
from veil.engines.tool_calls import call_entry
from veil.testing import ServerThread

MODEL = "scripted"
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


class Scripted(Backend):
    """Answers by the last user message's first word; records what it was asked."""

    def __init__(self) -> None:
        super().__init__(MODEL)
        self.seen: list[Any] = []

    async def chat(self, req: ChatCompletionRequest) -> AsyncGenerator[Chunk, None]:
        self.seen.append(req)
        last = req.messages[-1]
        word = "tool" if last.role == "tool" else last.text().split()[0]
        usage = Usage(42, 5, 2)
        if word == "refuse":
            raise EngineAPIError(400, "no tools for you", "unsupported_tools", "tool_choice")
        if word in ("text", "tool"):  # "tool": the turn after a tool's result
            yield TextChunk("Hello")
            yield TextChunk(" world")
            yield FinishChunk("stop", usage)
        elif word == "stop":
            yield TextChunk("cut")
            yield FinishChunk("stop", usage, "END")
        elif word == "long":
            yield TextChunk("and so on")
            yield FinishChunk("length", usage)
        elif word == "tools":
            yield TextChunk("Checking.")
            yield ToolCallChunk([call_entry(0, "get_weather", "")])
            yield ToolCallChunk([{"index": 0, "function": {"arguments": '{"city": '}}])
            yield ToolCallChunk([{"index": 0, "function": {"arguments": '"Paris"}'}}])
            yield ToolCallChunk([call_entry(1, "get_weather", '{"city": "Rome"}')])
            yield FinishChunk("tool_calls", usage)
        elif word == "fail":
            yield TextChunk("partial")
            raise RuntimeError("the model thread died")

    async def count_tokens(self, req: ChatCompletionRequest) -> int:
        self.seen.append(req)
        return 42

    async def complete(self, req: CompletionRequest, fim: FimRequest | None = None) -> AsyncGenerator[Chunk, None]:
        self.seen.append((req, fim))
        if fim is None:
            raise EngineAPIError(400, "plain completions are not scripted", "invalid_request")
        yield TextChunk("return a")
        yield TextChunk(" + b")
        yield FinishChunk("stop", Usage(17, 4, 0))


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[str, Scripted]]:
    backend = Scripted()
    with ServerThread(create_openai_app(backend)) as server:
        yield server.url, backend


@pytest.fixture(scope="module")
def oai(served: tuple[str, Scripted]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[0]}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def claude(served: tuple[str, Scripted]) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=served[0], api_key="unused", max_retries=0)


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# -- Anthropic Messages ----------------------------------------------------------------------------


def test_messages_whole(claude: anthropic.Anthropic, served: tuple[str, Scripted]) -> None:
    # temperature and top_k: what older SDKs (and many tools) still send; the current SDK has neither.
    msg = claude.messages.create(
        model=MODEL,
        max_tokens=16,
        system="Be brief.",
        messages=_user("text please"),
        stop_sequences=["END"],
        extra_body={"temperature": 0.5, "top_k": 3},
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL and msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "Hello world"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (40, 2, 5)
    chat = served[1].seen[-1]
    assert chat.messages[0].role == "system" and chat.messages[0].text() == "Be brief."
    assert (chat.max_tokens, chat.stops, chat.temperature, chat.top_k) == (16, ["END"], 0.5, 3)
    stopped = claude.messages.create(model=MODEL, max_tokens=4, messages=_user("stop here"), stop_sequences=["END"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "END"
    assert claude.messages.create(model=MODEL, max_tokens=4, messages=_user("long")).stop_reason == "max_tokens"


def test_messages_stream_events_in_anthropic_order(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model=MODEL, max_tokens=16, messages=_user("text")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["Hello", " world"] and final.content[0].text == "Hello world"
    assert final.usage.input_tokens == 40 and final.usage.output_tokens == 5 and final.stop_reason == "end_turn"
    raw = [e.type for e in claude.messages.create(model=MODEL, max_tokens=16, messages=_user("text"), stream=True)]
    assert raw == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_messages_tool_use_and_tool_result(claude: anthropic.Anthropic, served: tuple[str, Scripted]) -> None:
    tool = {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["parameters"]}
    kw: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 32,
        "tools": [tool],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    msg = claude.messages.create(messages=_user("tools please"), **kw)
    assert [b.type for b in msg.content] == ["text", "tool_use", "tool_use"] and msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Rome"}] and uses[0].id.startswith("toolu_")
    chat = served[1].seen[-1]
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False
    with claude.messages.stream(messages=_user("tools"), **kw) as stream:
        streamed = stream.get_final_message()
    assert [b.input for b in streamed.content if b.type == "tool_use"] == [{"city": "Paris"}, {"city": "Rome"}]
    # The tool's answer goes back as a tool_result block; the backend sees a `tool` message.
    follow = claude.messages.create(
        messages=[
            *_user("tools please"),
            {"role": "assistant", "content": msg.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"}]},
        ],
        **kw,
    )
    assert follow.content[0].text == "Hello world"
    history = served[1].seen[-1].messages
    assert [m.role for m in history] == ["user", "assistant", "tool"]
    assert history[1].tool_calls[0]["id"] == uses[0].id and history[2].tool_call_id == uses[0].id


def test_messages_count_tokens(claude: anthropic.Anthropic) -> None:
    assert claude.messages.count_tokens(model=MODEL, messages=_user("text")).input_tokens == 42


def test_messages_errors_in_anthropic_shape(claude: anthropic.Anthropic) -> None:
    cases: list[tuple[dict[str, Any], type[Exception], str, str]] = [
        ({"messages": _user("refuse")}, anthropic.BadRequestError, "invalid_request_error", "unsupported_tools"),
        ({"messages": _user("text"), "model": "claude-x"}, anthropic.NotFoundError, "not_found_error", "model_not_found"),
        (
            {"messages": _user("text"), "extra_body": {"temperature": 1.5}},
            anthropic.BadRequestError,
            "invalid_request_error",
            "invalid_request",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            anthropic.BadRequestError,
            "invalid_request_error",
            "unsupported_content",
        ),
        (
            {"messages": [*_user("text"), {"role": "assistant", "content": "Sure,"}]},
            anthropic.BadRequestError,
            "invalid_request_error",
            "unsupported_prefill",
        ),
        (
            {"messages": _user("text"), "thinking": {"type": "enabled", "budget_tokens": 1024}},
            anthropic.BadRequestError,
            "invalid_request_error",
            "unsupported_thinking",
        ),
    ]
    for extra, kind, error_type, code in cases:
        for stream in (False, True):
            with pytest.raises(kind) as info:
                claude.messages.create(**{"model": MODEL, "max_tokens": 8, **extra, "stream": stream})
            body = info.value.body
            assert isinstance(body, dict) and body["type"] == "error", body
            assert body["error"]["type"] == error_type and body["error"]["code"] == code


def test_messages_failure_mid_stream_is_an_error_event(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        with claude.messages.stream(model=MODEL, max_tokens=8, messages=_user("fail")) as stream:
            list(stream.text_stream)
    body = info.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "api_error"
    assert body["error"]["message"] == "generation failed (RuntimeError)"  # the type, never the text


# -- OpenAI Responses ------------------------------------------------------------------------------


def test_responses_whole(oai: openai.OpenAI, served: tuple[str, Scripted]) -> None:
    resp = oai.responses.create(
        model=MODEL, input="text please", instructions="Be brief.", max_output_tokens=16, metadata={"k": "v"}
    )
    assert resp.object == "response" and resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.output_text == "Hello world" and resp.store is False and resp.metadata == {"k": "v"}
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (42, 5, 47)
    assert resp.usage.input_tokens_details.cached_tokens == 2
    chat = served[1].seen[-1]
    assert [m.role for m in chat.messages] == ["system", "user"] and chat.max_tokens == 16
    cut = oai.responses.create(model=MODEL, input="long", max_output_tokens=16)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens" and cut.output_text == "and so on"


def test_responses_stream_helper_accepts_the_event_order(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model=MODEL, input="text") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Hello", " world"] and final.output_text == "Hello world"
    events = [e.type for e in oai.responses.create(model=MODEL, input="text", stream=True)]
    assert events == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    seqs = [e.sequence_number for e in oai.responses.create(model=MODEL, input="long", stream=True)]
    assert seqs == list(range(len(seqs)))
    last = list(oai.responses.create(model=MODEL, input="long", stream=True))[-1]
    assert last.type == "response.incomplete" and last.response.incomplete_details.reason == "max_output_tokens"


def test_responses_function_calls(oai: openai.OpenAI, served: tuple[str, Scripted]) -> None:
    tools: Any = [{"type": "function", **WEATHER}]
    resp = oai.responses.create(model=MODEL, input="tools please", tools=tools, tool_choice="required", parallel_tool_calls=False)
    calls = [o for o in resp.output if o.type == "function_call"]
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]
    assert resp.output[0].type == "message" and resp.output_text == "Checking."
    chat = served[1].seen[-1]
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False
    with oai.responses.stream(model=MODEL, input="tools", tools=tools) as stream:
        final = stream.get_final_response()
    assert [o.type for o in final.output] == ["message", "function_call", "function_call"]
    one = oai.responses.create(model=MODEL, input="tools", tools=tools, max_tool_calls=1)
    assert sum(1 for o in one.output if o.type == "function_call") == 1
    # The next turn sends the calls and their outputs back as input items.
    follow = oai.responses.create(
        model=MODEL,
        tools=tools,
        input=[
            {"role": "user", "content": "tools please"},
            *[{"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls],
            *[{"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls],
        ],
    )
    assert follow.output_text == "Hello world"
    history = served[1].seen[-1].messages
    assert [m.role for m in history] == ["user", "assistant", "tool", "tool"] and len(history[1].tool_calls) == 2


def test_responses_refusals_in_openai_shape(oai: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"input": "refuse"}, "unsupported_tools", "tool_choice"),
        ({"input": "text", "previous_response_id": "resp_123"}, "unsupported_state", "previous_response_id"),
        ({"input": "text", "tools": [{"type": "web_search"}]}, "unsupported_tools", "tools"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "unsupported_content", "input.0"),
    ]
    for extra, code, param in cases:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                oai.responses.create(model=MODEL, stream=stream, **extra)
            assert info.value.code == code and info.value.param == param
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="gpt-5", input="text")


def test_responses_failure_mid_stream(oai: openai.OpenAI) -> None:
    events = list(oai.responses.create(model=MODEL, input="fail", stream=True))
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].message == "generation failed (RuntimeError)" and events[-1].response.status == "failed"


def test_async_sdks(served: tuple[str, Scripted]) -> None:
    async def go() -> None:
        async with openai.AsyncOpenAI(base_url=f"{served[0]}/v1", api_key="unused", max_retries=0) as oa:
            stream = await oa.responses.create(model=MODEL, input="text", stream=True)
            assert [e.delta async for e in stream if e.type == "response.output_text.delta"] == ["Hello", " world"]
        async with anthropic.AsyncAnthropic(base_url=served[0], api_key="unused", max_retries=0) as an:
            async with an.messages.stream(model=MODEL, max_tokens=8, messages=_user("text")) as s:
                assert [t async for t in s.text_stream] == ["Hello", " world"]

    asyncio.run(go())


# -- llama.cpp /infill -----------------------------------------------------------------------------


def test_infill_shape_whole_and_streamed(served: tuple[str, Scripted]) -> None:
    url, backend = served
    body = {
        "input_prefix": "def add(a, b):\n    ",
        "input_suffix": "\n",
        "prompt": "",
        "input_extra": [{"filename": "util.py", "text": "x = 1"}],
        "n_predict": 12,
        "temperature": 0,
    }
    whole = httpx.post(f"{url}/infill", json=body, timeout=30).json()
    assert whole["content"] == "return a + b" and whole["stop"] is True and whole["stop_type"] == "eos"
    assert (whole["tokens_predicted"], whole["tokens_evaluated"]) == (4, 17)
    assert whole["timings"]["predicted_n"] == 4 and whole["timings"]["prompt_n"] == 17
    settings, fim = backend.seen[-1]
    assert fim == FimRequest("def add(a, b):\n    ", "\n", (("util.py", "x = 1"),), "")
    assert settings.max_tokens == 12 and settings.temperature == 0
    with httpx.stream("POST", f"{url}/infill", json={**body, "stream": True}, timeout=30) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert [e["content"] for e in events] == ["return a", " + b", ""]
    assert [e["stop"] for e in events] == [False, False, True] and events[-1]["tokens_predicted"] == 4
    # OpenAI's completions with a suffix reach the same fill-in-the-middle request.
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    done = oa.completions.create(model=MODEL, prompt="def add(a, b):\n    ", suffix="\n", max_tokens=8)
    assert done.choices[0].text == "return a + b" and backend.seen[-1][1] == FimRequest("def add(a, b):\n    ", "\n")
