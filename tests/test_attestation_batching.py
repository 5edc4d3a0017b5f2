"""Batched client attestation (coordinator/batching.py): a real coordinator under uvicorn whose
attester costs what a security processor does (serialised, 20 ms a report), and real clients
verifying concurrently: every client is verified against its own fresh nonce, and far fewer
reports than clients are made. The unbatched baseline makes one report per client. The bench
(bench/attestation_scale.py) measures set-ups per second and p99 at 1, 100 and 1000 clients."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployment_fixtures import launched_attester, make_manifest
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.manifest import public_key_hex, sign_manifest
from veil.testing import SerializedAttester, ServerThread

CLIENTS = 32
REPORT_COST = 0.020


def start(sim_dir, *, batching: bool):  # type: ignore[no-untyped-def]
    admin = Ed25519PrivateKey.generate()
    inner = launched_attester(sim_dir, admin)
    attester = SerializedAttester(inner, REPORT_COST)
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(admin))
    signed = sign_manifest(
        make_manifest(sim_dir, admin, inner.measurement.hex(), coordinator_identity=state.identity), [admin], None
    )
    state.append_manifest(signed)
    server = ServerThread(create_app(state, attester, attestation_batching=batching))
    policy = ClientPolicy(
        coordinator_url=server.url,
        coordinator=signed.manifest.coordinator,
        manifest_digests=[signed.digest.hex()],
        trust_simulated=True,
        simulation_roots=signed.manifest.trusted_simulation_roots,
    )
    return server, attester, policy


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("batching-sim")
    SimPlatform.create(d)
    return d


def _verify_concurrently(policy: ClientPolicy, n: int) -> list:  # type: ignore[type-arg]
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: verify_coordinator(policy), range(n)))


def test_concurrent_clients_share_reports_and_each_is_bound_to_its_nonce(sim_dir) -> None:
    server, attester, policy = start(sim_dir, batching=True)
    try:
        attested = _verify_concurrently(policy, CLIENTS)
        assert len(attested) == CLIENTS  # every one verified (a refusal raises)
        assert all(any("nonce batch" in c for c, _ in a.checks) for a in attested)
        assert attester.reports <= CLIENTS // 2, f"{attester.reports} reports for {CLIENTS} clients"
    finally:
        server.stop()


def test_a_lone_client_gets_a_batch_of_one(sim_dir) -> None:
    server, attester, policy = start(sim_dir, batching=True)
    try:
        body = httpx.get(f"{server.url}/v1/attestation", params={"nonce": "ab" * 32}).json()
        assert body["nonce_batch"] == {"index": 0, "size": 1, "path": []}
        assert attester.reports == 1
    finally:
        server.stop()


def test_unbatched_baseline_makes_one_report_per_client(sim_dir) -> None:
    server, attester, policy = start(sim_dir, batching=False)
    try:
        attested = _verify_concurrently(policy, 8)
        assert attester.reports == 8
        body = httpx.get(f"{server.url}/v1/attestation", params={"nonce": "cd" * 32}).json()
        assert "nonce_batch" not in body  # report_data binds the nonce directly
        assert all(not any("nonce batch" in c for c, _ in a.checks) for a in attested)
    finally:
        server.stop()
