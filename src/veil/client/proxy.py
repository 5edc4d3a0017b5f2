"""`veil proxy`: a local, plain OpenAI endpoint that encrypts everything it forwards.

Existing OpenAI clients point their base URL at the proxy (127.0.0.1 only by default). The proxy
verifies the deployment once at start, then OHTTP-encrypts every request to the attested key
configuration and streams the decrypted response back.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from veil.client.transport import OhttpTransport
from veil.client.verify import AttestedCoordinator
from veil.httputil import BodyLimitMiddleware

MAX_BODY = 8 << 20
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


def create_proxy_app(attested: AttestedCoordinator, *, timeout: float = 300.0) -> Starlette:
    client = httpx.AsyncClient(
        transport=OhttpTransport(attested.key_configs[0], attested.gateway_url),
        base_url=attested.gateway_url,
        timeout=timeout,
    )

    async def forward(request: Request) -> StreamingResponse | JSONResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP | {"authorization"}}
        upstream = client.build_request(
            request.method,
            request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            headers=headers,
            content=await request.body(),
        )
        try:
            resp = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            return JSONResponse(
                {"error": {"message": f"Veil gateway unreachable: {exc}", "type": "veil_error",
                           "code": "proxy.gateway_unreachable"}},
                status_code=502,
            )
        out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            resp.aiter_raw(), status_code=resp.status_code, headers=out_headers,
            background=BackgroundTask(resp.aclose),
        )

    async def verification(_: Request) -> JSONResponse:
        return JSONResponse(attested.to_json())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = Starlette(
        routes=[
            Route("/veil/verification", verification),
            Route("/v1/{path:path}", forward, methods=["GET", "POST", "DELETE"]),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY)
    return app
