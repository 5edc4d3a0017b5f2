"""Attack: a flood of attestation requests exhausts the security processor (issue 9.7).

The attacker controls a few source addresses and asks for attestations (each one a hardware report
on a real TEE) as fast as it can, for a few seconds, so that clients cannot verify the coordinator
and the security processor spends itself on noise. Contained: each source is held to its rate
(``attestation.rate_limited``, HTTP 429 with Retry-After), and one report at a time is made for
every client waiting (a batch), so the attestations the flood obtains stay bounded by the sources'
rates, while a client verifying from elsewhere during the flood is served promptly.
"""

from __future__ import annotations

import os
import re
import threading
import time

import httpx

from attacks.coordproc import Deployment
from veil.client.verify import verify_coordinator

SOURCES = [f"127.0.0.{i}" for i in range(2, 6)]
FLOOD_SECONDS = 4.0
FLOOD_MAX_SECONDS = 30.0
RATE, BURST = 2, 5


def _flood(url: str, source: str, stop: threading.Event, counts: dict[str, int]) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as http:
        while not stop.is_set():
            try:
                resp = http.get(f"{url}/v1/attestation", params={"nonce": os.urandom(32).hex()})
                reason = resp.json().get("error", {}).get("reason") if resp.status_code != 200 else "ok"
            except httpx.HTTPError:
                reason = "transport"
            counts[reason] = counts.get(reason, 0) + 1


def _reports(url: str) -> float:
    found = re.search(r"^veil_attestations_total (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def test_attestation_flood_is_held_to_each_sources_rate(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    limits = ["--attestations-per-second", str(RATE), "--attestation-burst", str(BURST)]
    with dep.coordinator(args=limits) as coord:
        dep.set_up(coord)
        t0 = time.monotonic()
        verify_coordinator(dep.policy(coord.url))
        baseline = time.monotonic() - t0
        before = _reports(coord.url)
        stop, counts = threading.Event(), {}
        flood = [threading.Thread(target=_flood, args=(coord.url, s, stop, counts)) for s in SOURCES]
        started = time.monotonic()
        for t in flood:
            t.start()
        try:
            time.sleep(1.0)
            t0 = time.monotonic()
            verify_coordinator(dep.policy(coord.url))  # a client elsewhere verifies during the flood
            victim = time.monotonic() - t0
            # At least FLOOD_SECONDS, and on until the flood has outrun its rate: on a loaded
            # machine each request is slower, so the flood needs longer to be one.
            while time.monotonic() - started < FLOOD_MAX_SECONDS:
                limited, ok = counts.get("attestation.rate_limited", 0), counts.get("ok", 0)
                if time.monotonic() - started >= FLOOD_SECONDS and limited > ok:
                    break
                time.sleep(0.1)
        finally:
            stop.set()
            for t in flood:
                t.join(timeout=30)
        elapsed = time.monotonic() - started
        produced = _reports(coord.url) - before
        bound = len(SOURCES) * (BURST + RATE * (elapsed + 1)) + 5  # + the client's and the set-up's own
        assert counts.get("attestation.rate_limited", 0) > counts.get("ok", 0), counts
        assert produced <= bound, (produced, bound, counts)
        assert victim < max(10.0, 5 * baseline), (victim, baseline)  # served, not starved
