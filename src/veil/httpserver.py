"""Serve Veil's HTTP apps (coordinator, worker gateway, local proxy) with limits slow clients
cannot exhaust: one set of limits, one server configuration, used by all three.

uvicorn (the server) times out idle keep-alive connections but nothing else: a client that sends
one header byte every few seconds, or a request body one byte at a time, holds its connection and
a file descriptor for ever, and enough of them lock everyone else out. :class:`ServerLimits` adds,
per connection, what uvicorn lacks (in :func:`_guarded_protocol`, a subclass of its httptools
protocol — the small part written by hand here, since uvicorn offers no hook for it):

* a **header timeout**: the request line and headers must be complete this long after the
  connection opens (or after the first byte of a later keep-alive request), and a **header size**
  cap;
* a **body timeout**: the request body must be complete this long after its headers;
* a **connection cap** with eviction: at the cap, a new connection takes the place of the oldest
  one that is idle or still sending its request (legitimate clients send a request in one go, so
  that is where a slow-client flood sits); if every connection is busy answering, the new one is
  refused. Connections that are answering are never cut;
* **descriptors in reserve**: the cap is lowered, if need be, so that ``reserve_fds`` descriptors
  (plus one per connection where each connection needs an upstream link, as the gateway's engine
  link does) stay free for the coordinator, engine and database links.
"""

from __future__ import annotations

import logging
import os
import resource
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("veil.httpserver")


@dataclass(frozen=True)
class ServerLimits:
    header_timeout: float = 10.0  # s from connect (or a keep-alive request's first byte) to a full head
    max_header_bytes: int = 64 * 1024  # request line + headers
    body_timeout: float = 60.0  # s from the head to the end of the body (8 MiB at ~1 Mbit/s)
    max_connections: int = 1024
    reserve_fds: int = 64  # kept free for the coordinator, engine and database links
    fds_per_connection: int = 1  # 2 where every connection may open an upstream link (the gateway)
    keep_alive: int = 5  # s an idle keep-alive connection is kept
    graceful_shutdown: int = 5  # s in-flight answers get when the server stops


GATEWAY_LIMITS = ServerLimits(fds_per_connection=2)


def fit_to_descriptors(limits: ServerLimits) -> ServerLimits:
    """Raise the soft descriptor limit to the hard one, and lower ``max_connections`` until every
    connection, its upstream link and the reserve fit in what is left."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    room = (soft - in_use - limits.reserve_fds) // limits.fds_per_connection
    if room < limits.max_connections:
        log.warning(
            "descriptor limit %d: serving at most %d connections (keeping %d in reserve)", soft, max(room, 1), limits.reserve_fds
        )
        return replace(limits, max_connections=max(room, 1))
    return limits


def _guarded_protocol(limits: ServerLimits) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the timeouts, caps and eviction of :class:`ServerLimits`.

    One class per server: its ``evictable`` registry holds, oldest first, the connections that are
    idle or still sending their request.
    """
    evictable: OrderedDict[Any, None] = OrderedDict()

    class GuardedProtocol(HttpToolsProtocol):
        def connection_made(self, transport: Any) -> None:
            self._timer: Any = None
            self._head_bytes = 0
            self._in_head = True
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections and not self._evict_one():
                log.warning("connection refused: %d connections, none idle or slow", len(self.connections) - 1)
                transport.abort()
                return
            evictable[self] = None
            self._arm(limits.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            evictable.pop(self, None)
            self._disarm()
            super().connection_lost(exc)

        def _evict_one(self) -> bool:
            while evictable:
                victim, _ = evictable.popitem(last=False)
                if not victim.transport.is_closing():
                    victim.transport.abort()
                    return True
            return False

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            if not self.transport.is_closing():
                self.transport.close()  # too slow: the app, if it was reading, sees a disconnect

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head and self._head_bytes > limits.max_header_bytes and not self.transport.is_closing():
                self.transport.close()  # still no end of the head after this many bytes

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            if self._timer is None:  # a later request on a kept-alive connection
                self._arm(limits.header_timeout)
            evictable.setdefault(self, None)

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_bytes = 0
            self._arm(limits.body_timeout)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            evictable.pop(self, None)  # answering now: never cut for a newcomer
            super().on_message_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                evictable[self] = None  # idle until its next request

    return GuardedProtocol


def server_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    uds: str | None = None,
    limits: ServerLimits = ServerLimits(),
    log_level: str = "warning",
) -> uvicorn.Config:
    """The uvicorn configuration every Veil server uses (access logs off: they would name paths)."""
    fitted = fit_to_descriptors(limits)
    return uvicorn.Config(
        app,
        host=host,
        port=port if port is not None else 0,
        uds=uds,
        log_level=log_level,
        access_log=False,
        http=_guarded_protocol(fitted),
        timeout_keep_alive=fitted.keep_alive,
        timeout_graceful_shutdown=fitted.graceful_shutdown,
        # uvicorn otherwise believes X-Forwarded-For from 127.0.0.1: anyone on loopback, or any client
        # through a local balancer that passes the header on, could choose the address per-source
        # limits count (tests/attacks/test_forwarded_for_spoofing.py)
        proxy_headers=False,
    )


def make_server(app: Any, **kwargs: Any) -> uvicorn.Server:
    return uvicorn.Server(server_config(app, **kwargs))


def serve(app: Any, **kwargs: Any) -> None:
    """Run ``app`` until stopped, with :class:`ServerLimits` (``limits=``) applied."""
    make_server(app, **kwargs).run()
