"""Attack: keep access the admins took away by reaching a worker's *other* gateway process.

The attacker holds a tenant's API key after the admins removed that tenant, or the key
configuration of a generation the coordinator has rotated out, and sends on fresh connections,
which the kernel's ``SO_REUSEPORT`` hashing spreads over the worker's gateway processes; or it
would like a worker the admins stopped admitting to keep serving through a process other than
the one that re-attests. Against a real coordinator and ``veil worker --gateway-processes 2``
re-attesting every second: within one interval every process serves the same, new key
configurations (the keys each re-registration releases) and refuses the removed tenant
(encrypted 401 ``tenant.unauthorized``); a removed worker's every process stops, and nothing
listens on its port. Fails if the worker does not fan the keys and manifest out to its processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from worker_fixtures import WorkerStack, wait_for

from veil.admin import create_tenant
from veil.client.transport import OhttpTransport
from veil.manifest import ReferenceValues
from veil.ohttp.keyconfig import KeyConfig, decode_key_config_list
from veil.testing import listeners
from veil.wire import GATEWAY_PATH

pytestmark = pytest.mark.slow
INTERVAL = 1.0
SLACK = 15.0  # one interval, plus a registration and a loaded machine's scheduling
FRESH = 8  # fresh connections per look: all on one of two processes has probability 2**-7


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerStack]:
    s = WorkerStack(Path(tmp_path_factory.mktemp("processes")), interval=INTERVAL, gateway_processes=2)
    wait_for(lambda: listeners(s.port) == 2, 60, "both gateway processes")
    yield s
    s.stop()


def _served(stack: WorkerStack) -> set[bytes]:
    """The key configurations the gateway serves, as seen on fresh connections."""
    seen = set()
    for _ in range(FRESH):
        seen.add(httpx.get(stack.gateway + GATEWAY_PATH, timeout=10).content)  # a new connection each time
    return seen


def _statuses(stack: WorkerStack, config: KeyConfig, key: str) -> list[tuple[int, str | None]]:
    out = []
    for _ in range(FRESH):  # a new transport: a new connection
        with httpx.Client(transport=OhttpTransport(config, stack.gateway), base_url=stack.gateway, timeout=60) as http:
            try:
                r = http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
                out.append((r.status_code, r.json().get("error", {}).get("reason") if r.status_code != 200 else None))
            except Exception as err:  # noqa: BLE001 - a refused key configuration surfaces as the client's error
                out.append((0, getattr(err, "reason", type(err).__name__)))
    return out


def test_every_process_takes_the_new_keys_and_refuses_a_removed_tenant(stack: WorkerStack) -> None:
    key_a, a = create_tenant("a", 600)
    key_b, b = create_tenant("b", 600)
    before = _served(stack)
    assert len(before) == 1
    stack.publish(stack.manifest.model_copy(update={"tenants": [a, b]}))  # a new manifest: a new key generation
    wait_for(lambda: len(s := _served(stack)) == 1 and s != before, INTERVAL + SLACK, "every process to serve the new keys")
    new = decode_key_config_list(next(iter(_served(stack))))[0]
    assert _statuses(stack, new, key_b) == [(200, None)] * FRESH
    stack.publish(stack.manifest.model_copy(update={"tenants": [a]}))  # the admins remove "b"
    removed_at = time.monotonic()
    wait_for(
        lambda: all(s == 401 for s, _ in _statuses(stack, decode_key_config_list(next(iter(_served(stack))))[0], key_b)),
        INTERVAL + SLACK,
        "every process to refuse the removed tenant",
    )
    print(f"every process refused the tenant {time.monotonic() - removed_at:.1f} s after its removal")
    current = decode_key_config_list(next(iter(_served(stack))))[0]
    assert _statuses(stack, current, key_b) == [(401, "tenant.unauthorized")] * FRESH
    assert _statuses(stack, current, key_a) == [(200, None)] * FRESH


def test_a_removed_worker_stops_every_process(stack: WorkerStack) -> None:
    other = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
    stack.publish(stack.manifest.model_copy(update={"workers": other}))
    wait_for(lambda: stack.worker.poll() is not None, INTERVAL + SLACK, "the removed worker to stop")
    wait_for(lambda: listeners(stack.port) == 0, 10, "every gateway process to stop")
