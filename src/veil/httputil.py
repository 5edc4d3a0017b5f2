"""HTTP plumbing shared by Veil's servers: body size limits and errors as reason codes.

Server side only (Starlette); the error body's shape and its client-side decoder are wire
agreements and live in ``veil.wire``.
"""

from __future__ import annotations


from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veil.errors import ParseError, PolicyError, ProtocolError, VeilError, VerificationError
from veil.wire import error_body

STATUS_BY_ERROR: dict[type[VeilError], int] = {
    ParseError: 400,
    ProtocolError: 400,
    VerificationError: 403,
    PolicyError: 403,
}


def error_response(err: VeilError, status: int | None = None) -> JSONResponse:
    code = status or next((s for t, s in STATUS_BY_ERROR.items() if isinstance(err, t)), 400)
    return JSONResponse(error_body(err.reason, err.message), status_code=code)


async def veil_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, VeilError)
    return error_response(exc)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(error_body("http.body_too_large", f"request body exceeds {limit} bytes"), status_code=413)
