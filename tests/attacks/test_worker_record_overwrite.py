"""Attack: one attested worker overwrites another worker's record (issue 9.8).

The attacker controls a genuinely attested worker and has learned another worker's id (ids are not
secret: they appear in logs and the audit). It re-registers under that id, hoping to take over the
other worker's record (its registration time, its place in the admins' list). Refused with
``register.not_this_worker``: a re-registration must prove, with an HMAC over the fresh challenge,
that it holds the secret the coordinator sealed to that worker when it gave it the id.
"""

from __future__ import annotations

import os

import httpx
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attacks.coordproc import Deployment
from veil import admin, keyrelease
from veil.attest.binding import worker_report_data
from veil.attestation import worker_proof
from veil.worker.registration import register


def test_a_worker_cannot_take_another_workers_id(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    with dep.coordinator() as coord, httpx.Client(base_url=coord.url, timeout=30) as http:
        dep.set_up(coord)
        victim = register(coord.url, dep.attester, http)
        before = admin.list_workers(dep.policy(coord.url), dep.admin)
        assert [w["worker_id"] for w in before] == [victim.worker_id]

        for proof in (None, worker_proof(os.urandom(32), b"\0" * 32, b"\0" * 32)):  # none, or a guessed one
            public = keyrelease.public_bytes(X25519PrivateKey.generate())
            nonce = bytes.fromhex(http.post("/v1/workers/challenge").json()["nonce"])
            body = {
                "nonce": nonce.hex(),
                "public_key": public.hex(),
                "worker_id": victim.worker_id,
                "evidence": dep.attester.evidence(worker_report_data(nonce, public)),
            }  # genuinely attested
            if proof is not None:
                body["worker_proof"] = proof
            resp = http.post("/v1/workers/register", json=body)
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["reason"] == "register.not_this_worker"
        assert admin.list_workers(dep.policy(coord.url), dep.admin) == before  # the record is untouched
        again = register(coord.url, dep.attester, http, previous=victim)  # the real worker keeps its id
        assert again.worker_id == victim.worker_id
