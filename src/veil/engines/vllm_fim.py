"""Code completion on vLLM: an ASGI middleware inside vLLM's own server builds the FIM prompt.

vLLM's OpenAI server refuses ``suffix`` and has no ``/infill``, but it loads the ASGI middleware
named on its command line (``--middleware``, which ``veil.engines.vllm.build_command`` adds). So
in the same process, in front of vLLM's routes, :class:`FimMiddleware` answers the two requests
editors send for code completion with Veil's own handlers (``openai_app``'s ``/v1/completions``
with ``suffix``, ``infill_api``'s ``/infill``) over :class:`VllmFim`, and passes every other
request to vLLM untouched. :class:`VllmFim` finds the family in the model directory's tokenizer
vocabulary (``fim.hf_tokens``, never the model's name), builds the prompt as token ids (request
text never parsed for special tokens), and asks vLLM itself, over its own socket, to complete
those ids, stopping at the family's end-of-middle tokens (vLLM's ``stop_token_ids``).

vLLM constructs a middleware class with the app alone, so the settings come from the environment
``veil.engines.vllm`` execs vLLM with (:data:`ENV_MODEL`, :data:`ENV_MODEL_ID`, :data:`ENV_SOCKET`).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veil.engines import fim as fim_tokens
from veil.engines.base import Backend, Chunk, FinishChunk, TextChunk, Usage
from veil.engines.fim import FimRequest, FimTokens
from veil.engines.openai_api import MAX_BODY, CompletionRequest, EngineAPIError

ENV_MODEL, ENV_MODEL_ID, ENV_SOCKET = "VEIL_VLLM_MODEL", "VEIL_VLLM_MODEL_ID", "VEIL_VLLM_SOCKET"
#: The import path vLLM's ``--middleware`` takes.
MIDDLEWARE = f"{__name__}.FimMiddleware"


def vllm_body(req: CompletionRequest, prompt: list[int], tokens: FimTokens, model_id: str) -> dict[str, Any]:
    """vLLM's ``/v1/completions`` request for a FIM prompt: the ids, ``req``'s sampling, streamed
    with usage, stopped at the end-of-middle tokens."""
    if req.logprobs is not None:
        raise EngineAPIError(400, "logprobs cannot be combined with suffix on this engine", "invalid_request", "logprobs")
    body: dict[str, Any] = {
        "model": model_id,
        "prompt": prompt,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop": req.stops or None,
        "seed": req.seed,
        "stream": True,
        "stream_options": {"include_usage": True},
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "stop_token_ids": sorted(tokens.ends),
        "skip_special_tokens": True,
    }
    if req.top_k is not None:
        body["top_k"] = req.top_k or -1  # Veil's 0 (off) is vLLM's -1
    if req.logit_bias:
        body["logit_bias"] = req.logit_bias
    if req.cache_salt is not None:
        body["cache_salt"] = req.cache_salt
    return body


async def completion_chunks(lines: AsyncIterator[str]) -> AsyncGenerator[Chunk, None]:
    """vLLM's streamed completion (``data:`` events, a usage event, ``[DONE]``) as backend chunks."""
    reason, stop_sequence, usage = "stop", None, Usage(0, 0)
    async for line in lines:
        if not line.startswith("data: "):
            continue
        data = line[6:].strip()
        if data == "[DONE]":
            break
        event = json.loads(data)
        if "error" in event:  # vLLM's mid-stream error event: its type only, never its text
            raise EngineAPIError(500, "vLLM failed mid-answer", "engine_error")
        for choice in event.get("choices") or []:
            if choice.get("text"):
                yield TextChunk(choice["text"])
            if choice.get("finish_reason"):
                reason = "length" if choice["finish_reason"] == "length" else "stop"
                stopped = choice.get("stop_reason")
                stop_sequence = stopped if isinstance(stopped, str) else None
        if event.get("usage"):
            u = event["usage"]
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            usage = Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0), int(cached))
    yield FinishChunk(reason, usage, stop_sequence)


def _vllm_refusal(status: int, raw: bytes) -> EngineAPIError:
    """vLLM's error as Veil's: its status and code kept, its message not (it may quote the request)."""
    try:
        err = json.loads(raw)
        err = err.get("error", err) if isinstance(err, dict) else {}
    except ValueError:
        err = {}
    code = err.get("code") if isinstance(err.get("code"), str) else None
    if status >= 500 or status < 400:
        return EngineAPIError(500, "vLLM failed the fill-in-the-middle completion", "engine_error")
    return EngineAPIError(status, "vLLM refused the fill-in-the-middle completion", code or "invalid_request")


class VllmFim(Backend):
    """Fill-in-the-middle over vLLM: the prompt built here, generated by vLLM on ``socket``."""

    def __init__(self, tokenizer: Any, model_id: str, client: httpx.AsyncClient) -> None:
        super().__init__(model_id)
        self.tokenizer = tokenizer
        self.fim = fim_tokens.hf_tokens(tokenizer)
        self.client = client

    @classmethod
    def from_environment(cls) -> VllmFim:
        from transformers import AutoTokenizer

        model, socket = os.environ[ENV_MODEL], os.environ[ENV_SOCKET]
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True, trust_remote_code=False)
        client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket), base_url="http://vllm", timeout=httpx.Timeout(None, connect=5.0)
        )
        return cls(tokenizer, os.environ.get(ENV_MODEL_ID) or os.path.basename(model), client)

    def fim_prompt(self, request: FimRequest) -> list[int]:
        assert self.fim is not None
        return fim_tokens.hf_prompt(self.tokenizer, self.fim, request)

    async def complete(self, req: CompletionRequest, fim: FimRequest | None = None) -> AsyncGenerator[Chunk, None]:
        if fim is None:  # plain completions never reach here: the middleware leaves them to vLLM
            raise EngineAPIError(404, "plain completions are vLLM's", "unsupported_endpoint")
        if self.fim is None:
            raise fim_tokens.unsupported(self.model_id)
        if req.echo:
            raise EngineAPIError(400, "echo cannot be combined with suffix", "invalid_request", "echo")
        body = vllm_body(req, self.fim_prompt(fim), self.fim, self.model_id)
        async with self.client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                raise _vllm_refusal(resp.status_code, await resp.aread())
            async for chunk in completion_chunks(resp.aiter_lines()):
                yield chunk


def _wants_fim(body: bytes) -> bool:
    """A completion request with a ``suffix`` (anything else, even broken JSON, is vLLM's to answer)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("suffix") is not None


class FimMiddleware:
    """vLLM's ``--middleware``: ``/infill`` and ``/v1/completions`` with ``suffix`` are Veil's."""

    def __init__(self, app: ASGIApp, backend: Backend | None = None) -> None:
        self.app = app
        self._backend = backend
        self._veil: ASGIApp | None = None

    def veil(self) -> ASGIApp:
        if self._veil is None:  # built on the first code completion: vLLM's start-up stays vLLM's
            from veil.engines.openai_app import create_openai_app

            self._veil = create_openai_app(self._backend or VllmFim.from_environment())
        return self._veil

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in ("/v1/completions", "/infill"):
            await self.app(scope, receive, send)
            return
        if path == "/infill":
            await self.veil()(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            await EngineAPIError(413, "request body too large", "body_too_large").response()(scope, receive, send)
            return
        target = self.veil() if _wants_fim(body) else self.app
        await target(scope, _replay(body, receive), send)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None past ``MAX_BODY``."""
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(parts)
        part = message.get("body", b"")
        size += len(part)
        if size > MAX_BODY:
            return None
        parts.append(part)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """An ASGI ``receive`` that hands ``body`` over once, then waits on the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
