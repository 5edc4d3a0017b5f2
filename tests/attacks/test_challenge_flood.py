"""Attack: a flood of worker challenges locks out legitimate workers (issues 9.7, 15.2).

The attacker controls many source addresses (here 40 loopback addresses) and asks the coordinator
for worker challenges as fast as it can, for a few seconds, to fill the pool of open challenges so
that a worker's next re-registration finds none (previously: 10,000 open challenges refused every
new worker with ``nonce.too_many_outstanding``, and workers deferred forever). Contained: each
source is rate-limited (``challenge.rate_limited``, HTTP 429) and holds at most a few challenges,
and a full pool gives up the oldest challenge of the source holding the most, so a worker
registering during the flood is served every time.
"""

from __future__ import annotations

import threading
import time

import httpx

from attacks.coordproc import Deployment
from veil.worker.registration import register

SOURCES = [f"127.0.0.{i}" for i in range(2, 42)]
FLOOD_SECONDS = 4.0
POOL = 128  # < 40 sources x their burst of 6: the flood overruns it


def _flood(url: str, source: str, stop: threading.Event, counts: dict[str, int]) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=10) as http:
        while not stop.is_set():
            try:
                status = http.post(f"{url}/v1/workers/challenge").status_code
            except httpx.HTTPError:
                status = 0
            counts[str(status)] = counts.get(str(status), 0) + 1


def test_worker_registers_through_a_challenge_flood(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    limits = ["--challenge-pool", str(POOL), "--challenges-per-second", "0.5", "--challenge-burst", "6"]
    with dep.coordinator(args=limits) as coord:
        dep.set_up(coord)
        stop, counts = threading.Event(), {}
        flood = [threading.Thread(target=_flood, args=(coord.url, s, stop, counts)) for s in SOURCES]
        for t in flood:
            t.start()
        try:
            time.sleep(1.0)  # the pool is full by now
            served = []
            with httpx.Client(timeout=30) as http:
                released = register(coord.url, dep.attester, http)
                deadline = time.monotonic() + FLOOD_SECONDS
                while time.monotonic() < deadline:  # re-registrations while the flood goes on
                    started = time.monotonic()
                    released = register(coord.url, dep.attester, http, previous=released)
                    served.append(time.monotonic() - started)
                    time.sleep(max(0.0, 0.6 - served[-1]))  # a worker's pace, within its own source's rate
        finally:
            stop.set()
            for t in flood:
                t.join(timeout=30)
        with httpx.Client(transport=httpx.HTTPTransport(local_address=SOURCES[0]), timeout=10) as http:
            statuses = [http.post(f"{coord.url}/v1/workers/challenge").status_code for _ in range(30)]
        assert served and max(served) < 15.0, served  # every re-registration got through, promptly
        assert counts.get("200", 0) > POOL, counts  # the pool really was overrun...
        assert 429 in statuses, statuses  # ...and a source is held to its rate (checked on its own: on a
        # loaded machine the flood itself may be too slow to exceed it)
