"""Anthropic's official SDK over Veil's encrypted transports.

The ``anthropic`` SDK (2.x) runs on ``httpx2``, which takes only ``httpx2`` transports, while
Veil's OHTTP transports are ``httpx`` ones. These two small bridges hand each request's method,
URL, headers and body to the OHTTP transport and its answer (streamed, for SSE) back as an
``httpx2`` response, so ``veil.Client.anthropic()`` is the real SDK talking to the verified,
encrypted deployment. Written by hand: no maintained library bridges the two. ``anthropic`` is an
optional dependency: only these functions import it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2


class _SyncBody(httpx2.SyncByteStream):
    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp

    def __iter__(self) -> Iterator[bytes]:
        yield from self.resp.iter_raw()

    def close(self) -> None:
        self.resp.close()


class _AsyncBody(httpx2.AsyncByteStream):
    def __init__(self, resp: httpx.Response) -> None:
        self.resp = resp

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.resp.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        await self.resp.aclose()


class SyncBridge(httpx2.BaseTransport):
    """An ``httpx2`` transport that sends through an ``httpx`` one (``OhttpTransport``)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        body = request.read()
        resp = self.inner.handle_request(
            httpx.Request(request.method, str(request.url), headers=request.headers.multi_items(), content=body)
        )
        return httpx2.Response(resp.status_code, headers=resp.headers.multi_items(), stream=_SyncBody(resp))

    def close(self) -> None:
        self.inner.close()


class AsyncBridge(httpx2.AsyncBaseTransport):
    """The asyncio twin of :class:`SyncBridge` (for ``AsyncOhttpTransport``)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        resp = await self.inner.handle_async_request(
            httpx.Request(request.method, str(request.url), headers=request.headers.multi_items(), content=body)
        )
        return httpx2.Response(resp.status_code, headers=resp.headers.multi_items(), stream=_AsyncBody(resp))

    async def aclose(self) -> None:
        await self.inner.aclose()


def sync_client(transport: httpx.BaseTransport, base_url: str, auth_token: str, timeout: float, **kwargs: Any) -> Any:
    """An ``anthropic.Anthropic`` whose every request goes through ``transport``."""
    import anthropic

    return anthropic.Anthropic(
        base_url=base_url,
        auth_token=auth_token,
        max_retries=0,
        http_client=httpx2.Client(transport=SyncBridge(transport), timeout=timeout),
        **kwargs,
    )


def async_client(transport: httpx.AsyncBaseTransport, base_url: str, auth_token: str, timeout: float, **kwargs: Any) -> Any:
    """An ``anthropic.AsyncAnthropic`` whose every request goes through ``transport``."""
    import anthropic

    return anthropic.AsyncAnthropic(
        base_url=base_url,
        auth_token=auth_token,
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=AsyncBridge(transport), timeout=timeout),
        **kwargs,
    )
