"""Tokens/s and time to first token through Veil against the same engine served directly.

One run starts a real `veil up` deployment (sim-snp, sealed weights, bubblewrap sandbox) and an
unsandboxed engine on the same weights, then streams the same greedy, seeded prompts through:
  direct       the deployment's own engine, straight over its Unix socket (no encryption)
  veil         the same engine through OHTTP: client encryption -> gateway -> engine -> chunked response
  unsandboxed  a second engine process without the sandbox
Requests are interleaved (direct, veil, unsandboxed for each prompt) so that a noisy neighbour
hits all three alike. Goals: veil/direct >= 0.99 of tokens/s; the sandbox costs ~nothing.

    .venv/bin/python bench/e2e_tokens.py [--max-tokens 64] [--repeat 2] [--gateway-processes 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_direct import DEFAULT_PROMPTS, measure_one, sse_chunks  # noqa: E402

from veil.client.policy import ClientPolicy  # noqa: E402
from veil.client.transport import AsyncOhttpTransport  # noqa: E402
from veil.client.verify import verify_coordinator  # noqa: E402
from veil.engines.launcher import EngineProcess, engine_client  # noqa: E402
from veil.localdeploy import LocalDeployment  # noqa: E402
from veil.testing import free_port  # noqa: E402


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    return {
        "requests": len(runs),
        "tokens_per_s_median": statistics.median(r["tokens"] / r["total_s"] for r in runs),
        "decode_tokens_per_s_median": statistics.median(r["decode_tps"] for r in runs),
        "ttft_ms_median": 1000 * statistics.median(r["ttft_s"] for r in runs),
    }


async def measure(max_tokens: int, repeat: int, sandbox: str, gateway_processes: int = 1) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        dep = LocalDeployment(
            Path(tmp) / "state",
            coordinator_port=free_port(),
            worker_port=free_port(),
            sandbox=sandbox,
            gateway_processes=gateway_processes,
        )
        dep.start()
        try:
            attested = verify_coordinator(ClientPolicy.load(dep.policy_path))
            veil = httpx.AsyncClient(
                transport=AsyncOhttpTransport(attested.key_config, dep.gateway_url),
                base_url=dep.gateway_url,
                timeout=300,
            )
            # The worker keeps the engine's socket on a tmpfs in its own mount namespace: reach it
            # through the worker's root (/proc/PID/root resolves paths in that namespace).
            worker = dep.processes[-1]
            direct = await engine_client(f"/proc/{worker.pid}/root{dep.state_dir / 'run' / 'engine.sock'}")
            plain_engine = EngineProcess(Path(tmp) / "plain.sock", dep.model_path, model_id="smollm2-135m-instruct")
            async with plain_engine, veil, direct:
                unsandboxed = await engine_client(plain_engine.socket_path)
                async with unsandboxed:
                    sources = {
                        name: (lambda c: lambda p, n: sse_chunks(c, p, n))(client)
                        for name, client in (("direct", direct), ("veil", veil), ("unsandboxed", unsandboxed))
                    }
                    for src in sources.values():  # warm-up: first requests pay for caches
                        await measure_one(src, DEFAULT_PROMPTS[0], 8)
                    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
                    for _ in range(repeat):
                        for prompt in DEFAULT_PROMPTS:
                            for name, src in sources.items():
                                # A unique opening defeats llama.cpp's reuse of the previous
                                # request's KV cache, which would favour whichever path runs second.
                                unique = f"(request {uuid.uuid4().hex[:8]}) {prompt}"
                                runs[name].append(await measure_one(src, unique, max_tokens))
        finally:
            dep.stop()
    result = {name: summarise(r) for name, r in runs.items()}
    d, v, u = result["direct"], result["veil"], result["unsandboxed"]
    result["ratios"] = {
        "veil_over_direct_tokens_per_s": v["tokens_per_s_median"] / d["tokens_per_s_median"],
        "veil_over_direct_decode_tokens_per_s": v["decode_tokens_per_s_median"] / d["decode_tokens_per_s_median"],
        "veil_minus_direct_ttft_ms": v["ttft_ms_median"] - d["ttft_ms_median"],
        "sandboxed_over_unsandboxed_tokens_per_s": d["tokens_per_s_median"] / u["tokens_per_s_median"],
    }
    result["setup"] = {
        "max_tokens": max_tokens,
        "repeat": repeat,
        "prompts": len(DEFAULT_PROMPTS),
        "sandbox": sandbox,
        "gateway_processes": gateway_processes,
    }
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--sandbox", default="bubblewrap")
    p.add_argument("--gateway-processes", type=int, default=1, help="the worker's gateway processes (0: one per core)")
    p.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    args = p.parse_args()
    load0 = os.getloadavg()[0]
    result = asyncio.run(measure(args.max_tokens, args.repeat, args.sandbox, args.gateway_processes))
    result["load_average"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    print(f"SmolLM2-135M Q4_1, {result['setup']}")
    for name in ("direct", "veil", "unsandboxed"):
        r = result[name]
        print(
            f"  {name:12s} {r['tokens_per_s_median']:7.1f} tok/s end to end, "
            f"{r['decode_tokens_per_s_median']:7.1f} tok/s decode, TTFT {r['ttft_ms_median']:6.1f} ms"
        )
    ratios = result["ratios"]
    print(f"  veil / direct tokens/s:        {ratios['veil_over_direct_tokens_per_s']:.3f}  (goal >= 0.99)")
    print(f"  veil / direct decode tokens/s: {ratios['veil_over_direct_decode_tokens_per_s']:.3f}")
    print(f"  veil - direct TTFT:            {ratios['veil_minus_direct_ttft_ms']:+.1f} ms")
    print(f"  sandboxed / unsandboxed:       {ratios['sandboxed_over_unsandboxed_tokens_per_s']:.3f}")
    print(f"  load average {result['load_average'][0]:.1f} -> {result['load_average'][1]:.1f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
