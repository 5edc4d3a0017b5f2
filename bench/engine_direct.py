"""Tokens/s and time-to-first-token of an OpenAI-compatible streaming endpoint.

The baseline for Veil's "encrypted streaming keeps >= 98 % of plaintext tokens/s" figure: run the
same prompts straight at the engine's Unix socket here, and through the gateway in the end-to-end
bench, with ``measure_stream`` (any httpx client) or ``measure_chunks`` (any chunk source, e.g. an
OHTTP client that yields decrypted chunk dicts).

    python bench/engine_direct.py                    # starts its own engine (SmolLM2, CPU)
    python bench/engine_direct.py --socket /run/veil/engine.sock --max-tokens 64 --repeat 2
    python bench/engine_direct.py --base-url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

#: A fixed prompt set: open-ended, so the small model rarely stops before max_tokens.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain step by step how a bicycle works, for a ten-year-old.",
    "List twenty fruits and one fact about each.",
    "Describe a walk through a busy market in a city by the sea.",
    "Write a letter to a friend about learning to cook.",
)

ChunkSource = Callable[[str, int], AsyncIterator[dict[str, Any]]]
ClientFactory = Callable[[], "httpx.AsyncClient | Awaitable[httpx.AsyncClient]"]


def chat_request(prompt: str, max_tokens: int) -> dict[str, Any]:
    """The streaming request every run sends: greedy and seeded, so runs produce the same tokens."""
    return {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 1,
        "stream": True,
    }


async def sse_chunks(
    client: httpx.AsyncClient, prompt: str, max_tokens: int, path: str = "/v1/chat/completions"
) -> AsyncIterator[dict[str, Any]]:
    """POST one streaming chat request and yield its JSON chunks as they arrive."""
    async with client.stream("POST", path, json=chat_request(prompt, max_tokens)) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[len("data: ") :]
            if data == "[DONE]":
                return
            yield json.loads(data)


def _has_token(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices", ()):
        if (choice.get("delta") or {}).get("content") or choice.get("text"):
            return True
    return False


async def measure_one(source: ChunkSource, prompt: str, max_tokens: int) -> dict[str, float]:
    """Time one streamed request: TTFT, content chunks (~tokens) and decode rate."""
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async for chunk in source(prompt, max_tokens):
        if _has_token(chunk):
            now = time.perf_counter()
            first = first if first is not None else now
            last = now
            tokens += 1
    end = time.perf_counter()
    if first is None or last is None:
        raise RuntimeError("the stream carried no tokens")
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return {"ttft_s": first - start, "tokens": tokens, "total_s": end - start, "decode_tps": decode}


async def measure_chunks(
    source: ChunkSource,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_tokens: int = 64,
    repeat: int = 1,
    warmup: int = 1,
) -> dict[str, Any]:
    """Run the prompts one after another (no concurrency, for stable ratios) and aggregate."""
    for _ in range(warmup):
        await measure_one(source, prompts[0], min(max_tokens, 8))
    runs = [await measure_one(source, p, max_tokens) for _ in range(repeat) for p in prompts]
    ttfts = sorted(r["ttft_s"] for r in runs)
    tokens = sum(r["tokens"] for r in runs)
    wall = sum(r["total_s"] for r in runs)
    return {
        "requests": len(runs),
        "max_tokens": max_tokens,
        "tokens": int(tokens),
        "tokens_per_s": tokens / wall,  # end to end, TTFT included
        "decode_tokens_per_s": statistics.fmean(r["decode_tps"] for r in runs),
        # Medians over requests resist a noisy neighbour stealing the CPU for one request.
        "tokens_per_s_median": statistics.median(r["tokens"] / r["total_s"] for r in runs),
        "decode_tokens_per_s_median": statistics.median(r["decode_tps"] for r in runs),
        "ttft_ms_mean": 1000 * statistics.fmean(ttfts),
        "ttft_ms_median": 1000 * statistics.median(ttfts),
        "ttft_ms_p95": 1000 * ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        "wall_s": wall,
    }


async def measure_stream(
    client_factory: ClientFactory,
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    max_tokens: int = 64,
    *,
    repeat: int = 1,
    path: str = "/v1/chat/completions",
) -> dict[str, Any]:
    """Measure any OpenAI-compatible server reachable through an httpx client.

    ``client_factory`` returns (or returns an awaitable of) an ``httpx.AsyncClient`` whose
    base_url is the server root, e.g. ``lambda: veil.engines.launcher.engine_client(sock)`` or
    ``lambda: httpx.AsyncClient(base_url="http://127.0.0.1:8000")``.
    """
    made = client_factory()
    client = await made if inspect.isawaitable(made) else made
    async with client:
        return await measure_chunks(lambda p, n: sse_chunks(client, p, n, path), prompts, max_tokens, repeat)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    from veil.engines.launcher import EngineProcess, engine_client

    if args.base_url:
        return await measure_stream(
            lambda: httpx.AsyncClient(base_url=args.base_url, timeout=300),
            max_tokens=args.max_tokens,
            repeat=args.repeat,
        )
    if args.socket:
        return await measure_stream(lambda: engine_client(args.socket), max_tokens=args.max_tokens, repeat=args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        engine = EngineProcess(Path(tmp) / "engine.sock", threads=args.threads, n_ctx=2048)
        async with engine:
            result = await measure_stream(
                lambda: engine_client(engine.socket_path),
                max_tokens=args.max_tokens,
                repeat=args.repeat,
            )
        result["engine"] = {"threads": args.threads, "model": "SmolLM2-135M-Instruct Q4_1"}
        return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--socket", help="an already running engine's Unix socket")
    target.add_argument("--base-url", help="any OpenAI-compatible server root over TCP")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="engine threads when we start one")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line (always JSON; indented without)")
    args = p.parse_args(argv)
    result = asyncio.run(_main(args))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
