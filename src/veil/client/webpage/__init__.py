"""The verification page `veil proxy` serves at its root: what it verified, and a chat through it.

The page is three static files (``static/``: HTML, CSS, JS) shipped as package data and served by
the proxy itself; the browser fetches ``/veil/verification`` for the data (the same JSON as
``veil verify --json``, with the proxy's freshness) and talks to ``/v1/chat/completions`` through
the proxy, which encrypts every prompt. Nothing comes from another origin, and the
Content-Security-Policy says so to the browser: scripts, styles, images and connections from this
origin only, no inline script or style, no frames, no forms, no plugins.

The routes are read-only: ``POST /veil/verify`` only asks for a verification now (the data the page
shows); nothing the browser sends changes what the proxy trusts. Who may load them is the proxy's
``ProxyGuard`` (loopback Host names, same-origin requests only), like every other route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import cache
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["ASSETS", "CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "asset", "json_response", "page_response", "page_routes"]

#: The whole policy: this origin only, nothing inline, nothing framed, no form posts, no plugins.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "cache-control": "no-store",  # the page shows a verification: never a stale copy
}
#: URL path -> (file in static/, media type)
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/veil/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/veil/page.css": ("page.css", "text/css; charset=utf-8"),
    "/veil/icon.svg": ("icon.svg", "image/svg+xml"),
}


@cache
def asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def page_response(body: bytes, media_type: str) -> Response:
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


def json_response(data: Any) -> JSONResponse:
    return JSONResponse(data, headers=SECURITY_HEADERS)


def page_routes(status: Callable[[], dict[str, Any]], reverify: Callable[[], Awaitable[dict[str, Any]]]) -> list[Route]:
    """The page's routes: its files, ``GET /veil/verification`` (``status()``), ``POST /veil/verify``."""

    def serve(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(_: Request) -> Response:
            return page_response(asset(name), media_type)

        return endpoint

    async def verification(_: Request) -> JSONResponse:
        return json_response(status())

    async def verify_now(_: Request) -> JSONResponse:
        return json_response(await reverify())

    routes = [Route(path, serve(name, media), methods=["GET"]) for path, (name, media) in ASSETS.items()]
    return routes + [
        Route("/veil/verification", verification, methods=["GET"]),
        Route("/veil/verify", verify_now, methods=["POST"]),
    ]
