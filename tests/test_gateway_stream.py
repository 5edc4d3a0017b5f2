"""The gateway's own streaming response (SealedStream): a client that leaves mid-stream stops the
engine's answer, and coalesced events still reach the client whole and in order.

Real servers: the gateway under uvicorn (ServerThread), a raw engine on a Unix socket that streams
an endless answer and records when its connection closes, and a raw TCP client.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedRequestSender
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.testing import ServerThread
from veil.wire import GATEWAY_PATH, MEDIA_TYPE_CHUNKED_REQUEST
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app


class EndlessEngine:
    """Streams one SSE event every 5 ms until its client goes; ``gone`` is set when it has."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.gone = threading.Event()
        self.started = threading.Event()
        self.sent = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)
        self.thread.start()
        assert self.started.wait(10)

    async def _serve(self) -> None:
        self.stop = asyncio.Event()
        server = await asyncio.start_unix_server(self._handle, self.path)
        self.started.set()
        await self.stop.wait()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        try:
            while not reader.at_eof():
                event = b"data: {}\n\n"
                writer.write(b"%x\r\n" % len(event) + event + b"\r\n")
                await writer.drain()
                self.sent += 1
                await asyncio.sleep(0.005)
                if self.sent > 20_000:  # bounded: about 100 s
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            self.gone.set()
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


def _request(pair: KeyPair) -> bytes:
    inner = bhttp.encode_request(
        bhttp.Request("POST", "https", "api", "/v1/chat/completions", [("content-type", "application/json")], b'{"stream":true}')
    )
    tx = ChunkedRequestSender(pair.config)
    body = tx.header + tx.seal_final(inner)
    head = f"POST {GATEWAY_PATH} HTTP/1.1\r\nhost: gw\r\ncontent-type: {MEDIA_TYPE_CHUNKED_REQUEST}\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_a_client_that_leaves_mid_stream_stops_the_engine(tmp_path: Path) -> None:
    pair = KeyPair.generate(1)
    engine = EndlessEngine(str(tmp_path / "engine.sock"))
    try:
        with ServerThread(create_gateway_app(KeyStore([pair]), EngineLink(engine.path))) as gateway:
            client = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
            client.sendall(_request(pair))
            got = b""
            while got.count(b"\r\n") < 8:  # the head and a few sealed chunks
                got += client.recv(65536)
            assert got.startswith(b"HTTP/1.1 200")
            client.close()  # the client leaves mid-stream
            assert engine.gone.wait(20), f"the engine kept streaming to nobody ({engine.sent} events)"
    finally:
        engine.close()
