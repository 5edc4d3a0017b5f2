"""veil.httpserver's limits, one at a time, against a real uvicorn server on loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from veil import httpserver
from veil.httpserver import ServerLimits
from veil.testing import ServerThread


async def _echo(request: Request) -> PlainTextResponse:
    body = await request.body()
    return PlainTextResponse(f"got {len(body)}")


APP = Starlette(routes=[Route("/", _echo, methods=["GET", "POST"])])
LIMITS = ServerLimits(header_timeout=0.5, body_timeout=0.8, max_connections=4, max_header_bytes=4096, keep_alive=1)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(APP, limits=LIMITS) as s:
        yield s


def _connect(server: ServerThread) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _closed(sock: socket.socket, within: float) -> bool:
    """True if the server closes ``sock`` within ``within`` seconds (reads return EOF or reset)."""
    sock.settimeout(within)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _get(server: ServerThread) -> bytes:
    with _connect(server) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_a_slow_head_is_cut(server: ServerThread) -> None:
    with _connect(server) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHo")  # and nothing more
        assert _closed(s, within=5)
    with _connect(server) as s:  # silence from the start counts too
        assert _closed(s, within=5)


def test_a_slow_body_is_cut(server: ServerThread) -> None:
    with _connect(server) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        start = time.monotonic()
        assert _closed(s, within=5) and time.monotonic() - start >= 0.5


def test_an_endless_head_is_cut(server: ServerThread) -> None:
    with _connect(server) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 8000)
        assert _closed(s, within=5)


def test_at_the_cap_the_oldest_slow_connection_gives_way(server: ServerThread) -> None:
    slow = [_connect(server) for _ in range(4)]
    for s in slow:
        s.sendall(b"GET / HTT")
    time.sleep(0.1)
    assert b"200 OK" in _get(server)  # a newcomer is served at the cap ...
    assert _closed(slow[0], within=0.3)  # ... in the place of the oldest slow one
    for s in slow:
        s.close()


def test_the_cap_leaves_descriptors_in_reserve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver.resource, "getrlimit", lambda _: (1000, 1000))
    monkeypatch.setattr(httpserver.os, "listdir", lambda _: ["x"] * 100)
    fitted = httpserver.fit_to_descriptors(ServerLimits(max_connections=1024, reserve_fds=64, fds_per_connection=2))
    assert fitted.max_connections == (1000 - 100 - 64) // 2  # each gateway connection may hold an engine link
    assert httpserver.fit_to_descriptors(ServerLimits(max_connections=10)).max_connections == 10
