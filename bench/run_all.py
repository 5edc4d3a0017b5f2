"""Run every benchmark once, one after another, and print what each measured (`make bench`).

Each figure is a ratio or a median taken within one run of one script, so the machine's speed
cancels out; run on a quiet machine for absolute numbers. Takes about 5 minutes on 2 cores.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (what it answers, script and arguments)
BENCHES: list[tuple[str, list[str]]] = [
    ("client session set-up (fetch + verify) vs the seeds' 200-500 ms", ["session_setup.py", "100"]),
    ("verification per platform vs dcap-qvl and tinfoil", ["verify_platforms.py", "50"]),
    ("tokens/s and TTFT through Veil vs direct, sandbox vs none", ["e2e_tokens.py", "--repeat", "2"]),
    (
        "gateway CPU per event and per request; latency added at 1, 8, 64, 256 streams",
        ["gateway_overhead.py", "--requests", "64", "--rounds", "2"],
    ),
    ("X-Wing vs X25519 per OHTTP request and set-up, bytes on the wire", ["ohttp_suites.py", "--requests", "2000"]),
    ("sandbox start-up", ["sandbox_startup.py", "-n", "5"]),
    ("unseal throughput and peak RSS", ["unseal.py", "--size", "256M", "--repeat", "2"]),
    ("coordinator restart and recovery", ["restore.py", "50", "100", "3"]),
    ("load through HAProxy: 1 and 3 workers, the balancer's cost", ["load.py", "--seconds", "6"]),
    ("client set-ups at 1, 100, 1000 clients, batched attestation or not", ["attestation_scale.py"]),
]


def main() -> int:
    failed = 0
    for title, (script, *args) in BENCHES:
        print(f"\n=== {title}  (bench/{script} {' '.join(args)})", flush=True)
        start = time.monotonic()
        result = subprocess.run([sys.executable, str(HERE / script), *args])
        failed += result.returncode != 0
        print(f"--- {time.monotonic() - start:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
