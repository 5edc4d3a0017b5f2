"""The engines' shared base: what a model backend offers, the chunks it yields, and its model thread.

Every OpenAI-speaking engine (llama.cpp, transformers) is a :class:`Backend`: ``chat`` and
``complete`` yield typed chunks (:class:`TextChunk`, :class:`ToolCallChunk`, then one
:class:`FinishChunk`), ``count_tokens`` says how long a chat prompt is, ``embed`` returns vectors,
``describe`` the ``/v1/models`` entry. One app factory (``openai_app.create_openai_app``) turns
those into OpenAI's JSON and SSE, and the same chunks into Anthropic's Messages API, OpenAI's
Responses API and llama.cpp's ``/infill``, for all of them, so an engine module holds only its
model code. Model libraries are not re-entrant, so each
backend runs every model call on one :class:`ModelThread`, which bridges it to asyncio.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from veil.engines.fim import FimRequest
from veil.engines.openai_api import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, EngineAPIError

T = TypeVar("T")


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer; ``cached_tokens``: prompt tokens reused from the cache scope."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


@dataclass(frozen=True)
class TextChunk:
    """Generated text; ``logprobs`` in OpenAI's shape for these tokens (chat or legacy form)."""

    text: str
    logprobs: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolCallChunk:
    """OpenAI ``tool_calls`` entries (whole, or streamed deltas with their ``index``).

    ``function_call`` is the legacy single-call form, sent only when the request used ``functions``.
    """

    tool_calls: list[dict[str, Any]]
    function_call: dict[str, Any] | None = None


@dataclass(frozen=True)
class FinishChunk:
    """The last chunk of every answer: why generation stopped, and what it cost.

    ``stop_sequence``: the request's stop sequence that ended it (None for the model's own end,
    a length limit or tool calls), which Anthropic's Messages API reports back.
    """

    reason: str  # "stop", "length" or "tool_calls"
    usage: Usage
    stop_sequence: str | None = None


Chunk = TextChunk | ToolCallChunk | FinishChunk


@dataclass(frozen=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int


class Backend:
    """One loaded model. Subclasses override what their model can do; the rest is refused.

    ``chat`` and ``complete`` are async generators of :data:`Chunk` ending in one FinishChunk.
    An :class:`EngineAPIError` raised before the first chunk becomes an HTTP error; anything
    raised later ends the stream with an error event. Neither ever quotes request content.
    """

    model_id: str
    created: int

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.created = int(time.time())

    def describe(self) -> dict[str, Any]:
        """This model's ``/v1/models`` entry."""
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "veil"}

    def chat(self, req: ChatCompletionRequest) -> AsyncGenerator[Chunk, None]:
        raise EngineAPIError(404, f"{self.model_id} does not serve chat completions", "unsupported_endpoint")

    def complete(self, req: CompletionRequest, fim: FimRequest | None = None) -> AsyncGenerator[Chunk, None]:
        """A text completion of ``req.prompt``, or with ``fim`` the middle between its prefix and suffix
        (``req`` then carries only the sampling settings)."""
        raise EngineAPIError(404, f"{self.model_id} does not serve text completions", "unsupported_endpoint")

    async def count_tokens(self, req: ChatCompletionRequest) -> int:
        """The number of prompt tokens ``chat(req)`` would give the model."""
        raise EngineAPIError(404, f"{self.model_id} does not serve chat completions", "unsupported_endpoint")

    async def embed(self, req: EmbeddingRequest) -> Embeddings:
        raise EngineAPIError(404, f"{self.model_id} does not serve embeddings", "unsupported_endpoint")


class ModelThread:
    """All model calls of one backend, in arrival order, on one thread, awaited from asyncio.

    llama.cpp contexts and ``model.generate`` are not thread-safe; queuing on one thread keeps
    requests from corrupting each other's state (and makes "the state before this request" a
    well-defined thing, which the per-caller cache scope relies on).
    """

    def __init__(self, name: str) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run a blocking model call on the model thread and await its result."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def stream(
        self,
        produce: Callable[[Callable[[T], None], threading.Event], None],
        cancelled: threading.Event | None = None,
    ) -> AsyncGenerator[T, None]:
        """Run ``produce(emit, cancelled)`` on the model thread and yield what it emits, as it emits.

        An exception in ``produce`` is raised here, after the items emitted before it. When the
        consumer stops early (a client disconnect, a stop sequence), ``cancelled`` is set so the
        producer can stop generating; the caller may pass its own event to set it sooner.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = cancelled or threading.Event()

        def put(kind: str, item: Any) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (kind, item))
            except RuntimeError:  # loop closed during shutdown
                stop.set()

        def run() -> None:
            try:
                if not stop.is_set():
                    produce(lambda item: put("item", item), stop)
            except BaseException as exc:  # re-raised to the consumer, never logged
                put("error", exc)
            finally:
                put("end", None)

        self.executor.submit(run)
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                yield item
        finally:
            stop.set()
