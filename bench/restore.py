"""Coordinator restore time: a plain restart against recovery into a new machine.

A coordinator holds N manifests (a signed hash chain, with an admin recovery key) and M secrets,
sealed at rest in SQLite (sim-snp platform). Then, R times each, on a fresh copy of that database:

* restart: the same platform (same sealing key) opens the store, unseals the state key and loads
  everything (``Store.from_url`` + ``CoordinatorState.open`` + ``create_app``);
* recovery: a "new machine" (another platform key) opens the store and comes up locked, then
  ``veil.admin.recover`` runs against it in process (fastapi TestClient as the httpx client):
  GET the sealed recovery records and the public history, verify the history, open our record with
  the admin's recovery key and check the key derives the identity the head names, fetch and verify
  the new coordinator's attestation, seal the state key to its attested key and sign the restore
  authorisation, POST /v1/recover, where the coordinator opens and checks every row, the
  authorisation and the identity, and re-seals the state key to its own platform.

Prints the medians in ms and the ratio recovery / restart.
Run: .venv/bin/python bench/restore.py [N manifests] [M secrets] [R repetitions]
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi.testclient import TestClient

from veil import admin, keyrelease
from veil.attest.attester import SimSnpAttester
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.coordinator.store import Store
from veil.manifest import Manifest, ReferenceValues, public_key_hex, sign_manifest

BASE = "http://coord"


def _populate(
    db: Path, attester: SimSnpAttester, sim: SimPlatform, admin_key: Ed25519PrivateKey, n: int, m: int
) -> X25519PrivateKey:
    recovery = X25519PrivateKey.generate()
    refs = [ReferenceValues(platform="sim-snp", measurements=[attester.measurement.hex()])]
    store = Store.from_url(f"sqlite:///{db}")
    state = CoordinatorState.open(store, attester.sealing_key(), public_key_hex(admin_key))
    previous = None
    for i in range(n):
        manifest = Manifest(
            coordinator=refs,
            workers=refs,
            admin_keys=[public_key_hex(admin_key)],
            trusted_simulation_roots=[sim.root_fingerprint],
            settings={"revision": i},
            recovery_keys=[keyrelease.public_bytes(recovery).hex()],
            coordinator_identity=state.identity,
        )
        entry = sign_manifest(manifest, [admin_key], previous)
        state.append_manifest(entry)
        previous = entry.digest.hex()
    for j in range(m):
        state.put_secret(f"model-key-{j}", os.urandom(32), public_key_hex(admin_key))
    store.engine.dispose()
    return recovery


def _copy(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")


def main(n: int = 50, m: int = 100, reps: int = 5) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        sim = SimPlatform.create(tmpd / "sim")
        admin_key = Ed25519PrivateKey.generate()
        bootstrap = public_key_hex(admin_key)
        attester = SimSnpAttester(sim.directory, host_data=bytes.fromhex(bootstrap))  # measure_code() once
        source = tmpd / "source.db"
        t = time.perf_counter()
        recovery = _populate(source, attester, sim, admin_key, n, m)
        populate_s = time.perf_counter() - t
        policy = ClientPolicy(
            coordinator_url=BASE,
            coordinator=[ReferenceValues(platform="sim-snp", measurements=[attester.measurement.hex()])],
            admin_keys=[bootstrap],
            trust_simulated=True,
            simulation_roots=[sim.root_fingerprint],
        )

        restart, locked_open, recover_call = [], [], []
        for r in range(reps + 1):  # the first round warms imports and caches; not counted
            db = tmpd / f"restart-{r}.db"
            _copy(source, db)
            t = time.perf_counter()
            store = Store.from_url(f"sqlite:///{db}")
            state = CoordinatorState.open(store, attester.sealing_key(), bootstrap)
            create_app(state, attester)
            elapsed = (time.perf_counter() - t) * 1000
            assert not state.locked and len(state.history) == n and len(state.secrets) == m
            store.engine.dispose()
            if r:
                restart.append(elapsed)

            db = tmpd / f"recover-{r}.db"
            _copy(source, db)
            new_platform_key = os.urandom(32)  # the new machine's sealing key
            t0 = time.perf_counter()
            store = Store.from_url(f"sqlite:///{db}")
            state = CoordinatorState.open(store, new_platform_key, bootstrap)
            http = TestClient(create_app(state, attester), base_url=BASE)
            t1 = time.perf_counter()
            result = admin.recover(BASE, recovery, admin_key, policy, http=http)
            t2 = time.perf_counter()
            assert result == {"restored": True, "manifests": n, "secrets": m}, result
            assert not state.locked
            http.close()
            store.engine.dispose()
            if r:
                locked_open.append((t1 - t0) * 1000)
                recover_call.append((t2 - t1) * 1000)

    med_restart = statistics.median(restart)
    med_locked = statistics.median(locked_open)
    med_recover = statistics.median(recover_call)
    total = statistics.median([a + b for a, b in zip(locked_open, recover_call)])
    print(
        f"coordinator restore, SQLite, sim-snp: {n} manifests, {m} secrets, median of {reps} (state built in {populate_s:.1f} s)"
    )
    print(f"  restart (same platform: unseal + load + app):          {med_restart:8.1f} ms")
    print(f"  new machine, locked start (open store + app):          {med_locked:8.1f} ms")
    print(f"  admin.recover (records + verify + seal + restore):     {med_recover:8.1f} ms")
    print(f"  recovery total (locked start + recover):               {total:8.1f} ms")
    print(f"  ratio recovery / restart: {total / med_restart:.2f}x")
    return {
        "restart_ms": med_restart,
        "locked_start_ms": med_locked,
        "recover_ms": med_recover,
        "recovery_total_ms": total,
        "ratio": total / med_restart,
    }


if __name__ == "__main__":
    as_json = "--json" in sys.argv  # also print one JSON object on the last line
    args = [int(a) for a in sys.argv[1:] if a != "--json"][:3]
    result = main(*args)
    if as_json:
        print(json.dumps(result))
