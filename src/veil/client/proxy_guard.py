"""The local proxy is not a cross-site tool: who may talk to `veil proxy`.

A plain OpenAI endpoint on 127.0.0.1 is reachable from every web page the user opens. A page
cannot read a cross-origin answer, but it can send a "simple" request (a ``text/plain`` POST needs
no CORS preflight) and time it, or point a domain it controls at 127.0.0.1 (DNS rebinding) to make
its requests same-origin. This ASGI middleware refuses, before anything is forwarded:

* a ``Host`` that is not a loopback name or one the user allowed (``proxy.bad_host``: rebinding);
* an ``Origin`` other than the proxy's own, or a ``Sec-Fetch-Site`` other than ``same-origin`` or
  ``none`` (``proxy.cross_site``: every browser sends one of them on cross-site requests);
* a POST whose body is not ``application/json`` (``proxy.bad_content_type``): a JSON body from
  another origin needs a CORS preflight, which the proxy never grants;
* with a per-proxy token, a request outside the page (``/``, ``/veil/``: every forwarded path) without ``Authorization: Bearer <token>``
  (``proxy.unauthorized``). OpenAI clients send their ``api_key`` that way.

Programs (SDKs, curl) send neither Origin nor Sec-Fetch-Site and pass unchanged.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SAME_ORIGIN_FETCH = frozenset({"same-origin", "none"})


def proxy_error(status: int, code: str, message: str) -> JSONResponse:
    """An error in OpenAI's shape, so OpenAI clients raise their usual exception types."""
    return JSONResponse(
        {"error": {"message": message, "type": "veil_error", "param": None, "code": code}},
        status_code=status,
    )


def _hostname(host: str) -> str:
    """``name`` of a ``name:port`` / ``[v6]:port`` Host value, lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _own_page(path: str) -> bool:
    return path == "/" or path.startswith("/veil/")


class ProxyGuard:
    """Refuse cross-site, rebound and (optionally) unauthenticated requests to the local proxy."""

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str] = (), token: str | None = None) -> None:
        self.app = app
        self.allowed = LOOPBACK_NAMES | {_hostname(h) for h in allowed_hosts}
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if _hostname(host) not in self.allowed:
            return proxy_error(403, "proxy.bad_host", f"Host {host!r} is not this proxy (DNS rebinding?)")
        origin = headers.get("origin")
        if origin is not None and origin.lower() != f"{scope.get('scheme', 'http')}://{host.lower()}":
            return proxy_error(403, "proxy.cross_site", f"requests from {origin!r} are refused: the proxy is for local programs")
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None and fetch_site.lower() not in SAME_ORIGIN_FETCH:
            return proxy_error(403, "proxy.cross_site", f"a {fetch_site} request is refused: the proxy is for local programs")
        if scope["method"] == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return proxy_error(415, "proxy.bad_content_type", "POST bodies must be application/json")
        # Every forwarded path (/v1/..., /infill) needs it; only the proxy's own page (/ and /veil/...)
        # does not: it shows the verification, and its chat sends the token the user types.
        if self.token is not None and not _own_page(scope["path"]):
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token):
                return proxy_error(401, "proxy.unauthorized", "send this proxy's token as 'Authorization: Bearer <token>'")
        return None
