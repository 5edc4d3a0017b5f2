"""Code completion on vLLM: Veil's FIM middleware, in front of a stand-in for vLLM's server.

There is no GPU here, so vLLM itself cannot run (tests/test_engine_vllm.py runs it where one is).
What runs is the real middleware (``veil.engines.vllm_fim.FimMiddleware``, as vLLM's
``--middleware`` loads it) with a real Hugging Face tokenizer from a model directory the test
writes (StarCoder's FIM tokens), served by uvicorn on a Unix socket, wrapped around a
**stand-in for vLLM's OpenAI server**: a small app that speaks vLLM's documented
``/v1/completions`` stream (``text`` pieces, ``finish_reason`` / ``stop_reason``, a usage event,
``[DONE]``) and records what it was sent. So the test shows the exact token ids vLLM would
receive, that the middleware stops at the end-of-middle tokens, renders OpenAI's and llama.cpp's
answer shapes, refuses models without FIM tokens, and leaves every other request to vLLM.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

pytest.importorskip("transformers", reason="transformers is not installed (pip install it)")

from tiny_models import FAMILY_TOKENS, write_gpt_bigcode  # noqa: E402
from veil.engines import vllm, vllm_fim  # noqa: E402
from veil.engines.launcher import ENGINE_BASE_URL  # noqa: E402
from veil.testing import ServerThread  # noqa: E402

MODEL_ID = "tiny-starcoder"
PREFIX, SUFFIX = "def add(a, b):\n", "\n\nprint(add(1, 2))\n"
PIECES = ["    return a", " + b"]
CANARY = "VEIL-CANARY-5d2e-vllm-refusal-must-not-be-echoed"


def _vllm_standin(seen: list[dict[str, Any]]) -> Starlette:
    """vLLM's /v1/completions as its stream looks on the wire; the body it got is recorded."""

    async def completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:  # vLLM answers broken JSON with a 400 (raising would close the kept-alive connection)
            return JSONResponse({"error": {"message": "invalid JSON", "type": "BadRequestError", "code": 400}}, status_code=400)
        seen.append(body)
        if body.get("max_tokens") == 999:  # vLLM's refusal shape, with a message quoting the request
            return JSONResponse(
                {"error": {"message": f"prompt {CANARY} too long", "type": "BadRequestError", "param": None, "code": 400}},
                status_code=400,
            )
        if not isinstance(body["prompt"], list):
            return JSONResponse(
                {
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": "vllm's own", "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                }
            )

        async def stream() -> AsyncIterator[bytes]:
            for piece in PIECES:
                event = {
                    "object": "text_completion",
                    "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None, "stop_reason": None}],
                }
                yield f"data: {json.dumps(event)}\n\n".encode()
            last = {"choices": [{"index": 0, "text": "", "finish_reason": "stop", "stop_reason": body["stop_token_ids"][0]}]}
            yield f"data: {json.dumps(last)}\n\n".encode()
            usage = {
                "choices": [],
                "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 2, "total_tokens": len(body["prompt"]) + 2},
            }
            yield f"data: {json.dumps(usage)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("vllm-fim")
    model = write_gpt_bigcode(root / MODEL_ID, FAMILY_TOKENS["starcoder"])
    sock = root / "engine.sock"
    seen: list[dict[str, Any]] = []
    mp = pytest.MonkeyPatch()
    # What veil.engines.vllm execs vLLM with; the middleware reads it as vLLM builds the app.
    for name, value in vllm.middleware_settings(model.path, MODEL_ID, sock).items():
        mp.setenv(name, value)
    try:
        with ServerThread(vllm_fim.FimMiddleware(_vllm_standin(seen)), uds=str(sock)):
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url=ENGINE_BASE_URL, timeout=60) as http:
                oai = openai.OpenAI(base_url=f"{ENGINE_BASE_URL}/v1", api_key="unused", http_client=http, max_retries=0)
                yield SimpleNamespace(http=http, oai=oai, seen=seen, model=model, sock=sock)
    finally:
        mp.undo()


def test_fim_prompt_is_built_from_the_vocabulary_and_stops_at_the_end_of_middle(served: SimpleNamespace) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(served.model.path)
    vocab = served.model.vocab
    prefix = PREFIX + "<fim_suffix>"  # a control token's spelling in the prefix stays text
    done = served.oai.completions.create(model=MODEL_ID, prompt=prefix, suffix=SUFFIX, max_tokens=8, temperature=0, stop=["#"])
    sent = served.seen[-1]
    text = tok(prefix, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert sent["prompt"] == [
        vocab["<fim_prefix>"],
        *text,
        vocab["<fim_suffix>"],
        *tok(SUFFIX, add_special_tokens=False)["input_ids"],
        vocab["<fim_middle>"],
    ]
    assert sent["prompt"].count(vocab["<fim_suffix>"]) == 1
    assert set(sent["stop_token_ids"]) == {vocab[t] for t in ("<|endoftext|>", "<fim_pad>", "<file_sep>")}
    assert "suffix" not in sent and sent["model"] == MODEL_ID and sent["stop"] == ["#"] and sent["stream"] is True
    assert done.choices[0].text == "".join(PIECES) and done.choices[0].finish_reason == "stop"
    assert done.usage is not None and done.usage.completion_tokens == 2
    streamed = list(served.oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == "".join(PIECES)


def test_infill_shape(served: SimpleNamespace) -> None:
    body = {
        "input_prefix": PREFIX,
        "input_suffix": SUFFIX,
        "n_predict": 8,
        "input_extra": [{"filename": "util.py", "text": "x = 1\n"}],
    }
    whole = served.http.post("/infill", json=body).json()
    assert whole["content"] == "".join(PIECES) and whole["stop"] is True and whole["stop_type"] == "eos"
    vocab = served.model.vocab
    prompt = served.seen[-1]["prompt"]
    assert prompt[0] == vocab["<repo_name>"] and vocab["<file_sep>"] in prompt  # the other file as repo context
    with served.http.stream("POST", "/infill", json={**body, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert "".join(e["content"] for e in events) == "".join(PIECES) and events[-1]["stop"] is True


def test_everything_else_is_vllms(served: SimpleNamespace) -> None:
    plain = served.oai.completions.create(model=MODEL_ID, prompt="x = ", max_tokens=2)
    assert plain.choices[0].text == "vllm's own"
    assert served.seen[-1] == {"model": MODEL_ID, "prompt": "x = ", "max_tokens": 2}  # untouched
    assert served.http.get("/v1/models").status_code == 404  # the stand-in has no such route: not ours either
    broken = served.http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert broken.status_code != 200


def test_refusals(served: SimpleNamespace, tmp_path: Path) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        served.oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, max_tokens=999)
    assert info.value.status_code == 400 and CANARY not in str(info.value.body)  # vLLM's text is not passed on
    with pytest.raises(openai.BadRequestError) as info:
        served.oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, echo=True)
    assert info.value.param == "echo"
    with pytest.raises(openai.BadRequestError) as info:
        served.oai.completions.create(model=MODEL_ID, prompt=PREFIX, suffix=SUFFIX, logprobs=1)
    assert info.value.param == "logprobs"
    too_big = served.http.post("/v1/completions", content=b" " * (9 << 20), headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"


def test_a_model_without_fim_tokens_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["def f(): pass\n"] * 5, trainers.BpeTrainer(vocab_size=280, special_tokens=["<|endoftext|>"]))
    plain = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    seen: list[dict[str, Any]] = []
    backend = vllm_fim.VllmFim(plain, "chat-model", httpx.AsyncClient())
    assert backend.fim is None
    with ServerThread(vllm_fim.FimMiddleware(_vllm_standin(seen), backend)) as server:
        oai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            oai.completions.create(model="chat-model", prompt="a", suffix="b")
        assert info.value.code == "unsupported_suffix" and info.value.param == "suffix"
        infill = httpx.post(f"{server.url}/infill", json={"input_prefix": "a", "input_suffix": "b"}, timeout=30)
        assert infill.status_code == 400 and infill.json()["error"]["code"] == "unsupported_suffix"
    assert seen == []  # nothing reached vLLM


def test_vllm_command_loads_the_middleware(tmp_path: Path) -> None:
    cmd = vllm.build_command(tmp_path / "m", tmp_path / "e.sock", executable=["/opt/venv/bin/vllm"])
    assert cmd[cmd.index("--middleware") + 1] == "veil.engines.vllm_fim.FimMiddleware"
    settings = vllm.middleware_settings(tmp_path / "m", "m", tmp_path / "e.sock")
    assert settings == {
        "VEIL_VLLM_MODEL": str(tmp_path / "m"),
        "VEIL_VLLM_MODEL_ID": "m",
        "VEIL_VLLM_SOCKET": str((tmp_path / "e.sock").resolve()),
    }
    assert vllm.build_env({}, settings)["VEIL_VLLM_SOCKET"] == settings["VEIL_VLLM_SOCKET"]
