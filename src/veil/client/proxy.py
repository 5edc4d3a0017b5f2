"""`veil proxy`: a local, plain OpenAI endpoint that encrypts everything it forwards.

Existing OpenAI clients point their base URL at the proxy (127.0.0.1 only by default). The proxy
OHTTP-encrypts every request to a key of the deployment's *current* attestation and streams the
decrypted response back, chunk by chunk as it is decrypted.

* Freshness: ``create_proxy_app(verifier)`` re-verifies in the background every interval and when
  the gateway refuses a request; once verification fails it answers 503 with the refusal's reason
  code and forwards nothing. ``GET /veil/verification`` is the latest verification with its time,
  or the refusal (``AsyncReverifier.status``); ``POST /veil/verify`` verifies again now.
* Its root is the verification page (``veil.client.webpage``): that data for people, and a chat
  through the proxy.
* Integrity: a streamed answer whose encrypted stream is cut, tampered with or fails a chunk ends
  with an explicit error event (SSE) and *without* a clean end of the HTTP body, so no client
  mistakes it for a complete answer; a non-streamed answer is decrypted and checked in full before
  its headers go out.
* Who may use it: ``ProxyGuard`` (Host, Origin, Sec-Fetch-Site, JSON bodies, optional token).
* A tenant key configured on the proxy travels only inside the encryption.

``create_encrypting_proxy(key_config, gateway_url, verification)`` is the same app for a key the
caller verified some other way (it never re-verifies: freshness is then the caller's job).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from veil.client.freshness import AsyncReverifier
from veil.client.proxy_guard import ProxyGuard, proxy_error
from veil.client.transport import AsyncKeySource, AsyncOhttpTransport, as_key_config
from veil.client.webpage import page_routes
from veil.errors import VeilError
from veil.httputil import BodyLimitMiddleware
from veil.ohttp.keyconfig import KeyConfig

log = logging.getLogger("veil.client.proxy")

MAX_BODY = 8 << 20
MAX_WHOLE_ANSWER = 64 << 20  # a non-streamed answer is held (and checked) whole before it is sent
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}
# Never sent through the tunnel: the proxy's own caller credentials mean nothing to the engine,
# browser context is nobody's business there, and compression would make the stream lumpier.
DROP_REQUEST = HOP_BY_HOP | {"authorization", "accept-encoding", "cookie", "origin", "referer"}


class _Deployment(Protocol):
    """What the proxy asks of its verification: a key source, readiness and a status to show."""

    keys: KeyConfig | AsyncKeySource

    async def ready(self) -> None: ...

    def refusal(self) -> VeilError | None: ...

    def status(self) -> dict[str, Any]: ...

    async def verify_now(self) -> dict[str, Any]: ...


class _Fresh:
    def __init__(self, verifier: AsyncReverifier) -> None:
        self.keys: KeyConfig | AsyncKeySource = verifier
        self.verifier = verifier

    async def ready(self) -> None:
        await self.verifier.current()

    def refusal(self) -> VeilError | None:
        return self.verifier.refusal

    def status(self) -> dict[str, Any]:
        return self.verifier.status()

    async def verify_now(self) -> dict[str, Any]:
        with contextlib.suppress(VeilError):  # a refusal is remembered and shown by status()
            await self.verifier.verify()
        return self.status()


class _Fixed:
    def __init__(self, config: KeyConfig, verification: dict[str, Any]) -> None:
        self.keys: KeyConfig | AsyncKeySource = config
        self.verification = verification

    async def ready(self) -> None:
        return None

    def refusal(self) -> VeilError | None:
        return None

    def status(self) -> dict[str, Any]:
        return self.verification

    async def verify_now(self) -> dict[str, Any]:
        return self.verification  # verified by the caller: nothing to redo here


def create_proxy_app(
    verifier: AsyncReverifier,
    *,
    allowed_hosts: Iterable[str] = (),
    token: str | None = None,
    tenant_key: str | None = None,
    timeout: float = 300.0,
) -> Starlette:
    """The proxy `veil proxy` serves: keeps ``verifier`` fresh and forwards only while it verifies.

    Requests go to the policy's relay when it names one, else straight to its gateway.
    """

    async def keep_fresh() -> None:
        await verifier.run()

    policy = verifier.policy
    return _app(_Fresh(verifier), policy.gateway_url, policy.relay_url, allowed_hosts, token, tenant_key, timeout, keep_fresh)


def create_encrypting_proxy(
    key_config: KeyConfig | bytes,
    gateway_url: str,
    verification: dict[str, Any],
    *,
    allowed_hosts: Iterable[str] = (),
    token: str | None = None,
    tenant_key: str | None = None,
    timeout: float = 300.0,
    relay_url: str | None = None,
) -> Starlette:
    """The proxy for a ``key_config`` the caller verified itself; ``verification`` is what it shows."""
    fixed = _Fixed(as_key_config(key_config), verification)
    return _app(fixed, gateway_url, relay_url, allowed_hosts, token, tenant_key, timeout, None)


def _app(
    deployment: _Deployment,
    gateway_url: str,
    relay_url: str | None,
    allowed_hosts: Iterable[str],
    token: str | None,
    tenant_key: str | None,
    timeout: float,
    background: Any,
) -> Starlette:
    """Encapsulated requests are POSTed to ``relay_url`` when set (it forwards them), else the gateway."""
    client = httpx.AsyncClient(
        transport=AsyncOhttpTransport(deployment.keys, relay_url or gateway_url), base_url=gateway_url, timeout=timeout
    )

    async def forward(request: Request) -> Response | _RelayedStream:
        try:
            await deployment.ready()
        except VeilError as err:
            return _not_verified(err)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST}
        headers["accept-encoding"] = "identity"  # we relay raw bytes and drop content-encoding
        if tenant_key:
            headers["authorization"] = f"Bearer {tenant_key}"  # inside the encryption only
        upstream = client.build_request(
            request.method,
            request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            headers=headers,
            content=await request.body(),
        )
        try:
            resp = await client.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            return proxy_error(502, "proxy.gateway_unreachable", f"Veil gateway unreachable: {type(exc).__name__}")
        except VeilError as err:  # the gateway refused the encrypted request, or re-verification failed
            refusal = deployment.refusal()
            if refusal is not None:
                return _not_verified(refusal)
            return proxy_error(502, err.reason, f"Veil gateway refused the request: {err.reason}")
        out_headers = [(k, v) for k, v in resp.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        if _is_sse(resp):
            return _RelayedStream(resp, out_headers)
        return await _whole(resp, out_headers)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(background()) if background else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await client.aclose()

    app = Starlette(
        routes=[
            *page_routes(deployment.status, deployment.verify_now),
            Route("/v1/{path:path}", forward, methods=["GET", "POST", "DELETE"]),
            Route("/infill", forward, methods=["POST"]),  # llama.cpp's code-completion path (llama.vscode)
        ],
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY)
    app.add_middleware(ProxyGuard, allowed_hosts=list(allowed_hosts), token=token)
    return app


def _not_verified(err: VeilError) -> JSONResponse:
    return proxy_error(503, err.reason, f"the Veil deployment does not verify; nothing is forwarded: {err.message}")


def _is_sse(resp: httpx.Response) -> bool:
    media: str = resp.headers.get("content-type", "")
    return media.split(";")[0].strip().lower() == "text/event-stream"


def _broken(exc: Exception) -> str:
    return exc.reason if isinstance(exc, VeilError) else "proxy.gateway_stream_broken"


async def _whole(resp: httpx.Response, headers: list[tuple[str, str]]) -> Response:
    """A non-streamed answer: decrypted and authenticated to its final chunk before anything is sent."""
    body = bytearray()
    try:
        async for piece in resp.aiter_raw():
            body += piece
            if len(body) > MAX_WHOLE_ANSWER:
                return proxy_error(502, "proxy.answer_too_large", f"the answer exceeds {MAX_WHOLE_ANSWER} bytes")
    except (httpx.HTTPError, VeilError) as exc:
        log.warning("proxy: answer from the gateway failed: reason=%s", _broken(exc))
        return proxy_error(502, _broken(exc), "the encrypted answer was cut or tampered with in transit")
    finally:
        await resp.aclose()
    return Response(bytes(body), status_code=resp.status_code, headers=dict(headers))


class _RelayedStream:
    """A streamed answer, passed on piece by piece the moment each is decrypted and authenticated.

    When the encrypted stream breaks (cut before its final chunk, a tampered or failed chunk), it
    sends an OpenAI-shaped SSE error event and then returns *without* the final body message: the
    server closes the connection with the chunked body unterminated, so every HTTP client sees an
    incomplete answer, and the OpenAI SDKs raise on the error event first.
    """

    def __init__(self, resp: httpx.Response, headers: list[tuple[str, str]]) -> None:
        self.resp = resp
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.resp.status_code, "headers": self.headers})
        try:
            async for piece in self.resp.aiter_raw():
                if piece:
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
        except (httpx.HTTPError, VeilError) as exc:
            reason = _broken(exc)
            log.warning("proxy: stream from the gateway broke: reason=%s; aborting the response", reason)
            await send({"type": "http.response.body", "body": _error_event(reason), "more_body": True})
            return  # no final message: the answer must not look complete
        finally:
            await self.resp.aclose()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _error_event(reason: str) -> bytes:
    error = {
        "message": f"the encrypted stream broke in transit ({reason}); the answer is incomplete",
        "type": "veil_error",
        "param": None,
        "code": reason,
    }
    # the blank line first ends any event the cut left open, so this one is read on its own
    return b"\n\ndata: " + json.dumps({"error": error}).encode() + b"\n\n"
