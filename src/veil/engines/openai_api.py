"""OpenAI wire shapes shared by Veil's engines: request bodies, error bodies and SSE framing.

Kept apart from any one backend so every engine answers the gateway in exactly the same dialect.
Error messages never quote request content: a reply may be logged by an untrusted proxy on the
plaintext side of a misconfigured deployment, and the engine itself must not log prompts.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


def sse_event(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying a JSON object, framed the way OpenAI streams are."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def validation_error(exc: ValidationError) -> EngineAPIError:
    """Turn a pydantic error into a 400 that names the field but never echoes the input value."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return EngineAPIError(400, f"{param or 'body'}: {first.get('msg')}", "invalid_request", param)


class _Request(BaseModel):
    # Unknown OpenAI fields (user, logit_bias, ...) are ignored rather than refused, so any
    # OpenAI client works unchanged.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)  # one choice per request; refuse rather than ignore


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def plain(self) -> dict[str, Any]:
        """llama.cpp chat templates want text; join OpenAI text parts, refuse other parts."""
        role = "system" if self.role == "developer" else self.role
        if self.content is None or isinstance(self.content, str):
            return {"role": role, "content": self.content or ""}
        texts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise EngineAPIError(
                    400, "only text content parts are supported", "unsupported_content", "messages"
                )
            texts.append(part["text"])
        return {"role": role, "content": "".join(texts)}


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class CompletionRequest(_Request):
    prompt: str | list[str]
    suffix: str | None = None
    max_tokens: int | None = Field(default=16, ge=1)  # OpenAI's documented default
    echo: bool = False

    def single_prompt(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) == 1:
            return self.prompt[0]
        raise EngineAPIError(
            400, "batched prompts are not supported", "unsupported_batch", "prompt"
        )


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    input: str | list[str] = Field(min_length=1)
    encoding_format: Literal["float"] = "float"
