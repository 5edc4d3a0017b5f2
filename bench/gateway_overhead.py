"""The OHTTP gateway's own cost: CPU per streamed event and per request, and latency it adds.

The real gateway process (veil.testing's GatewayProcess: uvicorn with Veil's server limits, the
pipeline, EngineLink to the engine) in front of veil.testing's FAKE engine (no model, canned
tokens, optionally paced at ``--rate`` events per second per stream). Two paths, same engine:

* direct:  load ──HTTP/1.1 over the engine's Unix socket──▶ engine
* gateway: load ──chunked OHTTP over TCP──▶ gateway (open, admit, forward, pad, seal) ──▶ engine

Gateway CPU is read from the kernel (``/proc/<pid>/task/*/schedstat``: on-CPU nanoseconds of every
gateway process, not of the engine or of this script), so it is the gateway's own work however
loaded the machine is. The load generator is lean (EngineLink: llhttp parsing, pre-encrypted
requests, answers counted but not decrypted) so it does not hide the gateway; one request per run
goes through Veil's real client transport and is checked in full.

* **CPU per event and per request**: streams of 1 and of ``1 + --tokens`` events from a paced
  engine, 16 at a time, through one gateway process (the code path's own cost) and through
  ``--processes`` (``with_processes``: each process then sees fewer streams per wake-up); the difference per added event is ``us_per_event``, the 1-event cost
  ``ms_per_request`` (HPKE open, admission, the engine hop, head and final chunk). At ``--rate``
  (500 events/s per stream) events 2 ms apart share the gateway's 5 ms coalescing tick; at
  ``--slow-rate`` (100/s, 10 ms apart) every event goes on alone, the gateway's worst case:
  ``us_per_event_one_by_one``.
* **Latency added**: whole answers from an engine paced at ``--latency-rate`` (as a GPU serving
  many streams gives each) at concurrency 1, 8, 64 and 256, direct and through the gateway
  interleaved in rounds; ``p99_added_ms_64`` = p99(gateway) - p99(direct) at 64. Streams arrive
  steadily (stream i starts i/c of one answer's duration in, as streams come and go on a serving
  GPU); ``p99_added_ms_64_burst`` is the same with all 64 starting at once, which queues 64 fixed
  per-request costs behind each other.
* **Throughput**: unpaced engine at 64 and 256 streams: events per second through the gateway with
  ``--processes`` processes and with one, interleaved (``events_per_s``, all processes together,
  and ``events_per_s_one_process``), straight to the engine, and the gateway CPU per event at that
  load. The load generator, the engine and the gateway share this machine's cores.

The latency gateway runs ``--processes`` processes (``veil.worker.pool``, SO_REUSEPORT on one port).

    python bench/gateway_overhead.py                   # text
    python bench/gateway_overhead.py --processes 2 --json  # ... and one JSON object on the last line
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from veil.ohttp import bhttp  # noqa: E402
from veil.ohttp.chunked import ChunkedRequestSender  # noqa: E402
from veil.ohttp.keyconfig import KeyConfig  # noqa: E402
from veil.ohttp.padding import pad_message  # noqa: E402
from veil.testing import GatewayProcess  # noqa: E402
from veil.wire import GATEWAY_PATH, MEDIA_TYPE_CHUNKED_REQUEST  # noqa: E402
from veil.worker.engine_link import DEFAULT_COALESCE, EngineLink  # noqa: E402

CONCURRENCY = (1, 8, 64, 256)
CHAT_PATH = "/v1/chat/completions"


def _chat(tokens: int) -> bytes:
    return json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": tokens, "stream": True}
    ).encode()


def _sealed(config: KeyConfig, tokens: int) -> bytes:
    """One chunked-OHTTP request as Veil's client sends it (padded to 256 bytes, fresh HPKE key)."""
    inner = bhttp.encode_request(
        bhttp.Request("POST", "https", "api", CHAT_PATH, [("content-type", "application/json")], _chat(tokens))
    )
    tx = ChunkedRequestSender(config)
    return tx.header + tx.seal_final(pad_message(inner, 256))


def cpu_seconds(pids: list[int]) -> float:
    """On-CPU time of every thread of ``pids`` (ns precision, from the scheduler's accounting)."""
    total = 0
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    return total / 1e9


class Load:
    """Streams at a fixed concurrency through one target; latencies of whole answers."""

    def __init__(self, link: EngineLink, gateway: KeyConfig | None) -> None:
        self.link = link
        self.config = gateway  # None: the direct path (plain JSON to the engine)

    async def _one(self, body: bytes) -> tuple[float, int]:
        headers = {"content-type": MEDIA_TYPE_CHUNKED_REQUEST if self.config else "application/json"}
        req = httpx.Request("POST", "http://bench" + (GATEWAY_PATH if self.config else CHAT_PATH), headers=headers, content=body)
        t0 = time.perf_counter()
        resp = await self.link.handle_async_request(req)
        size = 0
        stream = resp.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        async for piece in stream:
            size += len(piece)
        await stream.aclose()
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}")
        return time.perf_counter() - t0, size

    async def run(self, concurrency: int, requests: int, tokens: int, spread: float = 0.0) -> tuple[list[float], float]:
        """``spread`` > 0: stream i starts ``i / concurrency × spread`` seconds in (steady arrivals,
        as streams come and go on a serving GPU); 0: all start at once (a synchronised burst)."""
        bodies = [_sealed(self.config, tokens) if self.config else _chat(tokens) for _ in range(requests)]
        lat: list[float] = []

        async def task(i: int, mine: list[bytes]) -> None:
            await asyncio.sleep(i / concurrency * spread)
            for b in mine:
                lat.append((await self._one(b))[0])

        t0 = time.perf_counter()
        await asyncio.gather(*(task(i, bodies[i::concurrency]) for i in range(concurrency)))
        return lat, time.perf_counter() - t0


def p99(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[98] if len(xs) > 1 else xs[0]


async def _cpu_per_request(gw: GatewayProcess, load: Load, tokens: int, requests: int) -> float:
    pids = gw.gateway_pids()
    c0 = cpu_seconds(pids)
    await load.run(16, requests, tokens)
    return (cpu_seconds(pids) - c0) / requests


def _through(gw: GatewayProcess) -> Load:
    return Load(EngineLink(("127.0.0.1", gw.port), coalesce=0), gw.pair.config)


async def cpu_costs(gateways: list[GatewayProcess], args: argparse.Namespace) -> list[dict[str, float]]:
    """Gateway CPU per event and per request for each gateway, measured in interleaved rounds."""
    loads = [_through(gw) for gw in gateways]
    for load in loads:
        await load.run(8, 16, 4)  # warm-up: connections, imports, key schedules
    short: list[list[float]] = [[] for _ in gateways]
    long_: list[list[float]] = [[] for _ in gateways]
    for _ in range(args.rounds):  # interleaved, so every gateway sees the same machine
        for i, (gw, load) in enumerate(zip(gateways, loads)):
            short[i].append(await _cpu_per_request(gw, load, 1, args.requests))
            long_[i].append(await _cpu_per_request(gw, load, 1 + args.tokens, args.requests))
    out = []
    for s_, l_ in zip(short, long_):
        per_request, per_long = statistics.median(s_), statistics.median(l_)
        out.append({"us_per_event": (per_long - per_request) / args.tokens * 1e6, "ms_per_request": per_request * 1e3})
    for load in loads:
        await load.link.aclose()
    return out


async def latency(gw: GatewayProcess, args: argparse.Namespace) -> dict[str, Any]:
    direct, through = Load(EngineLink(gw.engine_socket, coalesce=0), None), _through(gw)
    await through.run(8, 16, 4)
    await direct.run(8, 16, 4)
    out: dict[str, Any] = {}
    rows = []
    answer_s = args.tokens / args.latency_rate  # one answer's duration from the paced engine
    for c, spread in [(c, answer_s) for c in CONCURRENCY] + [(64, 0.0)]:
        n = max(c, min(args.requests, 4 * c))
        d_lat: list[float] = []
        g_lat: list[float] = []
        for _ in range(args.rounds):
            d_lat += (await direct.run(c, n, args.tokens, spread))[0]
            g_lat += (await through.run(c, n, args.tokens, spread))[0]
        rows.append(
            {
                "concurrency": c,
                "arrivals": "steady" if spread else "burst",
                "direct_p50_ms": statistics.median(d_lat) * 1e3,
                "gateway_p50_ms": statistics.median(g_lat) * 1e3,
                "direct_p99_ms": p99(d_lat) * 1e3,
                "gateway_p99_ms": p99(g_lat) * 1e3,
                "added_p50_ms": (statistics.median(g_lat) - statistics.median(d_lat)) * 1e3,
                "added_p99_ms": (p99(g_lat) - p99(d_lat)) * 1e3,
            }
        )
    out["latency"] = rows
    out["p99_added_ms_64"] = next(r["added_p99_ms"] for r in rows if r["concurrency"] == 64 and r["arrivals"] == "steady")
    out["p99_added_ms_64_burst"] = next(r["added_p99_ms"] for r in rows if r["arrivals"] == "burst")
    await direct.link.aclose()
    await through.link.aclose()
    return out


async def unpaced(gateways: dict[int, GatewayProcess], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Events per second at 64 and 256 streams through each gateway (keyed by its process count)
    and straight to the engine, interleaved."""
    loads = {n: _through(gw) for n, gw in gateways.items()}
    any_gw = next(iter(gateways.values()))
    direct = Load(EngineLink(any_gw.engine_socket, coalesce=0), None)
    for load in loads.values():
        await load.run(8, 16, 4)
    rows = []
    for c in (64, 256):
        n = max(c, args.requests * 2)
        _, d_wall = await direct.run(c, n, args.tokens)
        row: dict[str, Any] = {"concurrency": c, "direct_events_per_s": n * args.tokens / d_wall}
        for procs, gw in gateways.items():
            pids = gw.gateway_pids()
            c0 = cpu_seconds(pids)
            _, g_wall = await loads[procs].run(c, n, args.tokens)
            cpu = cpu_seconds(pids) - c0
            events = n * args.tokens
            row[f"events_per_s_{procs}p"] = events / g_wall
            row[f"gateway_cpu_us_per_event_{procs}p"] = cpu / events * 1e6
            row[f"gateway_cores_busy_{procs}p"] = cpu / g_wall
        rows.append(row)
    await direct.link.aclose()
    for load in loads.values():
        await load.link.aclose()
    return rows


def reference(repeat: int = 20000) -> dict[str, float]:
    """The machine's speed now (it is shared): the AEAD seal every streamed chunk pays, best of 5."""
    import timeit

    from veil.ohttp.chunked import ChunkedRequestReceiver
    from veil.ohttp.keyconfig import KeyPair, KeyStore

    pair = KeyPair.generate(1)
    rx = ChunkedRequestReceiver(KeyStore([pair]))
    rx.feed(_sealed(pair.config, 1))
    rx.close()
    sender, chunk = rx.response_sender(), bytes(512)
    best = min(timeit.repeat(lambda: sender.seal_chunk(chunk), number=repeat // 5, repeat=5))
    return {"seal_512B_us": best / (repeat // 5) * 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=128, help="requests per measurement")
    ap.add_argument("--tokens", type=int, default=32, help="events per streamed answer")
    ap.add_argument("--rate", type=float, default=500.0, help="engine for the CPU figures: events per second per stream")
    ap.add_argument(
        "--slow-rate", type=float, default=100.0, help="engine for the one-by-one CPU figure: events per second per stream"
    )
    ap.add_argument(
        "--latency-rate",
        type=float,
        default=50.0,
        help="engine for the latency figures: events per second per stream (a GPU serving many streams)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement")
    ap.add_argument("--padding", choices=("on", "off"), default="on")
    ap.add_argument(
        "--processes", type=int, default=len(os.sched_getaffinity(0)), help="gateway processes (default: one per core)"
    )
    ap.add_argument(
        "--baseline",
        metavar="SRC",
        help="also measure the gateway of another checkout's src/ (e.g. an older commit's), interleaved: CPU ratios in one run",
    )
    ap.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    args = ap.parse_args()
    load0 = os.getloadavg()[0]
    procs = args.processes
    with tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp:
        opts: dict[str, Any] = {"tokens": 1 << 20, "padding": args.padding, "processes": procs}
        one = {**opts, "processes": 1}
        with (
            GatewayProcess(Path(tmp) / "paced", rate=args.rate, **one) as gw,
            GatewayProcess(Path(tmp) / "slow", rate=args.slow_rate, **one) as slow,
            GatewayProcess(Path(tmp) / "pacedN", rate=args.rate, **opts) as gw_n,
        ):
            gw.victim()  # one answer through Veil's own client transport, decrypted and checked
            gw_n.victim()
            gateways = [gw, slow, gw_n]
            if args.baseline:
                os.environ["PYTHONPATH"] = str(Path(args.baseline).resolve())  # the baseline's child imports its veil
                try:
                    gateways.append(GatewayProcess(Path(tmp) / "baseline", tokens=1 << 20, padding=args.padding, rate=args.rate))
                finally:
                    del os.environ["PYTHONPATH"]
            try:
                costs = asyncio.run(cpu_costs(gateways, args))
            finally:
                for g in gateways[3:]:
                    g.stop()
            result: dict[str, Any] = dict(costs[0])  # one process: the code path's own cost
            result["us_per_event_one_by_one"] = costs[1]["us_per_event"]
            result["with_processes"] = costs[2]  # the same load spread over --processes processes
            if args.baseline:
                result["baseline"] = {**costs[3], "src": args.baseline, "processes": 1}
        with GatewayProcess(Path(tmp) / "latency", rate=args.latency_rate, **opts) as gw:
            result.update(asyncio.run(latency(gw, args)))
        unpaced_opts = {"tokens": 1 << 20, "padding": args.padding}
        with (
            GatewayProcess(Path(tmp) / "unpaced", processes=procs, **unpaced_opts) as many,
            GatewayProcess(Path(tmp) / "unpaced1", processes=1, **unpaced_opts) as one,
        ):
            result["throughput"] = asyncio.run(unpaced({procs: many, 1: one} if procs != 1 else {1: one}, args))
    result["events_per_s"] = max(r[f"events_per_s_{procs}p"] for r in result["throughput"])
    result["events_per_s_one_process"] = max(r["events_per_s_1p"] for r in result["throughput"])
    result.update(
        processes=procs,
        padding=args.padding,
        tokens=args.tokens,
        rate=args.rate,
        slow_rate=args.slow_rate,
        latency_rate=args.latency_rate,
        coalesce_ms=DEFAULT_COALESCE * 1e3,
        reference=reference(),
        cpus=os.cpu_count(),
        load_average=[round(load0, 2), round(os.getloadavg()[0], 2)],
    )
    print(
        f"gateway overhead — {procs} gateway process(es), padding {args.padding}, load average "
        f"{load0:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; this machine now: sealing a 512-byte chunk "
        f"{result['reference']['seal_512B_us']:.1f} µs (idle: about 2.4)"
    )
    print(
        f"gateway CPU: {result['us_per_event']:.1f} µs per streamed event at {args.rate:g}/s per stream (coalesced on the "
        f"{DEFAULT_COALESCE * 1e3:g} ms tick), {result['us_per_event_one_by_one']:.1f} µs one by one ({args.slow_rate:g}/s); "
        f"{result['ms_per_request']:.3f} ms per request (HPKE, admission, engine hop, head, end); one process. "
        f"Spread over {procs}: {result['with_processes']['us_per_event']:.1f} µs per event, "
        f"{result['with_processes']['ms_per_request']:.3f} ms per request"
    )
    if args.baseline:
        b = result["baseline"]
        print(
            f"baseline ({args.baseline}, one process), same rounds: {b['us_per_event']:.1f} µs per event, "
            f"{b['ms_per_request']:.3f} ms per request — ratio now/baseline {result['us_per_event'] / b['us_per_event']:.2f} "
            f"per event, {result['ms_per_request'] / b['ms_per_request']:.2f} per request"
        )
    print(f"latency of whole {args.tokens}-event answers, engine at {args.latency_rate:g} events/s per stream:")
    print(
        f"{'conc':>5} {'arrivals':>8} {'direct p50':>11} {'gw p50':>9} {'direct p99':>11} {'gw p99':>9} {'added p50':>10} {'added p99':>10}"
    )
    for r in result["latency"]:
        print(
            f"{r['concurrency']:>5} {r['arrivals']:>8} {r['direct_p50_ms']:>9.2f}ms {r['gateway_p50_ms']:>7.2f}ms {r['direct_p99_ms']:>9.2f}ms "
            f"{r['gateway_p99_ms']:>7.2f}ms {r['added_p50_ms']:>8.2f}ms {r['added_p99_ms']:>8.2f}ms"
        )
    for r in result["throughput"]:
        ways = ", ".join(
            f"{n} process(es) {r[f'events_per_s_{n}p']:,.0f} events/s ({r[f'gateway_cpu_us_per_event_{n}p']:.1f} µs/event, "
            f"{r[f'gateway_cores_busy_{n}p']:.2f} cores)"
            for n in sorted({procs, 1})
        )
        print(
            f"unpaced, {r['concurrency']} streams: direct {r['direct_events_per_s']:,.0f} events/s; through the gateway: {ways}"
        )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
