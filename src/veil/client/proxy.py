"""`veil proxy`: a local, plain OpenAI endpoint that encrypts everything it forwards.

Existing OpenAI clients point their base URL at the proxy (127.0.0.1 only by default). The proxy
verifies the deployment once at start, then OHTTP-encrypts every request to the attested key
configuration and streams the decrypted response back, chunk by chunk as it is decrypted.

``create_proxy_app(attested)`` is what ``veil proxy`` serves; ``create_encrypting_proxy(key_config,
gateway_url, verification)`` is the same app for callers that verified the deployment some other
way (tests, embedding the proxy in another program).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from veil.client.transport import OhttpTransport
from veil.client.verify import AttestedCoordinator
from veil.errors import VeilError
from veil.httputil import BodyLimitMiddleware
from veil.ohttp.keyconfig import KeyConfig

MAX_BODY = 8 << 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}
# Never sent through the tunnel: the proxy's own caller credentials mean nothing to the engine, and
# asking for compression would only make the engine's stream lumpier.
DROP_REQUEST = HOP_BY_HOP | {"authorization", "accept-encoding"}


def _proxy_error(status: int, code: str, message: str) -> JSONResponse:
    """An error in OpenAI's shape, so OpenAI clients raise their usual exception types."""
    return JSONResponse(
        {"error": {"message": message, "type": "veil_error", "param": None, "code": code}},
        status_code=status,
    )


def create_proxy_app(attested: AttestedCoordinator, *, timeout: float = 300.0) -> Starlette:
    """The proxy for a deployment verified by ``verify_coordinator``."""
    return create_encrypting_proxy(
        attested.key_configs[0], attested.gateway_url, attested.to_json(), timeout=timeout,
        relay_url=attested.relay_url,
    )


def create_encrypting_proxy(
    key_config: KeyConfig | bytes,
    gateway_url: str,
    verification: dict[str, Any],
    *,
    timeout: float = 300.0,
    transport: OhttpTransport | None = None,
    relay_url: str | None = None,
) -> Starlette:
    """A plain OpenAI endpoint that OHTTP-encrypts every ``/v1/...`` request to ``key_config``.

    ``verification`` is served at ``/veil/verification`` so that a user can see what the proxy
    checked; the caller is responsible for having verified ``key_config`` before calling this.
    """
    client = httpx.AsyncClient(
        transport=transport or OhttpTransport(key_config, relay_url or gateway_url),
        base_url=gateway_url,
        timeout=timeout,
    )

    async def forward(request: Request) -> StreamingResponse | JSONResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
        headers["accept-encoding"] = "identity"  # we relay raw bytes and drop content-encoding
        upstream = client.build_request(
            request.method,
            request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            headers=headers,
            content=await request.body(),
        )
        try:
            resp = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            return _proxy_error(502, "proxy.gateway_unreachable", f"Veil gateway unreachable: {type(exc).__name__}")
        except VeilError as err:  # the gateway refused the encrypted request (outer layer)
            return _proxy_error(502, err.reason, f"Veil gateway refused the request: {err.reason}")
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            _relay(resp), status_code=resp.status_code, headers=out_headers,
            background=BackgroundTask(resp.aclose),
        )

    async def verification_info(_: Request) -> JSONResponse:
        return JSONResponse(verification)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = Starlette(
        routes=[
            Route("/veil/verification", verification_info),
            Route("/v1/{path:path}", forward, methods=["GET", "POST", "DELETE"]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY)
    return app


async def _relay(resp: httpx.Response) -> AsyncIterator[bytes]:
    """Pass each decrypted piece on the moment it arrives; a broken tunnel ends the body early.

    A truncated or tampered encrypted stream raises inside the transport; we stop there (the
    client sees a cut-off body, and an SSE client no ``[DONE]``) instead of a server traceback.
    """
    try:
        async for piece in resp.aiter_raw():
            if piece:
                yield piece
    except (httpx.HTTPError, VeilError):
        return
