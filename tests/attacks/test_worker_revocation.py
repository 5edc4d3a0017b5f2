"""Attack: keep using access the admins have taken away (issue 9.6 / 15.2).

The attacker holds something the manifest no longer grants: a tenant's API key after the admins
removed that tenant, or a worker the admins stopped admitting (its code is no longer in the
manifest's reference values) that would like to keep serving — and decrypting — what clients
send. Against a real coordinator and worker process re-attesting every second: the removed
tenant is refused (encrypted 401 ``tenant.unauthorized``) within one re-attestation interval while
the remaining tenant is served, and the removed worker forgets its keys and exits within one
interval with the coordinator's reason (``snp.measurement_mismatch``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from worker_fixtures import WorkerStack, wait_for

from veil.admin import create_tenant
from veil.manifest import ReferenceValues

pytestmark = pytest.mark.slow
INTERVAL = 1.0
SLACK = 15.0  # one interval, plus a registration and a loaded machine's scheduling


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    s = WorkerStack(Path(tmp_path_factory.mktemp("revocation")), interval=INTERVAL)
    yield s
    s.stop()


def _status(http: httpx.Client, key: str) -> int:
    return http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code


def test_a_removed_tenant_is_refused_within_one_interval(stack: WorkerStack) -> None:
    key_a, a = create_tenant("a", 600)
    key_b, b = create_tenant("b", 600)
    stack.publish(stack.manifest.model_copy(update={"tenants": [a, b]}))
    with stack.client() as http:
        wait_for(lambda: _status(http, "nobody") == 401 and _status(http, key_b) == 200, SLACK, "the tenants")
        stack.publish(stack.manifest.model_copy(update={"tenants": [a]}))  # the admins remove "b"
        removed_at = time.monotonic()
        wait_for(lambda: _status(http, key_b) == 401, INTERVAL + SLACK, "the removed tenant to be refused")
        print(f"tenant refused {time.monotonic() - removed_at:.1f} s after its removal (interval {INTERVAL} s)")
        r = http.get("/v1/models", headers={"Authorization": f"Bearer {key_b}"})
        assert r.status_code == 401 and r.json()["error"]["reason"] == "tenant.unauthorized"
        assert _status(http, key_a) == 200


def test_a_removed_worker_stops_within_one_interval(stack: WorkerStack) -> None:
    other = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
    stack.publish(stack.manifest.model_copy(update={"workers": other}))  # this worker's code is no longer admitted
    removed_at = time.monotonic()
    wait_for(lambda: stack.worker.poll() is not None, INTERVAL + SLACK, "the removed worker to stop")
    print(f"worker stopped {time.monotonic() - removed_at:.1f} s after its removal (interval {INTERVAL} s)")
    out = stack.output()
    assert "snp.measurement_mismatch" in out, out[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.gateway}/.well-known/ohttp-gateway", timeout=2)
