"""Anthropic's Messages API (``/v1/messages``, ``/v1/messages/count_tokens``) over a chat backend.

Claude-style clients and tools (the official ``anthropic`` SDK, agents built on it) work against a
confidential open model: the request becomes a chat request to the same backend, inside the same
encryption, and the answer is rendered the way Anthropic's API renders it.

* Request: ``system`` (text or text blocks), ``messages`` with text, ``tool_use`` and
  ``tool_result`` blocks, ``max_tokens`` (required), ``stop_sequences``, ``stream``, ``tools``
  (``input_schema``) and ``tool_choice`` (``auto``/``any``/``tool``/``none``,
  ``disable_parallel_tool_use``), ``output_config.format`` (a JSON schema the answer follows),
  and the sampling fields older clients send (``temperature`` 0-1, ``top_p``, ``top_k``). Images, documents and
  extended thinking are refused (``unsupported_content``, ``unsupported_thinking``), never ignored,
  and so is a last assistant turn (``unsupported_prefill``: a chat template cannot continue one).
* Answer: ``{"type": "message", "content": [text and tool_use blocks], "stop_reason"
  ("end_turn", "max_tokens", "stop_sequence" with ``stop_sequence``, "tool_use"), "usage"}``;
  streamed as named events in Anthropic's order: ``message_start`` (with the prompt's
  ``input_tokens``), ``content_block_start`` / ``content_block_delta`` (``text_delta``,
  ``input_json_delta``) / ``content_block_stop`` per block, ``message_delta`` (stop reason, final
  usage), ``message_stop``. Prompt tokens served from the prefix cache are ``cache_read_input_tokens``
  (and not part of ``input_tokens``, as Anthropic counts them).
* Errors: Anthropic's shape, ``{"type": "error", "error": {"type", "message", "code"}}``, where
  ``code`` is the engines' stable code (docs/engines.md) and ``type`` Anthropic's for the status;
  after the stream has begun, an ``error`` event in that shape.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from veil.engines.answering import all_chunks, api_error, event_stream, first_chunk
from veil.engines.base import Backend, Chunk, FinishChunk, TextChunk, ToolCallChunk, Usage
from veil.engines.openai_api import (
    ChatCompletionRequest,
    EngineAPIError,
    check_model,
    parse_body,
    sse_event,
    validation_error,
)

#: HTTP status -> Anthropic's error type (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(exc: EngineAPIError) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": _ERROR_TYPES.get(exc.status, "api_error"), "message": exc.message, "code": exc.code},
    }


def error_response(exc: BaseException) -> JSONResponse:
    err = api_error(exc)
    return JSONResponse(error_body(err), status_code=err.status)


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["custom"] | None = None  # Anthropic's server tools (web search, ...) have other types
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class OutputFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(BaseModel):
    """``format``: structured output; ``effort`` is a hint a non-reasoning model has no use for."""

    model_config = ConfigDict(extra="ignore")

    format: OutputFormat | None = None


class MessagesRequest(BaseModel):
    """A Messages API request (fields that change the answer; ``metadata`` and the like are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int = Field(ge=1)
    messages: list[Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    stream: bool = False
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None
    output_config: OutputConfig | None = None
    cache_salt: str | None = Field(default=None, max_length=256)  # set by the gateway, per tenant


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: dict[str, Any] | None = None


def _text_of(blocks: str | list[dict[str, Any]], param: str) -> str:
    """Text blocks joined; any other block is refused."""
    if isinstance(blocks, str):
        return blocks
    texts = []
    for block in blocks:
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise EngineAPIError(400, f"only text blocks are supported in {param}", "unsupported_content", param)
        texts.append(block["text"])
    return "".join(texts)


def _chat_messages(req: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    """Anthropic's turns as OpenAI chat messages: tool results become ``tool`` messages, tool uses
    an assistant turn's ``tool_calls``; thinking blocks from earlier turns are dropped."""
    out: list[dict[str, Any]] = []
    if req.system:
        out.append({"role": "system", "content": _text_of(req.system, "system")})
    for i, msg in enumerate(req.messages):
        blocks = [{"type": "text", "text": msg.content}] if isinstance(msg.content, str) else msg.content
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for block in blocks:
            kind = block.get("type")
            if kind == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind == "tool_use" and msg.role == "assistant":
                calls.append(
                    {
                        "id": str(block.get("id", "")),
                        "type": "function",
                        "function": {
                            "name": str(block.get("name", "")),
                            "arguments": json.dumps(block.get("input") or {}),
                        },
                    }
                )
            elif kind == "tool_result" and msg.role == "user":
                content = block.get("content")
                result = _text_of(content if content is not None else "", f"messages.{i}.content")
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": str(block.get("tool_use_id", "")),
                        "content": ("Error: " if block.get("is_error") else "") + result,
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue
            else:
                raise EngineAPIError(
                    400,
                    f"content blocks of type {kind!r} are not supported"
                    if kind in ("image", "document", "search_result", "server_tool_use")
                    else "unsupported content block",
                    "unsupported_content",
                    f"messages.{i}.content",
                )
        if texts or calls or msg.role == "assistant":
            turn: dict[str, Any] = {"role": msg.role, "content": "".join(texts)}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
    return out


def to_chat(req: MessagesRequest | CountTokensRequest) -> ChatCompletionRequest:
    """The chat request the backend answers for a Messages request."""
    if isinstance(req, MessagesRequest) and req.messages[-1].role == "assistant":
        raise EngineAPIError(
            400, "a last assistant turn (prefill) is not supported: end with a user turn", "unsupported_prefill", "messages"
        )
    if req.thinking and req.thinking.get("type") not in ("disabled", "adaptive"):  # adaptive: the model may not think
        raise EngineAPIError(400, "extended thinking is not supported by this model", "unsupported_thinking", "thinking")
    if any(t.input_schema.get("type", "object") != "object" for t in req.tools or []):
        raise EngineAPIError(400, "a tool's input_schema must be an object schema", "invalid_request", "tools")
    body: dict[str, Any] = {"model": req.model, "messages": _chat_messages(req)}
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description or "", "parameters": t.input_schema}}
            for t in req.tools
        ]
    choice = req.tool_choice
    if choice is not None:
        if choice.type == "tool" and not choice.name:
            raise EngineAPIError(400, "tool_choice.name is required when type is 'tool'", "invalid_request", "tool_choice")
        body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(choice.type) or {
            "type": "function",
            "function": {"name": choice.name},
        }
        body["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    if isinstance(req, MessagesRequest):
        body.update(max_tokens=req.max_tokens, stream=req.stream, cache_salt=req.cache_salt)
        if req.output_config is not None and req.output_config.format is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {"schema": req.output_config.format.schema_}}
        body.update(
            {
                k: v
                for k, v in (
                    ("temperature", req.temperature),
                    ("top_p", req.top_p),
                    ("top_k", req.top_k),
                    ("stop", req.stop_sequences),
                )
                if v is not None
            }
        )
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


def _stop(finish: FinishChunk) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a finish chunk."""
    if finish.reason == "tool_calls":
        return "tool_use", None
    if finish.reason == "length":
        return "max_tokens", None
    return ("stop_sequence", finish.stop_sequence) if finish.stop_sequence else ("end_turn", None)


def _input_of(arguments: str) -> dict[str, Any]:
    """A call's arguments as ``input``; a call cut short by ``max_tokens`` has none yet."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _tool_id(call_id: str | None) -> str:
    """A tool_use id in Anthropic's spelling (ids are opaque; the client sends it back as is)."""
    return f"toolu_{(call_id or '').removeprefix('call_') or uuid.uuid4().hex[:24]}"


class _Message:
    """Renders one answer's chunks as an Anthropic message, whole or as its event stream."""

    def __init__(self, model: str) -> None:
        self.head = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model}

    def whole(self, chunks: list[Chunk]) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        for chunk in chunks:
            if isinstance(chunk, TextChunk) and chunk.text:
                if content and content[-1]["type"] == "text":
                    content[-1]["text"] += chunk.text
                else:
                    content.append({"type": "text", "text": chunk.text})
            elif isinstance(chunk, ToolCallChunk):
                for delta in chunk.tool_calls:
                    if delta.get("id"):
                        content.append(
                            {"type": "tool_use", "id": _tool_id(delta["id"]), "name": delta["function"]["name"], "_args": ""}
                        )
                    content[-1]["_args"] += (delta.get("function") or {}).get("arguments") or ""
        for block in content:
            if block["type"] == "tool_use":
                block["input"] = _input_of(block.pop("_args"))
        finish = next(c for c in chunks if isinstance(c, FinishChunk))
        reason, sequence = _stop(finish)
        return {**self.head, "content": content, "stop_reason": reason, "stop_sequence": sequence, "usage": _usage(finish.usage)}

    async def events(self, prompt_tokens: int, first: Chunk, chunks: AsyncGenerator[Chunk, None]) -> AsyncIterator[bytes]:
        start: dict[str, Any] = {
            **self.head,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
        }
        yield sse_event({"type": "message_start", "message": start}, "message_start")
        index, open_kind = -1, None  # the content block being written, and its type

        def block_stop() -> bytes:
            return sse_event({"type": "content_block_stop", "index": index}, "content_block_stop")

        try:
            chunk: Chunk | None = first
            while chunk is not None:
                if isinstance(chunk, TextChunk) and chunk.text:
                    if open_kind != "text":
                        if open_kind is not None:
                            yield block_stop()
                        index, open_kind = index + 1, "text"
                        yield sse_event(
                            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
                            "content_block_start",
                        )
                    yield sse_event(
                        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": chunk.text}},
                        "content_block_delta",
                    )
                elif isinstance(chunk, ToolCallChunk):
                    for delta in chunk.tool_calls:
                        if delta.get("id"):
                            if open_kind is not None:
                                yield block_stop()
                            index, open_kind = index + 1, "tool_use"
                            block = {
                                "type": "tool_use",
                                "id": _tool_id(delta["id"]),
                                "name": delta["function"]["name"],
                                "input": {},
                            }
                            yield sse_event(
                                {"type": "content_block_start", "index": index, "content_block": block}, "content_block_start"
                            )
                        if args := (delta.get("function") or {}).get("arguments"):
                            yield sse_event(
                                {
                                    "type": "content_block_delta",
                                    "index": index,
                                    "delta": {"type": "input_json_delta", "partial_json": args},
                                },
                                "content_block_delta",
                            )
                elif isinstance(chunk, FinishChunk):
                    if open_kind is not None:
                        yield block_stop()
                    reason, sequence = _stop(chunk)
                    yield sse_event(
                        {
                            "type": "message_delta",
                            "delta": {"stop_reason": reason, "stop_sequence": sequence},
                            "usage": _usage(chunk.usage),
                        },
                        "message_delta",
                    )
                    yield sse_event({"type": "message_stop"}, "message_stop")
                chunk = await anext(chunks, None)
        except Exception as exc:  # mid-stream: an error event, then the stream ends
            yield sse_event(error_body(api_error(exc)), "error")
        finally:
            await chunks.aclose()


def add_routes(app: FastAPI, backend: Backend) -> None:
    """``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` on ``app``, served by ``backend``."""

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        try:
            req = await parse_body(request, MessagesRequest)
            check_model(req.model, backend.model_id)
            chat = to_chat(req)
            message = _Message(backend.model_id)
            if not req.stream:
                return JSONResponse(message.whole(await all_chunks(backend.chat(chat))))
            prompt_tokens = await backend.count_tokens(chat)  # message_start carries it
            chunks = backend.chat(chat)
            return event_stream(message.events(prompt_tokens, await first_chunk(chunks), chunks))
        except Exception as exc:
            return error_response(exc)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(request: Request) -> JSONResponse:
        try:
            req = await parse_body(request, CountTokensRequest)
            check_model(req.model, backend.model_id)
            return JSONResponse({"input_tokens": await backend.count_tokens(to_chat(req))})
        except Exception as exc:
            return error_response(exc)
