"""llama.cpp's ``/infill``: the code-completion request shape editors such as llama.vscode send.

``{"input_prefix", "input_suffix", "input_extra": [{"filename", "text"}], "prompt", "n_predict",
...}`` becomes a fill-in-the-middle request to the backend (``prompt`` is text the middle starts
with: the current line so far); the answer is llama.cpp server's shape: ``{"content", "stop",
"tokens_predicted", "tokens_evaluated", "stop_type", "timings", ...}`` whole, or streamed as one
``data: {"content": ..., "stop": false}`` event per piece and a last one with ``"stop": true`` and
the totals (llama.cpp sends no ``[DONE]`` here). Errors keep the engines' OpenAI error shape.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from veil.engines.answering import all_chunks, api_error, event_stream, first_chunk
from veil.engines.base import Backend, Chunk, FinishChunk, TextChunk
from veil.engines.fim import FimRequest
from veil.engines.openai_api import CompletionRequest, check_model, parse_body, sse_event


class ExtraFile(BaseModel):
    model_config = ConfigDict(extra="ignore")

    filename: str = Field(default="tmp", max_length=4096)
    text: str = ""


class InfillRequest(BaseModel):
    """llama.cpp server's ``/infill`` body (the fields that change the answer; others are ignored).

    Defaults are llama.cpp server's: ``n_predict`` -1 (until the model ends the middle or the
    context is full), temperature 0.8, top_k 40, top_p 0.95.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[ExtraFile] = Field(default_factory=list, max_length=1024)
    prompt: str = ""
    n_predict: int = Field(default=-1, ge=-1)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    top_k: int = Field(default=40, ge=0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    stop: list[str] = Field(default_factory=list)
    seed: int = -1
    stream: bool = False
    cache_salt: str | None = Field(default=None, max_length=256)  # set by the gateway, per tenant

    def fim(self) -> FimRequest:
        return FimRequest(
            self.input_prefix, self.input_suffix, tuple((f.filename, f.text) for f in self.input_extra), self.prompt
        )

    def sampling(self) -> CompletionRequest:
        """The same request as a text completion's settings (the prompt comes from ``fim()``)."""
        return CompletionRequest(
            prompt="",
            max_tokens=self.n_predict if self.n_predict > 0 else None,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            stop=self.stop or None,
            seed=self.seed if self.seed >= 0 else None,
            stream=self.stream,
            cache_salt=self.cache_salt,
        )


class _Summary:
    """The totals llama.cpp reports with the last piece (counts, stop type, timings)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.start = time.perf_counter()
        self.first: float | None = None

    def mark(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()

    def body(self, finish: FinishChunk, content: str) -> dict[str, Any]:
        end = time.perf_counter()
        first = self.first or end
        usage = finish.usage
        stop_type = {"stop": "word" if finish.stop_sequence else "eos", "length": "limit"}.get(finish.reason, "eos")
        return {
            "index": 0,
            "content": content,
            "tokens": [],
            "id_slot": 0,
            "stop": True,
            "model": self.model,
            "tokens_predicted": usage.completion_tokens,
            "tokens_evaluated": usage.prompt_tokens,
            "tokens_cached": usage.cached_tokens,
            "truncated": False,
            "has_new_line": "\n" in content,
            "stop_type": stop_type,
            "stopping_word": finish.stop_sequence or "",
            "timings": {
                "prompt_n": usage.prompt_tokens,
                "prompt_ms": (first - self.start) * 1000,
                "predicted_n": usage.completion_tokens,
                "predicted_ms": (end - first) * 1000,
                "cache_n": usage.cached_tokens,
            },
        }


async def _stream(first: Chunk, chunks: AsyncGenerator[Chunk, None], summary: _Summary) -> AsyncIterator[bytes]:
    try:
        chunk: Chunk | None = first
        while chunk is not None:
            if isinstance(chunk, TextChunk) and chunk.text:
                yield sse_event({"index": 0, "content": chunk.text, "tokens": [], "stop": False, "id_slot": -1})
            elif isinstance(chunk, FinishChunk):
                yield sse_event(summary.body(chunk, ""))
            chunk = await anext(chunks, None)
    except Exception as exc:  # mid-stream: an error event, then the stream ends
        yield sse_event(api_error(exc).body())
    finally:
        await chunks.aclose()


def add_routes(app: FastAPI, backend: Backend) -> None:
    """``POST /infill`` on ``app``, served by ``backend``'s fill-in-the-middle."""

    @app.post("/infill")
    async def infill(request: Request) -> Response:
        req = await parse_body(request, InfillRequest)
        check_model(req.model, backend.model_id)
        settings = req.sampling()
        chunks = backend.complete(settings, req.fim())
        summary = _Summary(backend.model_id)
        first = await first_chunk(chunks)
        summary.mark()  # the first token is out: what came before was prompt evaluation
        if not req.stream:
            got = await all_chunks(chunks, first)
            finish = next(c for c in got if isinstance(c, FinishChunk))
            return JSONResponse(summary.body(finish, "".join(c.text for c in got if isinstance(c, TextChunk))))
        return event_stream(_stream(first, chunks, summary))
