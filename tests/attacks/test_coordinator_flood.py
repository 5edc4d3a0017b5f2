"""Attack: a coordinator's host answers the client with an endless attestation or history body.

The attacker controls the coordinator's host and its network: it rewrites the answer to
``GET /v1/attestation`` or ``GET /v1/manifest/history`` into 1 GiB (streamed without a length, or
announced in Content-Length), to exhaust the memory of every client that verifies. Before the fix
the client read the whole body before checking its size (868 MiB in a client).

Refused with: ``coordinator.too_large`` once the client has read its cap (2 MiB for an
attestation, 32 MiB for the history), and the client's memory stays bounded by the cap.
"""

from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from attacks.client_stack import shared_sim_dir
from veil.client.manifest_log import ManifestLog
from veil.client.policy import ClientPolicy
from veil.client.verify import MAX_ATTESTATION_BYTES, MAX_HISTORY_BYTES, verify_coordinator
from veil.errors import VeilError
from veil.testing import free_port

pytestmark = pytest.mark.slow  # live servers and processes on loopback


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory) -> Iterator[tuple[str, ClientPolicy]]:
    port, policy_path = free_port(), tmp_path_factory.mktemp("flood") / "policy.json"
    script = Path(__file__).with_name("flooding_coordinator.py")
    server = subprocess.Popen(
        [sys.executable, str(script), "--sim-dir", str(shared_sim_dir()), "--port", str(port), "--policy", str(policy_path)]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "the coordinator did not start"
                time.sleep(0.1)
        yield url, ClientPolicy.load(policy_path)
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.parametrize(
    "flood, cap",
    [
        ("attestation", MAX_ATTESTATION_BYTES),
        ("declared", MAX_ATTESTATION_BYTES),
        ("history", MAX_HISTORY_BYTES),
    ],
)
def test_a_flooding_coordinator_cannot_exhaust_client_memory(coordinator, flood: str, cap: int, tmp_path: Path) -> None:
    url, policy = coordinator
    httpx.post(f"{url}/flood", json={"flood": flood}, timeout=10).raise_for_status()
    tracemalloc.start()
    try:
        with pytest.raises(VeilError) as info:
            verify_coordinator(policy, manifest_log=ManifestLog(tmp_path / "log.json"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == "coordinator.too_large"
    assert peak < 2 * cap + (8 << 20), f"the client held {peak >> 20} MiB"
