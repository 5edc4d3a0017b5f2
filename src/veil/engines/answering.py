"""What every API served over a backend's chunks shares: the first-chunk rule, errors, SSE.

An error raised before an answer's first chunk is an HTTP error (in the API's own error shape);
once streaming has begun it can only be an error event. Engine failures are reported by exception
*type*, never text, because exception text can quote the request.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from fastapi.responses import StreamingResponse

from veil.engines.base import Chunk
from veil.engines.openai_api import EngineAPIError

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def api_error(exc: BaseException) -> EngineAPIError:
    """An engine failure as an OpenAI error that names only the exception's type."""
    if isinstance(exc, EngineAPIError):
        return exc
    return EngineAPIError(500, f"generation failed ({type(exc).__name__})", "engine_error")


async def first_chunk(chunks: AsyncGenerator[Chunk, None]) -> Chunk:
    """The first chunk of an answer: an error before it is an HTTP error in every API."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        raise EngineAPIError(500, "the engine produced no answer", "engine_error") from None
    except Exception as exc:
        raise api_error(exc) from None


async def all_chunks(chunks: AsyncGenerator[Chunk, None], first: Chunk | None = None) -> list[Chunk]:
    """A whole answer's chunks, for the non-streamed form of every API (``first``: already read)."""
    got = [first if first is not None else await first_chunk(chunks)]
    try:
        got += [c async for c in chunks]
    except Exception as exc:
        raise api_error(exc) from None
    return got


def event_stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    """An SSE response, unbuffered by any proxy in between."""
    return StreamingResponse(body, media_type="text/event-stream", headers=_SSE_HEADERS)
