"""EngineLink, the gateway's lean HTTP/1.1 hop to the engine's Unix socket.

Against raw socket servers (so each test controls exactly what the "engine" sends): connections are
reused, an idle connection the engine closed is replaced without failing the request, a cut,
malformed, oversized or silent answer is an httpx error (which the gateway turns into an encrypted 502), and
a body that arrives in one read is handed on as one piece (what lets the gateway seal events that
arrived together at once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from veil.worker.engine_link import EngineLink

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0)
    return head + await reader.readexactly(length)


def _run(tmp_path: Path, handler: Handler, body: Callable[[EngineLink], Awaitable[None]], coalesce: float = 0.005) -> None:
    sock = str(tmp_path / "engine.sock")

    async def main() -> None:
        server = await asyncio.start_unix_server(handler, sock)
        link = EngineLink(sock, read_timeout=1.0, coalesce=coalesce)
        try:
            await body(link)
        finally:
            await link.aclose()
            server.close()

    asyncio.run(asyncio.wait_for(main(), 30))


async def _get(link: EngineLink) -> tuple[int, list[bytes], httpx.Response]:
    resp = await link.handle_async_request(httpx.Request("POST", "http://engine/v1/chat/completions", json={"stream": True}))
    stream = resp.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    pieces = [p async for p in stream]
    await stream.aclose()
    return resp.status_code, pieces, resp


def test_keep_alive_reuse_and_events_sent_together_arrive_as_one_piece(tmp_path: Path) -> None:
    connections = []
    requests: list[bytes] = []

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while not reader.at_eof():
            try:
                requests.append(await _read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(SSE_HEAD + _chunk(b"data: 1\n\n") + _chunk(b"data: 2\n\n") + b"0\r\n\r\n")  # one write
            await writer.drain()

    async def body(link: EngineLink) -> None:
        for _ in range(3):
            status, pieces, resp = await _get(link)
            assert status == 200 and pieces == [b"data: 1\n\ndata: 2\n\n"]
            assert resp.headers["content-type"] == "text/event-stream"

    _run(tmp_path, engine, body)
    assert len(connections) == 1 and len(requests) == 3
    assert requests[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"user-agent" not in requests[0].lower() and b"accept-encoding" not in requests[0].lower()


def test_events_that_follow_closely_are_coalesced_within_the_bound(tmp_path: Path) -> None:
    """Events 2 ms apart, coalesced within 50 ms: the first goes on alone at once, the rest in
    few pieces, nothing lost or reordered, and the end of the answer is not held back."""
    events = [b"data: %d\n\n" % i for i in range(20)]

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(SSE_HEAD)
        for event in events:
            writer.write(_chunk(event))
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def body(link: EngineLink) -> None:
        resp = await link.handle_async_request(httpx.Request("POST", "http://engine/v1/chat/completions", content=b"{}"))
        stream = resp.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        pieces = [p async for p in stream]
        await stream.aclose()
        assert pieces[0] == events[0]  # the first event never waits
        assert b"".join(pieces) == b"".join(events)
        assert len(pieces) <= 6  # 40 ms of events in pieces at most 50 ms apart (plus the end)

    _run(tmp_path, engine, body, coalesce=0.05)


def test_an_idle_connection_the_engine_closed_is_replaced(tmp_path: Path) -> None:
    served = []

    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive promised, then the connection closed (an engine's idle timeout)

    async def body(link: EngineLink) -> None:
        for _ in range(3):
            status, pieces, _ = await _get(link)
            assert (status, b"".join(pieces)) == (200, b"ok")
            await asyncio.sleep(0.05)

    _run(tmp_path, engine, body)
    assert len(served) == 3


@pytest.mark.parametrize("answer", ["cut", "malformed", "huge-head", "silent"])
def test_a_cut_malformed_or_silent_answer_is_an_httpx_error(tmp_path: Path, answer: str) -> None:
    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        if answer == "cut":
            writer.write(SSE_HEAD + _chunk(b"data: 1\n\n"))
            await writer.drain()
            writer.close()
        elif answer == "malformed":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n")
            await writer.drain()
        elif answer == "huge-head":  # the engine is untrusted: its headers cannot fill our memory
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 1000)
            for _ in range(200):
                writer.write(b"\r\nx-filler: " + b"a" * 1000)
            await writer.drain()
            await asyncio.sleep(5)
        else:
            await asyncio.sleep(10)  # never answers: the read timeout (1 s here) fires

    async def body(link: EngineLink) -> None:
        with pytest.raises(httpx.HTTPError) as info:
            await _get(link)
        assert isinstance(info.value, httpx.ReadTimeout) == (answer == "silent"), repr(info.value)

    _run(tmp_path, engine, body)


def test_an_engine_that_is_not_there_is_a_connect_error(tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(httpx.ConnectError):
            await EngineLink(str(tmp_path / "none.sock")).handle_async_request(httpx.Request("GET", "http://engine/health"))

    asyncio.run(main())


def test_a_head_answer_ends_at_its_head(tmp_path: Path) -> None:
    async def engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")  # no body follows a HEAD answer
        await writer.drain()
        await asyncio.sleep(5)

    async def body(link: EngineLink) -> None:
        resp = await link.handle_async_request(httpx.Request("HEAD", "http://engine/v1/models"))
        stream = resp.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        assert resp.status_code == 200 and [p async for p in stream] == []
        await stream.aclose()

    _run(tmp_path, engine, body)
