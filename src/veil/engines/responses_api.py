"""OpenAI's Responses API (``POST /v1/responses``) over a chat backend.

Current OpenAI SDK code and agent frameworks call ``client.responses.create``; the request becomes
a chat request to the same backend, inside the same encryption, and the answer is a ``response``
object with ``message`` and ``function_call`` output items.

* Request: ``input`` (text, or items: messages with ``input_text``/``output_text`` parts,
  ``function_call`` and ``function_call_output``), ``instructions``, ``max_output_tokens``,
  ``temperature``, ``top_p``, ``tools`` (``function`` tools), ``tool_choice``,
  ``parallel_tool_calls``, ``max_tool_calls``, ``text.format`` (``text``, ``json_object``,
  ``json_schema``), ``top_logprobs`` (with ``include: ["message.output_text.logprobs"]``), ``stream``.
* Veil keeps no conversation state: nothing is stored (``store`` is reported false whatever was
  asked), so ``previous_response_id``, ``conversation``, ``background`` and item references are
  refused (``unsupported_state``) rather than answered without the context they name; a client
  sends the whole conversation in ``input`` instead. Built-in tools (web search, file search,
  code interpreter, MCP, ...) are refused (``unsupported_tools``), as are images and files.
* Stream: named events in the order the SDK's ``responses.stream()`` checks:
  ``response.created``, ``response.in_progress``, then per item ``response.output_item.added``,
  (``response.content_part.added``, ``response.output_text.delta``..., ``response.output_text.done``,
  ``response.content_part.done``) or (``response.function_call_arguments.delta``...,
  ``response.function_call_arguments.done``), ``response.output_item.done``; last
  ``response.completed`` or, when ``max_output_tokens`` cut the answer, ``response.incomplete``.
  Every event has its ``sequence_number``. A failure after the start is an ``error`` event and
  ``response.failed``; before it, an HTTP error in OpenAI's shape.
"""

from __future__ import annotations

import time
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

LOGPROBS_INCLUDE = "message.output_text.logprobs"


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: str
    name: str | None = Field(default=None, min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextSettings(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(BaseModel):
    """A Responses API request (what changes the answer; ``user``, ``metadata``... are ignored or echoed)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tool_calls: int | None = Field(default=None, ge=1)
    text: TextSettings | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    include: list[str] | None = None
    stream: bool = False
    metadata: dict[str, str] | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    background: bool | None = None
    cache_salt: str | None = Field(default=None, max_length=256)  # set by the gateway, per tenant


def _stateless(req: ResponsesRequest) -> None:
    for name, value in (
        ("previous_response_id", req.previous_response_id),
        ("conversation", req.conversation),
        ("background", req.background or None),
    ):
        if value is not None:
            raise EngineAPIError(
                400,
                f"{name} needs state kept between requests, and Veil keeps none (nothing is "
                "stored): send the whole conversation in input",
                "unsupported_state",
                name,
            )


def _text_parts(content: str | list[Any], param: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if (
            not isinstance(part, dict)
            or part.get("type") not in ("input_text", "output_text", "text")
            or not isinstance(part.get("text"), str)
        ):
            raise EngineAPIError(400, "only text content is supported", "unsupported_content", param)
        texts.append(part["text"])
    return "".join(texts)


def _chat_messages(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The input items as chat messages; consecutive function calls become one assistant turn."""
    out: list[dict[str, Any]] = []
    if req.instructions:
        out.append({"role": "system", "content": req.instructions})
    items = [{"role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    for i, item in enumerate(items):
        kind, param = item.get("type", "message"), f"input.{i}"
        if kind == "message" and item.get("role") in ("user", "assistant", "system", "developer"):
            out.append({"role": item["role"], "content": _text_parts(item.get("content") or "", param)})
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {"name": str(item.get("name", "")), "arguments": str(item.get("arguments", "{}"))},
            }
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") and not out[-1]["content"]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": _text_parts(item.get("output") or "", param),
                }
            )
        elif kind == "reasoning":
            continue
        elif kind == "item_reference":
            raise EngineAPIError(400, "item references need stored items, and Veil stores none", "unsupported_state", param)
        else:
            raise EngineAPIError(400, "unsupported input item", "unsupported_content", param)
    return out


def to_chat(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request the backend answers for a Responses request."""
    _stateless(req)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": _chat_messages(req),
        "stream": req.stream,
        "max_tokens": req.max_output_tokens,
        "cache_salt": req.cache_salt,
    }
    body.update(
        {
            k: v
            for k, v in (("temperature", req.temperature), ("top_p", req.top_p), ("parallel_tool_calls", req.parallel_tool_calls))
            if v is not None
        }
    )
    if req.tools:
        if any(t.type != "function" or not t.name for t in req.tools):
            raise EngineAPIError(400, "only function tools are supported (no built-in tools)", "unsupported_tools", "tools")
        body["tools"] = [
            {"type": "function", "function": {"name": t.name, "description": t.description or "", "parameters": t.parameters}}
            for t in req.tools
        ]
    choice = req.tool_choice
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise EngineAPIError(
                400, "tool_choice must be none, auto, required or a function", "unsupported_tools", "tool_choice"
            )
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        body["tool_choice"] = choice
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict},
        }
    if req.top_logprobs is not None and LOGPROBS_INCLUDE in (req.include or []):
        body.update(logprobs=True, top_logprobs=req.top_logprobs)
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc) from None


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


class _Response:
    """Renders one answer's chunks as a ``response`` object, whole or as its event stream."""

    def __init__(self, req: ResponsesRequest, model: str) -> None:
        self.req = req
        self.model = model
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.output: list[dict[str, Any]] = []
        self.seq = 0

    def obj(
        self, status: str, usage: Usage | None = None, incomplete: bool = False, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        req = self.req
        fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text else {"type": "text"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": error,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "max_tool_calls": req.max_tool_calls,
            "model": self.model,
            "output": list(self.output),
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": 1.0 if req.temperature is None else req.temperature,
            "text": {"format": fmt},
            "tool_choice": req.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "top_logprobs": req.top_logprobs or 0,
            "top_p": 1.0 if req.top_p is None else req.top_p,
            "truncation": "disabled",
            "usage": _usage(usage) if usage is not None else None,
            "metadata": req.metadata or {},
        }

    def _status(self, finish: FinishChunk) -> tuple[str, bool]:
        incomplete = finish.reason == "length"
        return ("incomplete" if incomplete else "completed"), incomplete

    def _calls_allowed(self) -> int:
        return self.req.max_tool_calls or 1 << 30

    # -- whole ----------------------------------------------------------------------------------

    def whole(self, chunks: list[Chunk]) -> dict[str, Any]:
        finish = next(c for c in chunks if isinstance(c, FinishChunk))
        status, incomplete = self._status(finish)
        for chunk in chunks:
            if isinstance(chunk, TextChunk) and (chunk.text or chunk.logprobs):
                message = self.output[-1] if self.output and self.output[-1]["type"] == "message" else None
                if message is None:
                    message = self._message(status)
                    self.output.append(message)
                part = message["content"][0]
                part["text"] += chunk.text
                part["logprobs"] += (chunk.logprobs or {}).get("content") or []
            elif isinstance(chunk, ToolCallChunk):
                for delta in chunk.tool_calls:
                    if delta.get("id"):
                        if sum(1 for o in self.output if o["type"] == "function_call") >= self._calls_allowed():
                            break
                        self.output.append(self._call(delta, "completed"))
                    elif self.output and self.output[-1]["type"] == "function_call":
                        self.output[-1]["arguments"] += (delta.get("function") or {}).get("arguments") or ""
        return self.obj(status, finish.usage, incomplete)

    def _message(self, status: str) -> dict[str, Any]:
        return {
            "type": "message",
            "id": f"msg_{uuid.uuid4().hex}",
            "status": status,
            "role": "assistant",
            "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}],
        }

    def _call(self, delta: dict[str, Any], status: str) -> dict[str, Any]:
        function = delta.get("function") or {}
        return {
            "type": "function_call",
            "id": f"fc_{uuid.uuid4().hex}",
            "call_id": delta["id"],
            "name": function.get("name", ""),
            "arguments": function.get("arguments") or "",
            "status": status,
        }

    # -- streamed -------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return sse_event(payload, kind)

    def _close(self, index: int) -> list[bytes]:
        """The events that finish output item ``index``."""
        item = self.output[index]
        item["status"] = "completed"
        if item["type"] == "function_call":
            return [
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                ),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
        part = item["content"][0]
        return [
            self._event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
                logprobs=part["logprobs"],
            ),
            self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part),
            self._event("response.output_item.done", output_index=index, item=item),
        ]

    async def events(self, first: Chunk, chunks: AsyncGenerator[Chunk, None]) -> AsyncIterator[bytes]:
        yield self._event("response.created", response=self.obj("in_progress"))
        yield self._event("response.in_progress", response=self.obj("in_progress"))
        open_index: int | None = None  # the output item being written
        skipping = False  # a call past max_tool_calls
        try:
            chunk: Chunk | None = first
            while chunk is not None:
                if isinstance(chunk, TextChunk) and (chunk.text or chunk.logprobs):
                    if open_index is None or self.output[open_index]["type"] != "message":
                        if open_index is not None:
                            for e in self._close(open_index):
                                yield e
                        self.output.append(self._message("in_progress"))
                        open_index = len(self.output) - 1
                        item = self.output[open_index]
                        empty = {**item, "content": []}
                        yield self._event("response.output_item.added", output_index=open_index, item=empty)
                        yield self._event(
                            "response.content_part.added",
                            item_id=item["id"],
                            output_index=open_index,
                            content_index=0,
                            part=dict(item["content"][0]),
                        )
                    item = self.output[open_index]
                    logprobs = (chunk.logprobs or {}).get("content") or []
                    item["content"][0]["text"] += chunk.text
                    item["content"][0]["logprobs"] += logprobs
                    yield self._event(
                        "response.output_text.delta",
                        item_id=item["id"],
                        output_index=open_index,
                        content_index=0,
                        delta=chunk.text,
                        logprobs=logprobs,
                    )
                elif isinstance(chunk, ToolCallChunk):
                    for delta in chunk.tool_calls:
                        if delta.get("id"):
                            calls = sum(1 for o in self.output if o["type"] == "function_call")
                            skipping = calls >= self._calls_allowed()
                            if skipping:
                                continue
                            if open_index is not None:
                                for e in self._close(open_index):
                                    yield e
                            self.output.append(
                                self._call({**delta, "function": {**delta["function"], "arguments": ""}}, "in_progress")
                            )
                            open_index = len(self.output) - 1
                            yield self._event(
                                "response.output_item.added", output_index=open_index, item=dict(self.output[open_index])
                            )
                        args = (delta.get("function") or {}).get("arguments")
                        if args and not skipping and open_index is not None:
                            item = self.output[open_index]
                            item["arguments"] += args
                            yield self._event(
                                "response.function_call_arguments.delta", item_id=item["id"], output_index=open_index, delta=args
                            )
                elif isinstance(chunk, FinishChunk):
                    if open_index is not None:
                        for e in self._close(open_index):
                            yield e
                    status, incomplete = self._status(chunk)
                    kind = "response.incomplete" if incomplete else "response.completed"
                    yield self._event(kind, response=self.obj(status, chunk.usage, incomplete))
                chunk = await anext(chunks, None)
        except Exception as exc:  # mid-stream: an error event and a failed response, then the end
            err = api_error(exc)
            yield self._event("error", code=err.code, message=err.message, param=err.param)
            yield self._event(
                "response.failed", response=self.obj("failed", error={"code": "server_error", "message": err.message})
            )
        finally:
            await chunks.aclose()


def add_routes(app: FastAPI, backend: Backend) -> None:
    """``POST /v1/responses`` on ``app``, served by ``backend``'s chat; errors in OpenAI's shape."""

    @app.post("/v1/responses")
    async def responses(request: Request) -> Response:
        req = await parse_body(request, ResponsesRequest)
        check_model(req.model, backend.model_id)
        chat = to_chat(req)
        response = _Response(req, backend.model_id)
        if not req.stream:
            return JSONResponse(response.whole(await all_chunks(backend.chat(chat))))
        chunks = backend.chat(chat)
        return event_stream(response.events(await first_chunk(chunks), chunks))
