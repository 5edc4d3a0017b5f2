"""Load through HAProxy: concurrent encrypted clients for a fixed time against 1 and 3 workers.

Three set-ups, measured in one run and interleaved (round-robin slices, so the machine's state
drifts over all of them alike):

* direct:    clients ──OHTTP──▶ 1 worker
* lb-1:      clients ──OHTTP──▶ HAProxy (deploy/haproxy/balancer.cfg) ──▶ 1 worker
* lb-3:      clients ──OHTTP──▶ HAProxy ──▶ 3 workers (least connections)

A worker here is the real OHTTP gateway (Veil's server limits) in its own process in front of the
FAKE engine of veil.testing in another (``--tokens`` SSE events per streamed answer, as fast as it
can): the figures are those of the request path and the balancer, not of a model.
Registration is not on the request path and is left out. Every request is a streamed chat
completion, encrypted and decrypted by the real client transport (chunked OHTTP).

Loopback only, bounded: each set-up runs ``--seconds`` in total with ``--clients`` concurrent
clients, and at most ``--max-requests`` requests; then everything stops. Printed per set-up:
requests/s, p50/p99 latency, errors (must be 0: every worker is up), and the balancer's added
cost (lb-1 against direct). On this 2-core machine the clients, HAProxy and the workers share the
same cores, so lb-3 measures spreading, not more hardware.

    python bench/load.py                 # 3 x 6 s, 16 clients
    python bench/load.py --seconds 10 --clients 32 --json
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from veil.balancer import Backend, HAProxy, render  # noqa: E402
from veil.client.transport import AsyncOhttpTransport  # noqa: E402
from veil.ohttp.keyconfig import KeyPair  # noqa: E402
from veil.testing import GatewayProcess, free_port  # noqa: E402

SLICES = 6  # each set-up's time is cut into this many interleaved slices


def _start_workers(n: int, pair: KeyPair, tokens: int) -> list[GatewayProcess]:
    """``n`` workers sharing one OHTTP key pair, as replicas behind a balancer do."""
    return [
        GatewayProcess(Path(tempfile.mkdtemp(prefix="veil-load-worker-")), pair=pair, tokens=tokens, max_connections=4096)
        for _ in range(n)
    ]


def _request(tokens: int) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": tokens, "stream": True}


async def _one(client: httpx.AsyncClient, tokens: int) -> None:
    async with client.stream("POST", "http://api.local/v1/chat/completions", json=_request(tokens)) as r:
        events = 0
        async for line in r.aiter_lines():
            events += line.startswith("data: {")
        if r.status_code != 200 or events != tokens:
            raise RuntimeError(f"status {r.status_code}, {events}/{tokens} events")


async def _slice(
    client: httpx.AsyncClient, clients: int, seconds: float, budget: int, tokens: int, latencies: list[float], errors: list[str]
) -> int:
    """``clients`` concurrent loops for ``seconds`` (or ``budget`` requests); returns requests done."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline and done < budget:
            done += 1
            t0 = time.perf_counter()
            try:
                await _one(client, tokens)
                latencies.append(time.perf_counter() - t0)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(loop() for _ in range(clients)))
    return done


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def run(args: argparse.Namespace, targets: dict[str, str], config: Any) -> dict[str, dict[str, Any]]:
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    clients = {
        name: httpx.AsyncClient(
            transport=AsyncOhttpTransport(config, url, transport=httpx.AsyncHTTPTransport(limits=limits)), timeout=30
        )
        for name, url in targets.items()
    }
    lat: dict[str, list[float]] = {n: [] for n in targets}
    err: dict[str, list[str]] = {n: [] for n in targets}
    elapsed = {n: 0.0 for n in targets}
    for name, client in clients.items():  # warm-up: connections, key schedules
        await asyncio.gather(*(_one(client, args.tokens) for _ in range(args.clients)))
    budget = args.max_requests // SLICES
    for _ in range(SLICES):
        for name, client in clients.items():
            t0 = time.perf_counter()
            await _slice(client, args.clients, args.seconds / SLICES, budget, args.tokens, lat[name], err[name])
            elapsed[name] += time.perf_counter() - t0
    for client in clients.values():
        await client.aclose()
    return {
        name: {
            "requests": len(lat[name]) + len(err[name]),
            "requests_per_s": round(len(lat[name]) / elapsed[name], 1),
            "p50_ms": round(_percentile(lat[name], 0.50) * 1e3, 2),
            "p99_ms": round(_percentile(lat[name], 0.99) * 1e3, 2),
            "mean_ms": round(statistics.fmean(lat[name]) * 1e3, 2) if lat[name] else None,
            "errors": len(err[name]),
            "first_errors": err[name][:3],
        }
        for name in targets
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=6.0, help="time per set-up (split into interleaved slices)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--tokens", type=int, default=16, help="SSE events per streamed answer")
    parser.add_argument("--max-requests", type=int, default=200_000, help="cap per set-up")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()

    pair = KeyPair.generate(1)
    workers: list[GatewayProcess] = []
    balancers: list[HAProxy] = []
    try:
        one = _start_workers(1, pair, args.tokens)
        three = _start_workers(3, pair, args.tokens)
        workers = one + three
        targets = {"direct": one[0].url}
        for name, group in (("lb-1", one), ("lb-3", three)):
            ports = [w.port for w in group]
            bind = f"127.0.0.1:{free_port()}"
            lb = HAProxy(
                render("balancer.cfg", [Backend("gateways", "worker", [f"127.0.0.1:{p}" for p in ports])]),
                {"VEIL_GATEWAY_BIND": bind},
                Path(tempfile.mkdtemp(prefix=f"veil-load-{name}-")),
            )
            lb.start([bind])
            balancers.append(lb)
            targets[name] = f"http://{bind}"
        results = asyncio.run(run(args, targets, pair.config))
    finally:
        for lb in balancers:
            lb.stop()
        for w in workers:
            w.stop()

    d, l1, l3 = results["direct"], results["lb-1"], results["lb-3"]
    summary = {
        "clients": args.clients,
        "seconds_per_setup": args.seconds,
        "tokens": args.tokens,
        "cores": os.cpu_count(),
        "setups": results,
        "lb_added_p50_ms": round(l1["p50_ms"] - d["p50_ms"], 2),
        "lb_added_p99_ms": round(l1["p99_ms"] - d["p99_ms"], 2),
        "lb1_over_direct_rps": round(l1["requests_per_s"] / d["requests_per_s"], 3),
        "lb3_over_lb1_rps": round(l3["requests_per_s"] / l1["requests_per_s"], 3),
        "errors": d["errors"] + l1["errors"] + l3["errors"],
    }
    print(
        f"{args.clients} concurrent clients, {args.seconds:.0f} s per set-up, {args.tokens} events per streamed answer, "
        f"{os.cpu_count()} cores shared by clients, HAProxy and workers"
    )
    print(f"{'set-up':<8} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(f"{name:<8} {r['requests']:>9} {r['requests_per_s']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['errors']:>7}")
        for e in r["first_errors"]:
            print(f"         error: {e}")
    print(
        f"HAProxy adds {summary['lb_added_p50_ms']} ms at p50, {summary['lb_added_p99_ms']} ms at p99 "
        f"(lb-1 / direct throughput {summary['lb1_over_direct_rps']}); 3 workers / 1 behind HAProxy: "
        f"{summary['lb3_over_lb1_rps']}x requests/s"
    )
    if args.json:
        print(json.dumps(summary))
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
