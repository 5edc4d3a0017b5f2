"""Attack: switch a worker's re-attestation off, so that revocations and manifest updates never
reach it (issue 15.2, worker side; issue 9.6).

The attacker is the host: it owns the network between the worker and the coordinator. Once the
worker serves, it answers the worker's re-registrations with a malformed body (a ValueError and
a KeyError in the worker's client), and then not at all. The old loop died on the first
unexpected exception (and deferred for ever on "the coordinator is busy"), and the worker served
on with its old keys and tenants indefinitely. Against a real coordinator and worker process:
the worker counts each failure and, after the bound (3 in a row), forgets its keys and exits with
``worker.reattestation_failed``; nothing is served after that.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from worker_fixtures import WorkerStack, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[WorkerStack]:
    s = WorkerStack(tmp_path, interval=1.0)
    yield s
    s.stop()


def test_a_worker_that_cannot_reattest_stops_serving(stack: WorkerStack) -> None:
    with stack.client() as http:
        assert http.get("/v1/models").status_code == 200
    stack.relay.mode = "garbage"
    wait_for(lambda: stack.worker.poll() is not None, 60, "the worker to stop")  # 3 intervals, plus start-up slack
    out = stack.output()
    assert "worker.reattestation_failed" in out and "re-attestation failed (1 of 3" in out, out[-3000:]
    assert stack.worker.returncode != 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.gateway}/.well-known/ohttp-gateway", timeout=2)
