"""kill -9 the coordinator at random points during manifest updates and secret uploads: after a
restart the history verifies, and everything that was acknowledged is still there."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployment_fixtures import make_manifest
from veil import admin
from veil.attest.sim import SimPlatform, measure_code
from veil.client.policy import ClientPolicy
from veil.manifest import ReleasePolicy, SignedManifest, public_key_hex, sign_manifest, verify_history
from veil.testing import free_port

ROUNDS = 4


def _start(sim_dir, db, port, admin_key) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil",
            "coordinator",
            "--port",
            str(port),
            "--sim-dir",
            str(sim_dir),
            "--db",
            f"sqlite:///{db}",
            "--sim-launch-data",
            public_key_hex(admin_key),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("coordinator did not start")


def test_kill_9_during_writes_keeps_state_consistent(tmp_path) -> None:
    sim_dir = tmp_path / "sim"
    SimPlatform.create(sim_dir)
    db, port = tmp_path / "coord.db", free_port()
    url = f"http://127.0.0.1:{port}"
    a = Ed25519PrivateKey.generate()
    measurement = measure_code().hex()
    rng = random.Random(1234)
    acked_digests: list[str] = []
    acked_secrets: list[str] = []
    counter = [0]

    for round_ in range(ROUNDS):
        proc = _start(sim_dir, db, port, a)
        stop = threading.Event()

        def writer() -> None:
            with httpx.Client(timeout=5) as http:
                while not stop.is_set():
                    try:
                        head = http.get(f"{url}/v1/manifest/history").json()
                        prev = SignedManifest.parse(head[-1]).digest.hex() if head else None
                        counter[0] += 1
                        identity = http.get(f"{url}/v1/attestation", params={"nonce": "00" * 32}).json()["identity"]
                        m = make_manifest(sim_dir, a, measurement, settings={"n": counter[0]}, coordinator_identity=identity)
                        m = m.model_copy(update={"release_policies": {"k": ReleasePolicy(allow_simulated=True)}})
                        entry = sign_manifest(m, [a], prev)
                        if http.post(f"{url}/v1/manifest", content=entry.model_dump_json()).status_code == 200:
                            acked_digests.append(entry.digest.hex())
                        policy = ClientPolicy(
                            coordinator_url=url,
                            coordinator=m.coordinator,
                            manifest_digests=[entry.digest.hex()],
                            trust_simulated=True,
                            simulation_roots=m.trusted_simulation_roots,
                        )
                        key_id = f"secret-{counter[0]}"
                        admin.put_secret(policy, a, key_id, os.urandom(32), http=http)
                        acked_secrets.append(key_id)
                    except (httpx.HTTPError, admin.VeilError, ValueError, IndexError):
                        return  # the coordinator died under us

        thread = threading.Thread(target=writer)
        acked_before = len(acked_digests)
        thread.start()
        # Kill at a random point, but only once this round has had a write acknowledged: on a
        # loaded machine a fixed window can pass before the first write lands, testing nothing.
        deadline = time.monotonic() + 60
        while len(acked_digests) == acked_before and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stop.set()
        thread.join(timeout=10)

    proc = _start(sim_dir, db, port, a)
    try:
        history = [SignedManifest.parse(e) for e in httpx.get(f"{url}/v1/manifest/history").json()]
        verify_history(history)  # the chain and every signature still verify
        stored = {e.digest.hex() for e in history}
        assert acked_digests, "no write was acknowledged: the test did not exercise anything"
        assert set(acked_digests) <= stored, "an acknowledged manifest was lost"
        policy = ClientPolicy(
            coordinator_url=url,
            coordinator=history[-1].manifest.coordinator,
            admin_keys=[public_key_hex(a)],
            trust_simulated=True,
            simulation_roots=history[-1].manifest.trusted_simulation_roots,
        )
        key_ids = set(admin.list_secrets(policy, a))
        assert set(acked_secrets) <= key_ids, "an acknowledged secret was lost"
    finally:
        proc.kill()
        proc.wait()
