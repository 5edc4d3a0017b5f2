"""Client session set-ups at scale, with and without batched attestation.

A coordinator whose attester costs what a security processor does (``--report-ms``, 5 ms by
default, one report at a time: veil.testing.SerializedAttester around the real sim-snp attester)
serves 1, 100 and 1000 clients that start a session at the same moment. A set-up is what a
client does before it may send anything: fetch the attestation with a fresh nonce and verify it
(evidence, chain, report_data binding, manifest pin). Two coordinators run side by side in their
own processes, measured interleaved:

* unbatched: one report per client (report_data binds the client's nonce);
* batched:   one report per batch of the nonces that arrived meanwhile, each client checking its
             Merkle inclusion path (coordinator/batching.py, veil.attest.nonce_tree).

Each client verifies on its own machine in reality, so here the fetches run concurrently and
timed, and every answer is then verified against its own nonce (all must pass) outside the
timed window; a set-up's latency is its fetch plus the median verification time measured, and
set-ups per second are counted over the fetch window (the coordinator's capacity; one client
process on 2 shared cores could not verify 1000 answers as fast as 1000 machines do). Printed per
mode and concurrency: set-ups per second, p50/p99 set-up latency, reports made. Loopback only;
every level runs a fixed number of set-ups and stops.

    python bench/attestation_scale.py
    python bench/attestation_scale.py --report-ms 20 --json      # a TDX-like quote cost
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from veil.testing import free_port  # noqa: E402

LEVELS = {1: 20, 100: 100, 1000: 1000}  # concurrency -> set-ups measured at that concurrency


def serve(port: int, sim_dir: Path, report_ms: float, batching: bool, policy_out: Path) -> None:
    """The coordinator process: real app, sim-snp attester made to cost like hardware."""
    import uvicorn
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from veil.attest.attester import SimSnpAttester
    from veil.attest.sim import SimPlatform
    from veil.client.policy import ClientPolicy
    from veil.coordinator.app import create_app
    from veil.coordinator.state import CoordinatorState
    from veil.manifest import Manifest, ReferenceValues, public_key_hex, sign_manifest
    from veil.testing import SerializedAttester

    inner = SimSnpAttester(sim_dir)
    attester = SerializedAttester(inner, report_ms / 1000)
    refs = [ReferenceValues(platform="sim-snp", measurements=[inner.measurement.hex()])]
    admin = Ed25519PrivateKey.generate()
    manifest = Manifest(
        coordinator=refs,
        workers=refs,
        admin_keys=[public_key_hex(admin)],
        trusted_simulation_roots=[SimPlatform.load(sim_dir).root_fingerprint],
    )
    signed = sign_manifest(manifest, [admin], None)
    state = CoordinatorState.generate()
    state.append_manifest(signed)
    app = create_app(state, attester, attestation_batching=batching)

    @app.get("/bench/reports")
    def reports() -> dict[str, int]:
        return {"reports": attester.reports}

    ClientPolicy(
        coordinator_url=f"http://127.0.0.1:{port}",
        coordinator=refs,
        manifest_digests=[signed.digest.hex()],
        trust_simulated=True,
        simulation_roots=manifest.trusted_simulation_roots,
    ).save(policy_out)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=4096)


def _start(mode: str, sim_dir: Path, report_ms: float, workdir: Path) -> tuple[subprocess.Popen[bytes], Path, str]:
    port = free_port()
    policy = workdir / f"{mode}-policy.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(port),
            "--sim-dir",
            str(sim_dir),
            "--report-ms",
            str(report_ms),
            "--mode",
            mode,
            "--policy-out",
            str(policy),
        ]
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not policy.exists() or not _up(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"the {mode} coordinator did not start")
        time.sleep(0.1)
    return proc, policy, url


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


async def _fetch(http: httpx.AsyncClient, policy: Any) -> tuple[bytes, dict[str, Any], float]:
    """One client's attestation request with a fresh nonce: (nonce, answer, seconds)."""
    t0 = time.perf_counter()
    nonce = os.urandom(32)
    resp = await http.get(f"{policy.coordinator_url}/v1/attestation", params={"nonce": nonce.hex()})
    resp.raise_for_status()
    return nonce, resp.json(), time.perf_counter() - t0


def _verify_all(answers: list[tuple[bytes, dict[str, Any], float]], policy: Any) -> float:
    """Verify every answer against its own nonce (raises on any refusal); median seconds each."""
    from veil.client.verify import check_attestation

    costs = []
    for nonce, body, _ in answers:
        t0 = time.perf_counter()
        check_attestation(body, policy, nonce=nonce)
        costs.append(time.perf_counter() - t0)
    return sorted(costs)[len(costs) // 2]


async def _level(
    http: httpx.AsyncClient, policy: Any, concurrency: int, total: int
) -> tuple[float, list[tuple[bytes, dict[str, Any], float]]]:
    """``total`` fetches, ``concurrency`` at a time, all released at once; (wall s, answers)."""
    answers: list[tuple[bytes, dict[str, Any], float]] = []
    queue = iter(range(total))

    async def client() -> None:
        for _ in queue:
            answers.append(await _fetch(http, policy))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - t0, answers


def batcher_alone(sim_dir: Path, report_ms: float, clients: int = 1000) -> dict[str, dict[str, float]]:
    """The coordinator side without HTTP: ``clients`` nonces at once into the batcher, both modes
    (the chip's queue alone: what 1000 clients on their own machines would meet)."""
    from veil.attest.attester import SimSnpAttester
    from veil.coordinator.batching import AttestationBatcher, Bound
    from veil.testing import SerializedAttester

    inner = SimSnpAttester(sim_dir)
    out = {}
    for mode in ("unbatched", "batched"):
        chip = SerializedAttester(inner, report_ms / 1000)
        batcher = AttestationBatcher(chip, lambda: Bound(b"k" * 32, b"i" * 32, None, b"c"), batching=mode == "batched")

        async def crowd() -> list[float]:
            t0 = time.perf_counter()

            async def one() -> float:
                await batcher.attest(os.urandom(32))
                return time.perf_counter() - t0

            return await asyncio.gather(*(one() for _ in range(clients)))

        t0 = time.perf_counter()
        lat = asyncio.run(crowd())
        wall = time.perf_counter() - t0
        out[mode] = {
            "answers_per_s": round(clients / wall, 1),
            "p99_ms": round(_pct(lat, 0.99) * 1e3, 1),
            "reports": chip.reports,
        }
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(targets: dict[str, tuple[Any, str]]) -> dict[str, dict[str, Any]]:
    limits = httpx.Limits(max_connections=1100, max_keepalive_connections=1100)
    out: dict[str, dict[str, Any]] = {mode: {} for mode in targets}
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        for mode, (policy, _) in targets.items():  # warm-up: connections, imports, caches
            await _level(http, policy, 4, 8)
        for concurrency, total in LEVELS.items():
            for mode, (policy, url) in targets.items():
                before = (await http.get(f"{url}/bench/reports")).json()["reports"]
                wall, answers = await _level(http, policy, concurrency, total)
                reports = (await http.get(f"{url}/bench/reports")).json()["reports"] - before
                verify = _verify_all(answers, policy)
                lat = [seconds + verify for _, _, seconds in answers]
                out[mode][str(concurrency)] = {
                    "setups": len(lat),
                    "setups_per_s": round(len(lat) / wall, 1),
                    "p50_ms": round(_pct(lat, 0.5) * 1e3, 1),
                    "p99_ms": round(_pct(lat, 0.99) * 1e3, 1),
                    "verify_ms": round(verify * 1e3, 2),
                    "reports": reports,
                }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report-ms", type=float, default=5.0, help="cost of one hardware report (serialised)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sim-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("batched", "unbatched"), help=argparse.SUPPRESS)
    parser.add_argument("--policy-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.sim_dir, args.report_ms, args.mode == "batched", args.policy_out)
        return 0

    from veil.attest.sim import SimPlatform
    from veil.client.policy import ClientPolicy

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))  # 1000 sockets
    workdir = Path(tempfile.mkdtemp(prefix="veil-attest-scale-"))
    sim_dir = workdir / "sim"
    SimPlatform.create(sim_dir)
    procs = []
    try:
        targets = {}
        for mode in ("unbatched", "batched"):
            proc, policy_path, url = _start(mode, sim_dir, args.report_ms, workdir)
            procs.append(proc)
            targets[mode] = (ClientPolicy.load(policy_path), url)
        results = asyncio.run(run(targets))
        alone = batcher_alone(sim_dir, args.report_ms)
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)

    print(
        f"session set-ups (fetch + verify), one report costs {args.report_ms} ms serialised, "
        f"{os.cpu_count()} cores shared by clients and coordinators"
    )
    print(f"{'clients':>8} {'mode':<10} {'set-ups/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'reports':>8}")
    for concurrency in LEVELS:
        for mode in results:
            r = results[mode][str(concurrency)]
            print(f"{concurrency:>8} {mode:<10} {r['setups_per_s']:>10} {r['p50_ms']:>9} {r['p99_ms']:>9} {r['reports']:>8}")
    print(
        f"the batcher alone (no HTTP), 1000 nonces at once: "
        + "; ".join(f"{m} {r['answers_per_s']} answers/s, p99 {r['p99_ms']} ms, {r['reports']} reports" for m, r in alone.items())
    )
    summary = {
        "report_ms": args.report_ms,
        "cores": os.cpu_count(),
        "results": results,
        "batcher_alone_1000": alone,
        "speedup_at_1000": round(results["batched"]["1000"]["setups_per_s"] / results["unbatched"]["1000"]["setups_per_s"], 2),
        "p99_ratio_at_1000": round(results["unbatched"]["1000"]["p99_ms"] / results["batched"]["1000"]["p99_ms"], 2),
    }
    print(
        f"at 1000 clients batching gives {summary['speedup_at_1000']}x set-ups/s and a {summary['p99_ratio_at_1000']}x lower p99"
    )
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
