"""The gateway's hop to the engine: lean HTTP/1.1 over the engine's Unix socket.

Every streamed event crosses this hop, so it must cost little per event: a general-purpose client
(httpx over httpcore and h11, pure-Python parsing and several layers of async context per read)
spent about as much per event as all of the gateway's encryption and padding together. This is
an :class:`httpx.AsyncBaseTransport` (so the gateway and its tests speak one API, and tests can
swap in ``httpx.ASGITransport``) that parses with ``httptools`` (llhttp, the C parser uvicorn
uses), keeps idle connections for reuse, and hands the gateway body bytes *coalesced*: a piece
goes on at once when none went on since the last tick of a ``coalesce``-second clock (the first
event of an answer never waits); else reading stops until the next tick — what the engine sends
meanwhile waits in the kernel and wakes nobody — and then everything goes on in one piece (after
at most 1 ms more, the wait for that read); while each tick brings more, reading stays stopped
between ticks; the end of the answer goes on at once. The ticks are the same for every
connection, so the reads of all streams being coalesced share one wake-up. Events that follow
closely thus cost one wake-up, read, seal and socket write together, the network sees fewer chunk
boundaries to time, and no byte waits more than ``coalesce`` + 1 ms (default 5 + 1 ms;
``coalesce=0`` hands on each read as it comes). Streams slower than one event per tick are
handed on event by event, as before.

Written here because no maintained library offers a streaming HTTP/1.1 client on
``httptools``; it does only what the engine hop needs (no redirects, cookies, proxies, TLS or
content decoding — the gateway asks for none).

Errors are httpx's (``ConnectError``, ``ReadTimeout``, ``RemoteProtocolError``), so callers
handle one family. Reads wait at most ``read_timeout`` seconds between bytes from the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httptools
import httpx

_HIGH_WATER = 1 << 20  # body bytes buffered before the engine's socket is paused
_MAX_HEAD = 64 * 1024  # bytes of answer headers taken from the (untrusted) engine
_WATCH_EVERY = 5.0  # s between checks of a waiting connection's read timeout
DEFAULT_COALESCE = 0.005  # s: the coalescing tick (see the module docstring)
_DRAIN = 0.001  # s a held piece waits, once reading resumes, for what the kernel buffered meanwhile


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection to the engine; one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coalesce: float = 0.0) -> None:
        self.loop = loop
        self.coalesce = coalesce
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._watch: asyncio.TimerHandle | None = None
        self._flush: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self._unwatch()
        if self.transport is not None:
            self.transport.resume_reading()  # a reused connection starts reading, whatever held it
        self.parser = httptools.HttpResponseParser(self)
        self.head: asyncio.Future[None] = self.loop.create_future()
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.body = bytearray()
        self.done = False
        self.head_only = False  # a HEAD request: the answer has no body, whatever its headers say
        self.keep_alive = False
        self.error: httpx.HTTPError | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False
        self.got_bytes = False
        self.last_read = self.loop.time()
        self.next_piece = 0.0  # loop time before which body bytes are held for the ones after them
        self.holding = False  # reading paused to coalesce (distinct from ``paused``: backpressure)
        self.draining = False  # reading resumed after a hold: the next read hands everything on
        self.flowing = False  # the last hold brought more: hold again at once, not at the next byte

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.fail(httpx.RemoteProtocolError("the engine sent a malformed HTTP answer"))
            return
        if len(self.body) > _HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if self.waiter is None:
            return  # the reader is busy: it looks at the body when it is back
        if self.draining:
            self.flowing = True
            self._wake()
        elif self.done or self.paused or self.loop.time() >= self.next_piece:
            self._wake()
        elif self._flush is None:
            self._hold()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done:
            self.fail(httpx.RemoteProtocolError("the engine closed the connection mid-answer"))

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > _MAX_HEAD:
            raise httptools.HttpParserError("the engine's answer head is too large")  # → fail() in data_received
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.head_only:
            self.done = True  # keep_alive stays False: the parser would read a body that never comes
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()  # llhttp forgets it once the message ends
        self.done = True

    # -- the exchange ---------------------------------------------------------------------------

    def fail(self, error: httpx.HTTPError) -> None:
        if self.error is None:
            self.error = error
        if not self.head.done():
            self.head.set_exception(error)
            self.head.exception()  # retrieved: an unawaited head is no "never retrieved" warning
        self._wake()
        self.close()

    def _hold(self) -> None:
        """Coalesce: stop reading until ``next_piece`` (what the engine sends meanwhile waits in
        the kernel, waking nobody), then read it all and hand it on in one piece."""
        self.holding = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._flush = self.loop.call_at(self.next_piece, self._drain)

    def _drain(self) -> None:
        self.holding = False
        self.draining = True
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()
        self._flush = self.loop.call_later(_DRAIN, self._wake)  # if the kernel held nothing

    def _wake(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self.holding:
            self.holding = False
            if self.transport is not None and not self.paused:
                self.transport.resume_reading()
        self.draining = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            self.waiter = None
            waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        self._unwatch()
        if self.transport is not None:
            self.transport.close()

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives, coalesced (see the module docstring); ends when the answer does."""
        while True:
            if self.body and not (self.done or self.paused or self.error) and self.loop.time() < self.next_piece:
                self.waiter = self.loop.create_future()
                if self._flush is None:
                    self._hold()
                await self.waiter
            elif self.body:
                piece = bytes(self.body)
                self.body.clear()
                if self.paused and self.transport is not None:
                    self.paused = False
                    self.transport.resume_reading()
                self.next_piece = (self.loop.time() // self.coalesce + 1) * self.coalesce if self.coalesce else 0.0
                yield piece
            elif self.done:
                return
            elif self.error is not None:
                raise self.error
            else:
                self.waiter = self.loop.create_future()
                if self.flowing and self._flush is None:
                    self.flowing = False  # set again only if this hold brings more
                    self._hold()
                await self.waiter

    def watch(self, read_timeout: float) -> None:
        """Fail the exchange once the engine has sent nothing for ``read_timeout`` seconds (one
        timer every few seconds per exchange, not one per read)."""
        self._watch = None
        if self.closed or self.done:
            return
        if self.paused:  # waiting for our client to read, not for the engine
            self.last_read = self.loop.time()
        elif self.loop.time() - self.last_read > read_timeout:
            self.fail(httpx.ReadTimeout(f"the engine sent nothing for {read_timeout:.0f} s"))
            return
        self._watch = self.loop.call_later(min(_WATCH_EVERY, read_timeout), self.watch, read_timeout)

    def _unwatch(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


class _Body(httpx.AsyncByteStream):
    def __init__(self, link: "EngineLink", conn: _Connection) -> None:
        self._link = link
        self._conn = conn

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._conn.pieces()  # no generator of our own in between: one layer less per event

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None  # type: ignore[assignment]
        if conn is None:
            return
        if conn.done and not conn.body and conn.keep_alive and not conn.closed:
            self._link.release(conn)
        else:
            conn.close()  # cut short or not reusable: never hand a half-read connection on


class EngineLink(httpx.AsyncBaseTransport):
    """HTTP/1.1 to one Unix socket, with a pool of idle connections (see the module docstring).

    ``target`` is the socket's path, or a ``(host, port)`` TCP address (benchmarks use the same
    lean client for their load, so that the client's parsing does not hide the gateway's)."""

    def __init__(
        self,
        target: str | tuple[str, int],
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 300.0,
        max_idle: int = 256,
        coalesce: float = DEFAULT_COALESCE,
    ) -> None:
        self.target = target
        self.coalesce = coalesce
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_idle = max_idle
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        for attempt in range(3):  # the engine may be between bind and listen, or restarting
            try:
                made = (
                    loop.create_connection(lambda: _Connection(loop, self.coalesce), *self.target)
                    if isinstance(self.target, tuple)
                    else loop.create_unix_connection(lambda: _Connection(loop, self.coalesce), self.target)
                )
                _, conn = await asyncio.wait_for(made, self.connect_timeout)
                return conn
            except (OSError, asyncio.TimeoutError) as exc:
                if attempt == 2:
                    raise httpx.ConnectError(f"cannot reach the engine: {type(exc).__name__}") from None
                await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def release(self, conn: _Connection) -> None:
        if len(self._idle) < self.max_idle:
            conn._reset()
            self._idle.append(conn)
        else:
            conn.close()

    def _checkout(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and conn.loop is loop:
                return conn
            conn.close()  # gone, or made on another (finished) event loop
        return None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = request.content  # the gateway always sends a complete body
        head = [request.method.encode(), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += [name, b": ", value, b"\r\n"]
        wire = b"".join(head) + b"\r\n" + body
        for _ in range(2):
            reused = self._checkout()
            conn = reused or await self._connect()
            assert conn.transport is not None
            conn.last_read = conn.loop.time()
            conn.head_only = request.method == "HEAD"
            conn.transport.write(wire)
            conn.watch(self.read_timeout)
            try:
                await conn.head
            except httpx.HTTPError:
                if reused is not None and not conn.got_bytes:
                    continue  # the engine had closed this idle connection: once more, on a new one
                raise
            except BaseException:
                conn.close()  # cancelled (the client left): the exchange is abandoned
                raise
            return httpx.Response(
                conn.status, headers=conn.headers, stream=_Body(self, conn), extensions={"http_version": b"HTTP/1.1"}
            )
        raise httpx.RemoteProtocolError("the engine closed the connection before answering")

    async def aclose(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
