"""Attack: unauthenticated registrations flood the audit log (issues 9.7, 15.8).

The attacker controls the network: it posts worker registrations with nonces the coordinator never
issued, and registrations with freshly issued nonces but evidence of its own making, as fast as it
can (previously one fsynced audit row each, about 590 rows a second). Contained: nothing is written
for an unknown nonce (``nonce.unknown``), and refused evidence is counted in memory and written as
one summary row per reason and minute, so the audit log grows by a handful of rows, not by the
flood; a genuine worker registers meanwhile, and its registration is recorded as ever.
"""

from __future__ import annotations

import os
import sqlite3

import httpx

from attacks.coordproc import Deployment
from veil import admin
from veil.worker.registration import register

UNKNOWN, GARBAGE = 300, 60


def test_refused_registrations_do_not_fill_the_audit_log(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    db = tmp_path / "coordinator.db"
    with dep.coordinator(db, args=["--challenges-per-second", "1000", "--challenge-burst", "1000"]) as coord:
        dep.set_up(coord)
        with sqlite3.connect(db) as conn:
            (before,) = conn.execute("select count(*) from veil_audit_log").fetchone()
        garbage = {"platform": "sim-snp", "snp": {"report": "AAAA", "vcek": "AAAA", "chain_pem": "AAAA"}}
        with httpx.Client(base_url=coord.url, timeout=30) as http:
            for _ in range(UNKNOWN):
                body = {"nonce": os.urandom(32).hex(), "public_key": os.urandom(32).hex(), "evidence": garbage}
                assert http.post("/v1/workers/register", json=body).json()["error"]["reason"] == "nonce.unknown"
            for _ in range(GARBAGE):
                nonce = http.post("/v1/workers/challenge").json()["nonce"]
                body = {"nonce": nonce, "public_key": os.urandom(32).hex(), "evidence": garbage}
                assert http.post("/v1/workers/register", json=body).status_code in (400, 403)
            register(coord.url, dep.attester, http)  # a genuine worker, during the flood
        with sqlite3.connect(db) as conn:
            (during,) = conn.execute("select count(*) from veil_audit_log").fetchone()
        assert during - before < 10, f"{during - before} audit rows for {UNKNOWN + GARBAGE} refused requests"

        records = admin.audit(dep.policy(coord.url), dep.admin)  # flushes the tally into summary rows
        summaries = [r for r in records if r["event"] == "worker.register" and r["decision"] == "refused"]
        assert sum(r["detail"]["count"] for r in summaries) == GARBAGE  # counted, not written row by row
        assert len(summaries) <= 3
        assert any(r["event"] == "worker.register" and r["decision"] == "accepted" for r in records)
