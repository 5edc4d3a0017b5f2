"""OpenAI wire shapes shared by Veil's engines: request bodies, error bodies and SSE framing.

Kept apart from any one backend so every engine answers the gateway in exactly the same dialect.
Error messages never quote request content: a reply may be logged by an untrusted proxy on the
plaintext side of a misconfigured deployment, and the engine itself must not log prompts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

SSE_DONE = b"data: [DONE]\n\n"

#: HTTP status → OpenAI error type, as the OpenAI API documents them.
_ERROR_TYPES = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    501: "invalid_request_error",
    503: "server_error",
}


class EngineAPIError(Exception):
    """An error the engine answers in OpenAI's shape; ``code`` is a stable machine-readable code."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": _ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def sse_event(payload: dict[str, Any], event: str | None = None) -> bytes:
    """One server-sent event carrying a JSON object, framed the way OpenAI streams are.

    ``event`` names it (``event: NAME``), as Anthropic's and OpenAI's Responses streams do.
    """
    data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return b"event: " + event.encode() + b"\n" + data if event else data


def validation_error(exc: ValidationError) -> EngineAPIError:
    """Turn a pydantic error into a 400 that names the field but never echoes the input value."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return EngineAPIError(400, f"{param or 'body'}: {first.get('msg')}", "invalid_request", param)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class _Request(BaseModel):
    # Unknown OpenAI fields (user, metadata, ...) are ignored rather than refused, so any
    # OpenAI client works unchanged.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)  # vLLM's extension (and Anthropic's); 0: off
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Token id (as a string, the JSON way) -> bias in [-100, 100]; ids are the served model's.
    logit_bias: dict[str, float] | None = None
    n: int = Field(default=1, ge=1, le=1)  # one choice per request; refuse rather than ignore
    # The caller's prefix-cache scope (vLLM's field): set by the gateway per tenant, never by a
    # client (the gateway drops any client-sent value). An engine keeps cached state for one scope.
    cache_salt: str | None = Field(default=None, max_length=256)

    @property
    def include_usage(self) -> bool:
        """``stream_options.include_usage``: a last chunk with ``choices: []`` and ``usage``."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def stops(self) -> list[str]:
        """The stop sequences, as a list without empty ones."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None  # role "tool": which call this is the result of
    name: str | None = None

    def text(self) -> str:
        """The content as text: OpenAI text parts are joined, any other part is refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        texts = []
        for part in self.content:
            if part.get("type") not in ("text", "input_text", "output_text") or not isinstance(part.get("text"), str):
                raise EngineAPIError(400, "only text content parts are supported", "unsupported_content", "messages")
            texts.append(part["text"])
        return "".join(texts)

    def plain(self) -> dict[str, Any]:
        """The message for a chat template that knows nothing of tools: text only.

        An assistant turn that only called tools becomes the calls as JSON text, so a client
        replaying a tool conversation keeps its history instead of sending empty turns.
        """
        role = "system" if self.role == "developer" else self.role
        if not self.content and self.tool_calls:
            calls = [c.get("function", {}) for c in self.tool_calls if isinstance(c, dict)]
            return {"role": role, "content": json.dumps(calls, ensure_ascii=False)}
        return {"role": role, "content": self.text()}

    def for_tools(self) -> dict[str, Any]:
        """The message for a chat template that defines tool calling (Hugging Face's convention).

        Past calls keep their structure, with ``arguments`` as an object (templates write it
        with ``tojson``), and a tool result keeps its ``tool_call_id``, so the template replays
        the conversation in the model's own call syntax.
        """
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            calls = []
            for call in self.tool_calls:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                    raise EngineAPIError(400, "a tool call in the history has no function name", "invalid_request", "messages")
                args: Any = function.get("arguments") or "{}"
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        pass  # not JSON: the template gets the string as the model once wrote it
                calls.append(
                    {"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": args}}
                )
            message["tool_calls"] = calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            message["name"] = self.name
        return message


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """``text``, ``json_object``, or ``json_schema`` (structured outputs)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")  # llama-cpp-python's form


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"] = "function"
    function: NamedFunction


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    # The legacy spelling of tools, still sent by older clients.
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None

    def want_logprobs(self) -> bool:
        if self.top_logprobs is not None and not self.logprobs:
            raise EngineAPIError(400, "top_logprobs requires logprobs to be true", "invalid_request", "top_logprobs")
        return bool(self.logprobs)

    def llama_response_format(self) -> dict[str, Any] | None:
        """llama-cpp-python constrains output with a grammar for ``{"type": "json_object"}``,
        optionally with a ``schema``; OpenAI's ``json_schema`` maps onto that."""
        rf = self.response_format
        if rf is None or rf.type == "text":
            return None
        if rf.type == "json_object":
            return {"type": "json_object", **({"schema": rf.schema_} if rf.schema_ else {})}
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise EngineAPIError(
                400,
                "response_format.json_schema.schema is required",
                "invalid_request",
                "response_format",
            )
        return {"type": "json_object", "schema": rf.json_schema.schema_}

    def tool_plan(self) -> ToolPlan:
        """What the request asks of tools: none, a named call, the model's choice, or any call.

        ``tools`` and the legacy ``functions`` are one list; the default once tools are given is
        ``auto``, as in OpenAI's API. Which plans an engine can honour is the engine's call.
        """
        tools = tuple(t.function for t in self.tools or []) + tuple(self.functions or [])
        choice: Any = self.tool_choice
        if choice is None and self.function_call is not None:
            fc = self.function_call
            choice = fc if isinstance(fc, str) else NamedToolChoice(function=fc)
        if not tools:
            if choice not in (None, "none", "auto"):
                raise EngineAPIError(
                    400,
                    "tool_choice names a tool but no tools were given",
                    "invalid_request",
                    "tool_choice",
                )
            return ToolPlan("none", (), False, bool(self.functions))
        if len({t.name for t in tools}) != len(tools):
            raise EngineAPIError(400, "two tools have the same name", "invalid_request", "tools")
        legacy = bool(self.functions)
        if choice == "none":
            return ToolPlan("none", tools, False, legacy)
        if isinstance(choice, NamedToolChoice):
            for tool in tools:
                if tool.name == choice.function.name:
                    return ToolPlan("named", (tool,), False, legacy)
            raise EngineAPIError(
                400,
                "tool_choice names a function that is not in tools",
                "invalid_request",
                "tool_choice",
            )
        parallel = self.parallel_tool_calls is not False
        return ToolPlan("required" if choice == "required" else "auto", tools, parallel, legacy)


@dataclass(frozen=True)
class ToolPlan:
    """The tools of one chat request and what the model must do with them.

    ``mode``: ``none`` (answer in text), ``named`` (call ``tools[0]``), ``auto`` (the model
    decides), ``required`` (at least one call to any of ``tools``); ``parallel``: several calls in
    one turn are allowed; ``legacy``: the request used ``functions``, so answers also carry the
    legacy ``function_call`` field.
    """

    mode: Literal["none", "named", "auto", "required"]
    tools: tuple[FunctionDefinition, ...]
    parallel: bool
    legacy: bool = False

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)

    def openai_tools(self) -> list[dict[str, Any]]:
        """The tools in OpenAI's request shape, which chat templates take as ``tools``."""
        return [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description or "",
                    "parameters": t.parameters or {"type": "object", "properties": {}},
                },
            }
            for t in self.tools
        ]


class CompletionRequest(_Request):
    prompt: str | list[str]
    suffix: str | None = None
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's documented default
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)

    def single_prompt(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) == 1:
            return self.prompt[0]
        raise EngineAPIError(400, "batched prompts are not supported", "unsupported_batch", "prompt")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str] = Field(min_length=1)
    # The openai SDK asks for base64 by default and decodes it back to floats itself.
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)


MAX_BODY = 8 << 20  # 8 MiB: far above any 2k-token context, refuses memory-exhaustion bodies


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """A JSON object body validated into ``model``; every failure is an OpenAI-shaped error."""
    body = await request.body()
    if len(body) > MAX_BODY:
        raise EngineAPIError(413, "request body too large", "body_too_large")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise EngineAPIError(400, "request body is not valid JSON", "invalid_json") from None
    if not isinstance(data, dict):
        raise EngineAPIError(400, "request body must be a JSON object", "invalid_request")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def check_model(name: str | None, served: str) -> None:
    """Refuse a request that names a model other than the one this engine serves (None: any)."""
    if name is not None and name != served:
        raise EngineAPIError(404, f"model not served by this engine; available: {served}", "model_not_found", "model")


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves an engine in OpenAI's shape, and an unexpected one says nothing more."""

    @app.exception_handler(EngineAPIError)
    async def _engine_error(_: Request, exc: EngineAPIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return EngineAPIError(exc.status_code, str(exc.detail), code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return EngineAPIError(500, "internal engine error", "engine_error").response()
