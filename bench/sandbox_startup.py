"""Sandbox start-up cost: spawn -> the engine's Unix socket accepts a connection.

A tiny Python server (bind + listen on a Unix socket) is started bare and under each enforceable
profile; the median over N runs is reported with its ratio to the bare start. Tokens/s with and
without the sandbox is measured with the real engine elsewhere (bench/run_all.py).

    python bench/sandbox_startup.py [-n 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from veil.sandbox import SandboxError, SandboxProfile, check_enforceable, sandbox_prefix, socketdir
from veil.sandbox.hardening import engine_identity

SERVER = (
    "import socket, sys, time\n"
    "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n"
    "c, _ = s.accept(); c.close(); time.sleep(30)\n"
)
PROFILES = {
    "bubblewrap": SandboxProfile(),
    "bubblewrap-no-landlock": SandboxProfile(landlock=False),
    "gvisor": SandboxProfile(name="gvisor"),
}


def time_start(prefix: list[str], socket_dir: str, timeout: float = 60.0) -> float:
    """Seconds from Popen to a successful connect() on the server's socket."""
    path = os.path.join(socket_dir, "bench.sock")
    start = time.perf_counter()
    proc = subprocess.Popen([*prefix, sys.executable, "-c", SERVER, path], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-400:]}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                return time.perf_counter() - start
            except OSError:
                if time.perf_counter() - start > timeout:
                    raise RuntimeError("server socket never became ready") from None
                time.sleep(0.002)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if os.path.exists(path):
            os.unlink(path)


def measure(n: int) -> dict[str, dict[str, float | str]]:
    """Round-robin over the profiles (so load changes hit all alike); medians and ratios."""
    results: dict[str, dict[str, float | str]] = {}
    base = "/run" if os.access("/run", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="veil-bench-", dir=base) as parent:
        prefixes: dict[str, tuple[list[str], str]] = {"none": ([], parent)}
        for name, profile in PROFILES.items():
            try:
                check_enforceable(profile)
            except SandboxError as exc:
                results[name] = {"skipped": exc.message}
                continue
            # The engine's own socket directory, as EngineProcess makes it (gVisor's gofer: root)
            socket_dir = Path(parent, name)
            socketdir.prepare(socket_dir, "bench.sock", None if profile.name == "gvisor" else engine_identity())
            prefixes[name] = (sandbox_prefix(profile, socket_dir=str(socket_dir)), str(socket_dir))
        runs: dict[str, list[float]] = {name: [] for name in prefixes}
        try:
            for _ in range(n):
                for name, (prefix, socket_dir) in prefixes.items():
                    runs[name].append(time_start(prefix, socket_dir))
        finally:
            for name, (_, socket_dir) in prefixes.items():
                if name != "none":
                    socketdir.clear(Path(socket_dir))
        bare = statistics.median(runs["none"])
        for name, times in runs.items():
            med = statistics.median(times)
            results[name] = {"median_ms": med * 1e3, "ratio": med / bare}
    return dict(sorted(results.items(), key=lambda kv: kv[0] != "none"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="runs per profile (median reported)")
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args()
    results = measure(ns.n)
    if ns.json:
        print(json.dumps(results, indent=2))
        return 0
    load = os.getloadavg()[0]
    print(f"sandbox start-up, spawn -> socket ready, median of {ns.n} (load {load:.1f})")
    for name, r in results.items():
        if "skipped" in r:
            print(f"  {name:24s} skipped: {r['skipped']}")
        else:
            print(f"  {name:24s} {r['median_ms']:8.1f} ms   x{r['ratio']:.2f} vs none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
