"""One OpenAI app for every model backend: routes, JSON and SSE rendering of typed chunks, errors.

A backend (``veil.engines.base.Backend``) yields text, tool-call and finish chunks; this module
alone knows how OpenAI's chat and text completions shape them: ids, object names, the role delta
that opens a chat stream, the finish chunk, the optional usage chunk
(``stream_options.include_usage``) and ``[DONE]``, the whole-answer form of the same chunks, and
the embeddings' float/base64 encodings. The other APIs served over the same chunks have a module
each (``messages_api``: Anthropic's Messages; ``responses_api``: OpenAI's Responses;
``infill_api``: llama.cpp's ``/infill``) and share the first-chunk rule here: an error before the
first chunk is an HTTP error, after it an error event. So the gateway sees the same dialects
whichever engine runs, and no engine repeats them.
"""

from __future__ import annotations

import array
import base64
import sys
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from veil.engines import infill_api, messages_api, responses_api, tool_calls
from veil.engines.answering import all_chunks, api_error, event_stream, first_chunk
from veil.engines.base import Backend, Chunk, FinishChunk, TextChunk, ToolCallChunk, Usage
from veil.engines.fim import FimRequest
from veil.engines.openai_api import (
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    EngineAPIError,
    check_model,
    install_error_handlers,
    parse_body,
    sse_event,
)


def _merge_logprobs(parts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Concatenate per-chunk logprobs (chat ``content`` lists, or the legacy parallel lists)."""
    if not parts:
        return None
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            else:
                merged.setdefault(key, value)
    return merged


class _Answer:
    """Renders one request's chunks as OpenAI objects (chat or text completion)."""

    def __init__(self, model: str, chat: bool, legacy_functions: bool) -> None:
        self.chat = chat
        self.legacy_functions = legacy_functions
        self.head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}

    # -- streamed ------------------------------------------------------------------------------

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return sse_event({**self.head, "object": obj, "choices": choices, **extra})

    def opening(self) -> bytes | None:
        if not self.chat:
            return None
        return self._event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])

    def event(self, chunk: Chunk) -> bytes:
        if isinstance(chunk, FinishChunk):
            if self.chat:
                return self._event([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": chunk.reason}])
            return self._event([{"index": 0, "text": "", "logprobs": None, "finish_reason": chunk.reason}])
        if isinstance(chunk, ToolCallChunk):
            delta: dict[str, Any] = {"tool_calls": chunk.tool_calls}
            if self.legacy_functions and chunk.function_call is not None:
                delta["function_call"] = chunk.function_call
            return self._event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])
        if self.chat:
            return self._event(
                [{"index": 0, "delta": {"content": chunk.text}, "logprobs": chunk.logprobs, "finish_reason": None}]
            )
        return self._event([{"index": 0, "text": chunk.text, "logprobs": chunk.logprobs, "finish_reason": None}])

    def usage_event(self, usage: Usage) -> bytes:
        return self._event([], usage=usage.to_json())

    # -- whole ----------------------------------------------------------------------------------

    def whole(self, chunks: list[Chunk]) -> dict[str, Any]:
        texts = [c.text for c in chunks if isinstance(c, TextChunk)]
        logprobs = _merge_logprobs([c.logprobs for c in chunks if isinstance(c, TextChunk) and c.logprobs])
        calls = tool_calls.merge_deltas(t for c in chunks if isinstance(c, ToolCallChunk) for t in c.tool_calls)
        legacy_parts = [c.function_call for c in chunks if isinstance(c, ToolCallChunk) and c.function_call]
        legacy = (
            {
                "name": next((p["name"] for p in legacy_parts if p.get("name")), ""),
                "arguments": "".join(p.get("arguments") or "" for p in legacy_parts),
            }
            if legacy_parts
            else None
        )
        finish = next(c for c in chunks if isinstance(c, FinishChunk))
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
            if calls:
                message["tool_calls"] = calls
            if self.legacy_functions and legacy is not None:
                message["function_call"] = legacy
            choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish.reason}
        else:
            choice = {"index": 0, "text": "".join(texts), "logprobs": logprobs, "finish_reason": finish.reason}
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self.head, "object": obj, "choices": [choice], "usage": finish.usage.to_json()}


async def respond(
    chunks: AsyncGenerator[Chunk, None], answer: _Answer, stream: bool, include_usage: bool
) -> JSONResponse | StreamingResponse:
    """The whole answer, or an SSE stream; an error before the first chunk is an HTTP error."""
    if not stream:
        return JSONResponse(answer.whole(await all_chunks(chunks)))
    first = await first_chunk(chunks)

    async def body() -> AsyncIterator[bytes]:
        try:
            if (opening := answer.opening()) is not None:
                yield opening
            chunk: Chunk | None = first
            while chunk is not None:
                yield answer.event(chunk)
                if isinstance(chunk, FinishChunk) and include_usage:
                    yield answer.usage_event(chunk.usage)
                chunk = await anext(chunks, None)
            yield SSE_DONE
        except Exception as exc:  # mid-stream: an error event, then the stream ends
            yield sse_event(api_error(exc).body())
        finally:
            await chunks.aclose()

    return event_stream(body())


def _encode_embeddings(req: EmbeddingRequest, vectors: list[list[float]]) -> list[Any]:
    if req.encoding_format == "float":
        return list(vectors)
    encoded = []
    for vector in vectors:
        vec = array.array("f", vector)  # float32, as OpenAI encodes it
        if sys.byteorder != "little":
            vec.byteswap()
        encoded.append(base64.b64encode(vec.tobytes()).decode("ascii"))
    return encoded


def engine_app(backend: Backend) -> FastAPI:
    """What every engine serves, OpenAI or tensors: ``/health``, ``/v1/models``, OpenAI-shaped errors."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "model": backend.model_id}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [backend.describe()]}

    return app


def create_openai_app(backend: Backend) -> FastAPI:
    """The OpenAI-compatible ASGI app for one loaded model: the only one Veil's engines use."""
    app = engine_app(backend)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        req = await parse_body(request, ChatCompletionRequest)
        check_model(req.model, backend.model_id)
        answer = _Answer(backend.model_id, chat=True, legacy_functions=bool(req.functions))
        return await respond(backend.chat(req), answer, req.stream, req.include_usage)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        req = await parse_body(request, CompletionRequest)
        check_model(req.model, backend.model_id)
        fim = FimRequest(req.single_prompt(), req.suffix) if req.suffix is not None else None
        answer = _Answer(backend.model_id, chat=False, legacy_functions=False)
        return await respond(backend.complete(req, fim), answer, req.stream, req.include_usage)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        req = await parse_body(request, EmbeddingRequest)
        check_model(req.model, backend.model_id)
        try:
            result = await backend.embed(req)
        except Exception as exc:
            raise api_error(exc) from None
        size = len(result.vectors[0]) if result.vectors else 0
        if req.dimensions is not None and req.dimensions != size:
            raise EngineAPIError(
                400,
                f"this model's embeddings have {size} dimensions; dimensions cannot change it",
                "unsupported_dimensions",
                "dimensions",
            )
        data = [
            {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(_encode_embeddings(req, result.vectors))
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": backend.model_id,
                "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            }
        )

    # The other APIs people's tools speak, over the same backend chunks.
    messages_api.add_routes(app, backend)
    responses_api.add_routes(app, backend)
    infill_api.add_routes(app, backend)
    return app
