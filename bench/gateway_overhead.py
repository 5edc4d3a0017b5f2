"""The OHTTP gateway's own cost per request, against an engine that answers instantly.

Same requests, same instant engine, two paths:

* direct:  client ──HTTP──▶ engine
* gateway: client ──OHTTP (chunked, encrypt)──▶ gateway (decrypt, BHTTP, tenants, padding)
           ──HTTP──▶ engine ──▶ gateway (encrypt every chunk) ──▶ client (decrypt)

so the difference is everything Veil adds: client-side encryption and decryption, the gateway's
work, and (in ``sockets`` mode) the gateway's extra HTTP hop to the engine over a Unix socket.

Modes:
  inproc   everything in one event loop over ASGI/httpx transports (CPU cost only, no sockets);
  sockets  engine (uvicorn, Unix socket) and gateway (uvicorn, TCP, Veil's server limits) in their
           own processes (veil.testing.GatewayProcess).

The engine is veil.testing's FakeEngine: no model, it answers at once, one body message per event.

Each run does ``--requests`` streamed chat completions (``--tokens`` SSE events each) at
concurrency 1, 8 and 64 and prints, per path, mean latency and wall time per request, then the
per-request overhead in ms and the ratio gateway/direct. ``--padding off`` turns length hiding off.

    python bench/gateway_overhead.py                       # inproc, padding on
    python bench/gateway_overhead.py --mode sockets --requests 256
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from veil.client.transport import AsyncOhttpTransport  # noqa: E402
from veil.manifest import PaddingSettings  # noqa: E402
from veil.ohttp.keyconfig import KeyPair, KeyStore  # noqa: E402
from veil.testing import FakeEngine, GatewayProcess  # noqa: E402
from veil.worker.gateway import create_gateway_app  # noqa: E402

CONCURRENCY = (1, 8, 64)
PADDING_OFF = PaddingSettings(requests=None, responses=None, stream_chunks=None)
# The FAKE engine of veil.testing (no model, answers at once): max_tokens decides the events.
ENGINE = FakeEngine(tokens=1 << 20)


class _PieceStream(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for p in self.pieces:
            yield p


class InprocEngine(httpx.AsyncBaseTransport):
    """Runs the fake engine in-process and keeps its body messages as separate pieces
    (httpx's ASGITransport would join a streamed body into one piece)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        sent = False
        start: dict[str, Any] = {}
        pieces: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                start.update(msg)
            elif msg.get("body"):
                pieces.append(msg["body"])

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
                 "scheme": "http", "path": request.url.path, "raw_path": request.url.raw_path, "query_string": b"",
                 "headers": request.headers.raw, "server": ("engine", 80), "client": ("gw", 1)}
        await ENGINE(scope, receive, send)
        return httpx.Response(start["status"], headers=start["headers"], stream=_PieceStream(pieces))


def _request(tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": tokens, "stream": stream}


async def _one(client: httpx.AsyncClient, tokens: int, stream: bool) -> float:
    t0 = time.perf_counter()
    if stream:
        async with client.stream("POST", "http://api.local/v1/chat/completions", json=_request(tokens, True)) as r:
            n = 0
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    n += 1
            assert r.status_code == 200 and n == tokens, (r.status_code, n)
    else:
        r = await client.post("http://api.local/v1/chat/completions", json=_request(tokens, False))
        assert r.status_code == 200
    return time.perf_counter() - t0


async def measure(client: httpx.AsyncClient, concurrency: int, requests: int, tokens: int, stream: bool) -> tuple[float, float]:
    """(mean latency ms, wall ms per request) for ``requests`` requests at ``concurrency``."""
    for _ in range(min(concurrency, 8)):  # warm-up: connections, imports, key schedule caches
        await _one(client, tokens, stream)
    lat: list[float] = []
    per_task = max(1, requests // concurrency)

    async def task() -> None:
        for _ in range(per_task):
            lat.append(await _one(client, tokens, stream))

    t0 = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return statistics.fmean(lat) * 1e3, wall / len(lat) * 1e3


ClientMaker = Callable[[], Awaitable[httpx.AsyncClient]]


async def run(direct: ClientMaker, gateway: ClientMaker, requests: int, tokens: int, stream: bool) -> list[dict[str, Any]]:
    rows = []
    for c in CONCURRENCY:
        d_client, g_client = await direct(), await gateway()
        d_lat, d_wall = await measure(d_client, c, requests, tokens, stream)
        g_lat, g_wall = await measure(g_client, c, requests, tokens, stream)
        await d_client.aclose()
        await g_client.aclose()
        rows.append({"concurrency": c, "direct_latency_ms": d_lat, "gateway_latency_ms": g_lat,
                     "direct_wall_ms_per_req": d_wall, "gateway_wall_ms_per_req": g_wall,
                     "overhead_latency_ms": g_lat - d_lat, "overhead_wall_ms_per_req": g_wall - d_wall,
                     "ratio_latency": g_lat / d_lat, "ratio_wall": g_wall / d_wall})
    return rows


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    pair = KeyPair.generate(1)
    padding = None if args.padding == "on" else PADDING_OFF
    pad_requests = 256 if args.padding == "on" else None
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    if args.mode == "inproc":
        async def direct() -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=InprocEngine())

        async def gateway() -> httpx.AsyncClient:
            up = httpx.AsyncClient(transport=InprocEngine(), base_url="http://engine")
            app = create_gateway_app(KeyStore([pair]), up, padding=padding)
            t = AsyncOhttpTransport(pair.config, "http://gw", transport=httpx.ASGITransport(app), pad_requests=pad_requests)
            return httpx.AsyncClient(transport=t)

        return await run(direct, gateway, args.requests, args.tokens, not args.no_stream)

    # sockets: the real gateway process (Veil's server limits) in front of the fake engine process
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp:
        with GatewayProcess(Path(tmp), tokens=1 << 20, padding=args.padding) as gw:
            sock = str(Path(tmp) / "engine.sock")

            async def direct() -> httpx.AsyncClient:
                return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=sock, limits=limits))

            async def gateway() -> httpx.AsyncClient:
                outer = httpx.AsyncHTTPTransport(limits=limits)
                t = AsyncOhttpTransport(gw.pair.config, gw.url, transport=outer, pad_requests=pad_requests)
                return httpx.AsyncClient(transport=t)

            return await run(direct, gateway, args.requests, args.tokens, not args.no_stream)


def breakdown(repeat: int = 300) -> dict[str, float]:
    """Microseconds for the cryptographic steps one streamed request pays (same process, no I/O)."""
    import timeit

    from veil.ohttp.chunked import ChunkedRequestReceiver, ChunkedRequestSender
    from veil.ohttp.padding import SsePadder

    pair = KeyPair.generate(1)
    keys = KeyStore([pair])
    tx = ChunkedRequestSender(pair.config)
    wire = tx.header + tx.seal_final(bytes(256))

    def open_request() -> ChunkedRequestReceiver:
        rx = ChunkedRequestReceiver(keys)
        rx.feed(wire)
        rx.close()
        return rx

    sender = open_request().response_sender()
    event = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","choices":[{"delta":{"content":" tok"}}]}\n\n'
    pad = SsePadder(512)

    def us(fn: Callable[[], object], n: int = repeat) -> float:
        return timeit.timeit(fn, number=n) / n * 1e6

    return {
        "client_hpke_setup_us": us(lambda: ChunkedRequestSender(pair.config)),
        "gateway_hpke_open_us": us(open_request),
        "seal_512B_chunk_us": us(lambda: sender.seal_chunk(bytes(512)), repeat * 10),
        "pad_one_event_us": us(lambda: pad.feed(event), repeat * 10),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("inproc", "sockets"), default="inproc")
    ap.add_argument("--requests", type=int, default=128, help="measured requests per concurrency level")
    ap.add_argument("--tokens", type=int, default=16, help="SSE events per streamed answer")
    ap.add_argument("--no-stream", action="store_true", help="non-streamed (JSON) answers instead")
    ap.add_argument("--padding", choices=("on", "off"), default="on")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args()
    rows = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps({"mode": args.mode, "padding": args.padding, "rows": rows, "crypto_us": breakdown()}))
        return
    kind = "non-streamed" if args.no_stream else f"streamed, {args.tokens} events"
    print(f"gateway overhead — mode={args.mode}, padding={args.padding}, {kind}, {args.requests} requests/level")
    print(f"{'conc':>4} {'direct lat':>11} {'gw lat':>9} {'+ms/req lat':>12} {'direct wall':>12} {'gw wall':>9} {'+ms/req wall':>13} {'ratio':>6}")
    for r in rows:
        print(f"{r['concurrency']:>4} {r['direct_latency_ms']:>9.2f}ms {r['gateway_latency_ms']:>7.2f}ms "
              f"{r['overhead_latency_ms']:>10.2f}ms {r['direct_wall_ms_per_req']:>10.3f}ms {r['gateway_wall_ms_per_req']:>7.3f}ms "
              f"{r['overhead_wall_ms_per_req']:>11.3f}ms {r['ratio_wall']:>5.2f}x")
    print("lat = mean request latency; wall = elapsed time / requests (CPU cost per request when saturated)")
    print("crypto per request (us): " + ", ".join(f"{k}={v:.1f}" for k, v in breakdown().items()))


if __name__ == "__main__":
    main()
