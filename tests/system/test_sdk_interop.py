"""Every client people already use, against a real `veil up`: code completion, tools, the Responses
API and Anthropic's Messages API, through `veil proxy` and through ``veil.Client``.

client (official ``openai`` / ``anthropic`` SDK, httpx for llama.cpp's ``/infill``) ─plain HTTP─▶
`veil proxy`'s app (verifies the deployment, encrypts) ─OHTTP─▶ worker gateway ─▶ sandboxed llama.cpp
engine, on the simulated TEE that `veil up` runs (coordinator, attestation, sealed weights). The
model is `veil up --model`'s: a tiny GGUF the test writes (tests/tiny_models.py), a bigram machine
with StarCoder's FIM tokens and a Hermes tool template, so every answer is known in advance and the
module stays fast on two cores. One deployment and one proxy serve the whole module.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import openai
import pytest

from test_e2e import _files_containing
from tiny_models import FIRST_CALL, MIDDLE, SECOND_CALL, TEXT_ANSWER, write_gguf
from veil.client.freshness import AsyncReverifier
from veil.client.policy import ClientPolicy
from veil.client.proxy import create_proxy_app
from veil.client.sdk import Client
from veil.localdeploy import LocalDeployment
from veil.testing import ServerThread, free_port

pytestmark = pytest.mark.slow

SANDBOX = os.environ.get("VEIL_TEST_SANDBOX", "bubblewrap")
CANARY = f"CANARY-{uuid.uuid4().hex}"
PREFIX, SUFFIX = f"# {CANARY}\ndef add(a, b):\n", "\n\nprint(add(1, 2))\n"
TOOLS: Any = [
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
CALLS = [("get_weather", {"city": "Paris"}), ("get_time", {})]
#: What the tiny model writes after "assistant\n" when no tools are offered (the calls as plain text).
RAW_CALLS = "<tool_call>" + "".join(FIRST_CALL) + "</tool_call>" + "".join(SECOND_CALL)


def _user(text: str) -> Any:
    return [{"role": "user", "content": f"{text} {CANARY}"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    model = write_gguf(tmp_path_factory.mktemp("tiny") / "tiny-coder.gguf")
    dep = LocalDeployment(
        tmp_path_factory.mktemp("veil-state"),
        coordinator_port=free_port(),
        worker_port=free_port(),
        sandbox=SANDBOX,
        model_path=model.path,
    )
    dep.start()
    try:
        with ServerThread(create_proxy_app(AsyncReverifier(ClientPolicy.load(dep.policy_path)))) as proxy:
            oai = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, timeout=120)
            model_id = oai.models.list().data[0].id  # what `veil up` serves the file as
            yield SimpleNamespace(deployment=dep, proxy_url=proxy.url, oai=oai, model=model, model_id=model_id)
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def claude(stack: SimpleNamespace) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.proxy_url, api_key="unused", max_retries=0, timeout=120)


def _streamed_calls(chunks: Any) -> list[tuple[str, Any]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            entry["name"] += (call.function.name or "") if call.function else ""
            entry["arguments"] += (call.function.arguments or "") if call.function else ""
    return [(e["name"], json.loads(e["arguments"])) for e in calls.values()]


# -- code completion ---------------------------------------------------------------------------------


def test_fim_through_the_proxy(stack: SimpleNamespace) -> None:
    """Continue / Tabby's shape (prompt + suffix), whole and streamed, and llama.vscode's /infill."""
    oai, model = stack.oai, stack.model_id
    done = oai.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, temperature=0)
    assert done.choices[0].text == MIDDLE and done.choices[0].finish_reason == "stop"
    streamed = list(oai.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == MIDDLE
    cut = oai.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, stop=["+"])
    assert cut.choices[0].text == "    return a "
    body = {
        "input_prefix": PREFIX,
        "input_suffix": SUFFIX,
        "n_predict": 8,
        "input_extra": [{"filename": "util.py", "text": f"x = 1  # {CANARY}\n"}],
    }
    infill = httpx.post(f"{stack.proxy_url}/infill", json=body, timeout=120)
    assert infill.status_code == 200 and infill.json()["content"] == MIDDLE and infill.json()["stop_type"] == "eos"
    with httpx.stream("POST", f"{stack.proxy_url}/infill", json={**body, "stream": True}, timeout=120) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == MIDDLE and events[-1]["stop"] is True


# -- tools ---------------------------------------------------------------------------------------


def test_tools_auto_parallel_and_streamed_through_the_proxy(stack: SimpleNamespace) -> None:
    oai, model = stack.oai, stack.model_id
    resp = oai.chat.completions.create(model=model, messages=_user("Weather and time?"), tools=TOOLS, max_tokens=32)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls or []] == CALLS
    stream = oai.chat.completions.create(model=model, messages=_user("Weather?"), tools=TOOLS, max_tokens=32, stream=True)
    assert _streamed_calls(stream) == CALLS
    required = oai.chat.completions.create(
        model=model,
        messages=_user("Weather?"),
        tools=TOOLS,
        max_tokens=48,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
    )
    assert len(required.choices[0].message.tool_calls or []) == 1
    text = oai.chat.completions.create(
        model=model,
        messages=_user("Hi"),
        tools=TOOLS,
        max_tokens=32,
        logit_bias={str(stack.model.id("<tool_call>")): -100},
        temperature=0,
    )
    assert text.choices[0].message.content == "".join(TEXT_ANSWER) and text.choices[0].finish_reason == "stop"


def test_async_openai_sdk_through_the_proxy(stack: SimpleNamespace) -> None:
    async def run() -> tuple[list[Any], list[str], Any]:
        async with openai.AsyncOpenAI(base_url=f"{stack.proxy_url}/v1", api_key="unused", max_retries=0, timeout=120) as oa:
            chunks = [
                c
                async for c in await oa.chat.completions.create(
                    model=stack.model_id, messages=_user("Weather?"), tools=TOOLS, max_tokens=32, stream=True
                )
            ]
            fim = [
                c.choices[0].text
                async for c in await oa.completions.create(
                    model=stack.model_id, prompt=PREFIX, suffix=SUFFIX, max_tokens=8, stream=True
                )
                if c.choices
            ]
            async with oa.responses.stream(
                model=stack.model_id,
                input=f"Weather? {CANARY}",
                tools=[{"type": "function", **t["function"]} for t in TOOLS],
                max_output_tokens=32,
            ) as stream:
                final = await stream.get_final_response()
            return chunks, fim, final

    chunks, fim, final = asyncio.run(run())
    assert _streamed_calls(chunks) == CALLS and "".join(fim) == MIDDLE
    assert [(o.name, json.loads(o.arguments)) for o in final.output if o.type == "function_call"] == CALLS


# -- the Responses API ---------------------------------------------------------------------------


def test_responses_through_the_proxy(stack: SimpleNamespace) -> None:
    oai, model = stack.oai, stack.model_id
    resp = oai.responses.create(model=model, input=f"Hi {CANARY}", instructions="Be brief.", max_output_tokens=32)
    assert resp.status == "completed" and resp.output_text == RAW_CALLS
    assert resp.usage is not None and resp.usage.output_tokens > 0 and resp.usage.input_tokens > 0
    with oai.responses.stream(model=model, input=f"Hi {CANARY}", max_output_tokens=32) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_response()
    assert events[:2] == ["response.created", "response.in_progress"] and events[-1] == "response.completed"
    assert "response.output_text.delta" in events and final.output_text == RAW_CALLS
    short = oai.responses.create(model=model, input="Hi", max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details is not None
    with pytest.raises(openai.BadRequestError) as info:
        oai.responses.create(model=model, input="Hi", previous_response_id="resp_123")
    assert info.value.code == "unsupported_state" and info.value.status_code == 400


# -- Anthropic's Messages API ----------------------------------------------------------------------


def test_anthropic_messages_through_the_proxy(claude: anthropic.Anthropic, stack: SimpleNamespace) -> None:
    model = stack.model_id
    msg = claude.messages.create(model=model, max_tokens=32, system=f"Be brief. {CANARY}", messages=_user("Hi"))
    assert msg.stop_reason == "end_turn" and [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == RAW_CALLS  # type: ignore[union-attr]
    stopped = claude.messages.create(model=model, max_tokens=32, messages=_user("Hi"), stop_sequences=["Paris"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "Paris"
    assert stopped.content[0].text == RAW_CALLS.split("Paris")[0]  # type: ignore[union-attr]
    count = claude.messages.count_tokens(model=model, messages=_user("Hi"))
    assert count.input_tokens == stopped.usage.input_tokens + (stopped.usage.cache_read_input_tokens or 0)
    with claude.messages.stream(model=model, max_tokens=32, messages=_user("Hi")) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1 and "".join(pieces) == RAW_CALLS and final.stop_reason == "end_turn"
    raw = [e.type for e in claude.messages.create(model=model, max_tokens=32, messages=_user("Hi"), stream=True)]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    tools: Any = [
        {"name": t["function"]["name"], "description": "a tool", "input_schema": t["function"]["parameters"]} for t in TOOLS
    ]
    used = claude.messages.create(model=model, max_tokens=32, tools=tools, messages=_user("Weather?"))
    assert used.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in used.content if b.type == "tool_use"] == CALLS


def test_refusals_in_each_apis_error_shape(claude: anthropic.Anthropic, stack: SimpleNamespace) -> None:
    image: Any = [
        {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}],
        }
    ]
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=stack.model_id, max_tokens=8, messages=image)
    assert info.value.body["type"] == "error"  # type: ignore[index]
    assert info.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert info.value.body["error"]["code"] == "unsupported_content"  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError):
        claude.messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=_user("Hi"))
    with pytest.raises(openai.BadRequestError) as oinfo:
        stack.oai.completions.create(model=stack.model_id, prompt="x", suffix="y", echo=True)
    assert oinfo.value.status_code == 400 and oinfo.value.param in ("echo", "suffix")


# -- veil.Client: the SDK, no proxy ----------------------------------------------------------------


def test_veil_client_carries_fim_tools_and_responses(stack: SimpleNamespace) -> None:
    with Client(stack.deployment.policy_path) as client:
        fim = client.completions.create(model=stack.model_id, prompt=PREFIX, suffix=SUFFIX, max_tokens=8)
        assert fim.choices[0].text == MIDDLE
        resp = client.chat.completions.create(model=stack.model_id, messages=_user("Weather?"), tools=TOOLS, max_tokens=32)
        calls = resp.choices[0].message.tool_calls or []
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == CALLS
        with client.responses.stream(model=stack.model_id, input=f"Hi {CANARY}", max_output_tokens=32) as stream:
            assert stream.get_final_response().output_text == RAW_CALLS


def test_veil_client_carries_anthropics_sdk(stack: SimpleNamespace) -> None:
    """Anthropic's own SDK (on httpx2) through veil.Client's verified OHTTP transport, no proxy."""
    import veil

    with Client(stack.deployment.policy_path) as client:
        claude = client.anthropic()
        msg = claude.messages.create(model=stack.model_id, max_tokens=32, messages=_user("Hi"), stop_sequences=["Paris"])
        assert msg.stop_reason == "stop_sequence" and msg.content[0].text == RAW_CALLS.split("Paris")[0]  # type: ignore[union-attr]
        with claude.messages.stream(model=stack.model_id, max_tokens=32, messages=_user("Hi")) as stream:
            assert "".join(stream.text_stream) == RAW_CALLS

    async def run() -> Any:
        async with veil.AsyncClient(stack.deployment.policy_path) as aclient:
            async with aclient.anthropic().messages.stream(
                model=stack.model_id,
                max_tokens=32,
                messages=_user("Weather?"),
                tools=[{"name": "get_time", "description": "a tool", "input_schema": {"type": "object"}}],
            ) as stream:
                return await stream.get_final_message()

    final = asyncio.run(run())
    assert final.stop_reason == "tool_use" and [b.name for b in final.content if b.type == "tool_use"] == ["get_time"]


def test_zz_canary_never_reaches_disk_or_logs(stack: SimpleNamespace) -> None:
    """Runs last: every request above carried the canary (prompts, suffixes, system prompts, files)."""
    dep = stack.deployment
    hits = [p for root in [dep.state_dir, *Path("/tmp").glob("veil-engine-*")] for p in _files_containing(root, CANARY.encode())]
    assert hits == [], f"plaintext canary found in {hits}"
