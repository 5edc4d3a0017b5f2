"""Coordinator state sealed at rest: restart, tampering, secret upload, release policies, audit,
and recovery into a new coordinator."""

from __future__ import annotations

import base64
import json
import os
import sqlite3

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from fastapi.testclient import TestClient

from deployment_fixtures import launched_attester, make_manifest
from veil import admin, keyrelease, wire
from veil.attest.binding import worker_report_data
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.coordinator.store import Store
from veil.errors import VeilError
from veil.manifest import ModelEntry, ReleasePolicy, public_key_hex, sign_manifest

DATA_KEY = os.urandom(32)


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    SimPlatform.create(d)
    return d


ADMIN = Ed25519PrivateKey.generate()  # the bootstrap admin every coordinator here is launched with


class Deployment:
    """A coordinator on a sealed SQLite store, reachable through TestClient as httpx."""

    def __init__(self, sim_dir, db_path, platform_key=None) -> None:
        self.attester = launched_attester(sim_dir, ADMIN)
        self.db_url = f"sqlite:///{db_path}"
        self.state = CoordinatorState.open(
            Store.from_url(self.db_url), platform_key or self.attester.sealing_key(), public_key_hex(ADMIN)
        )
        self.http = TestClient(create_app(self.state, self.attester), base_url="http://coord")

    def read(self, path: str, **params):
        policy = self.policy(admin_key=public_key_hex(ADMIN))
        return admin.signed_read(policy, ADMIN, path, params, http=self.http)

    def audit(self) -> list[dict]:
        return self.read("/v1/audit")["records"]

    def policy(self, signed=None, admin_key=None) -> ClientPolicy:
        refs = signed.manifest.coordinator if signed else None
        from veil.manifest import ReferenceValues

        return ClientPolicy(
            coordinator_url="http://coord",
            coordinator=refs or [ReferenceValues(platform="sim-snp", measurements=[self.attester.measurement.hex()])],
            manifest_digests=[signed.digest.hex()] if signed else [],
            admin_keys=[] if admin_key is None else [admin_key],
            trust_simulated=True,
            simulation_roots=[SimPlatform.load(self.attester._sim.directory).root_fingerprint],
        )


def _manifest(sim_dir, admin_key, dep, *, release=None, recovery=(), previous=None, settings=None):
    m = make_manifest(
        sim_dir, admin_key, dep.attester.measurement.hex(), settings=settings or {}, coordinator_identity=dep.state.identity
    )
    m = m.model_copy(
        update={
            "models": [ModelEntry(name="sealed-model", sha256="11" * 32, key_id="model-key")],
            "release_policies": {"model-key": release} if release else {},
            "recovery_keys": list(recovery),
        }
    )
    return sign_manifest(m, [admin_key], previous)


def _register(dep: Deployment):
    key = X25519PrivateKey.generate()
    public = keyrelease.public_bytes(key)
    nonce = bytes.fromhex(dep.http.post("/v1/workers/challenge").json()["nonce"])
    ev = dep.attester.evidence(worker_report_data(nonce, public))
    resp = dep.http.post("/v1/workers/register", json={"nonce": nonce.hex(), "public_key": public.hex(), "evidence": ev})
    if resp.status_code != 200:
        return resp, None
    blob = base64.b64decode(resp.json()["sealed_secrets"])
    return resp, json.loads(keyrelease.open_sealed(key, blob, wire.WORKER_SECRETS_INFO, aad=nonce))


def test_restart_restores_keys_manifests_and_secrets(sim_dir, tmp_path) -> None:
    a = ADMIN
    dep = Deployment(sim_dir, tmp_path / "c.db")
    signed = _manifest(sim_dir, a, dep, release=ReleasePolicy(allow_simulated=True))
    assert dep.http.post("/v1/manifest", content=signed.model_dump_json()).status_code == 200
    admin.put_secret(dep.policy(signed), a, "model-key", DATA_KEY, http=dep.http)
    keys_before = dep.http.get("/.well-known/ohttp-gateway").content

    again = Deployment(sim_dir, tmp_path / "c.db")  # same measured code, same (simulated) chip
    assert not again.state.locked
    assert again.http.get("/.well-known/ohttp-gateway").content == keys_before
    assert [e.digest for e in again.state.history] == [signed.digest]
    assert again.read("/v1/secrets") == {"key_ids": ["model-key"]}
    resp, secrets = _register(again)  # workers re-register against the restarted coordinator
    assert resp.status_code == 200 and secrets["data_keys"] == {"model-key": DATA_KEY.hex()}


def test_nothing_secret_is_stored_in_the_clear(sim_dir, tmp_path) -> None:
    a = ADMIN
    dep = Deployment(sim_dir, tmp_path / "c.db")
    signed = _manifest(sim_dir, a, dep, release=ReleasePolicy(allow_simulated=True))
    dep.http.post("/v1/manifest", content=signed.model_dump_json())
    admin.put_secret(dep.policy(signed), a, "model-key", DATA_KEY, http=dep.http)
    _register(dep)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("c.db*"))
    ohttp_private = dep.state.ohttp_keys.get(1).private_bytes()
    for secret in (DATA_KEY, ohttp_private, DATA_KEY.hex().encode(), ohttp_private.hex().encode()):
        assert secret not in raw
    audit_text = json.dumps(dep.audit())
    assert DATA_KEY.hex() not in audit_text


def test_tampered_row_is_refused_on_restart(sim_dir, tmp_path) -> None:
    a = ADMIN
    dep = Deployment(sim_dir, tmp_path / "c.db")
    signed = _manifest(sim_dir, a, dep, release=ReleasePolicy(allow_simulated=True))
    dep.http.post("/v1/manifest", content=signed.model_dump_json())
    admin.put_secret(dep.policy(signed), a, "model-key", DATA_KEY, http=dep.http)
    with sqlite3.connect(tmp_path / "c.db") as db:
        (blob,) = db.execute("select sealed_value from veil_secrets").fetchone()
        db.execute("update veil_secrets set sealed_value = ?", (blob[:-1] + bytes([blob[-1] ^ 1]),))
    with pytest.raises(VeilError) as exc:
        Deployment(sim_dir, tmp_path / "c.db")
    assert exc.value.reason == "state.tampered"


def test_secret_upload_refusals(sim_dir, tmp_path) -> None:
    a, mallory = ADMIN, Ed25519PrivateKey.generate()
    dep = Deployment(sim_dir, tmp_path / "c.db")
    signed = _manifest(sim_dir, a, dep)
    dep.http.post("/v1/manifest", content=signed.model_dump_json())
    with pytest.raises(admin.AdminError) as exc:
        admin.put_secret(dep.policy(signed), mallory, "k", DATA_KEY, http=dep.http)
    assert exc.value.reason == "secret.not_admin"
    # a valid admin signature over a different ciphertext
    sealed = keyrelease.seal(dep.state.hpke_key.public_key().public_bytes_raw(), DATA_KEY, wire.ADMIN_SECRET_INFO, aad=b"k")
    body = {
        "key_id": "k",
        "sealed": base64.b64encode(sealed).decode(),
        "admin_key": a.public_key().public_bytes_raw().hex(),
        "signature": a.sign(keyrelease.secret_upload_message("k", sealed + b"x")).hex(),
    }
    resp = dep.http.post("/v1/secrets", json=body)
    assert resp.status_code == 403 and resp.json()["error"]["reason"] == "secret.bad_signature"
    # sealed for another purpose (aad names another key id) does not open
    body["signature"] = a.sign(keyrelease.secret_upload_message("other", sealed)).hex()
    body["key_id"] = "other"
    resp = dep.http.post("/v1/secrets", json=body)
    assert resp.status_code == 400 and resp.json()["error"]["reason"] == "keyrelease.open_failed"
    admin.put_secret(dep.policy(signed), a, "k", DATA_KEY, http=dep.http)
    with pytest.raises(admin.AdminError) as exc:
        admin.put_secret(dep.policy(signed), a, "k", os.urandom(32), http=dep.http)
    assert exc.value.reason == "secret.exists"


@pytest.mark.parametrize(
    "policy,reason",
    [
        (None, "release.no_policy"),
        (ReleasePolicy(), "release.simulated_refused"),
        (ReleasePolicy(allow_simulated=True, measurements=["00" * 48]), "release.measurement_not_allowed"),
        (ReleasePolicy(allow_simulated=True, require_gpu=True), "release.gpu_required"),
        (ReleasePolicy(allow_simulated=True, min_tcb={"snp": 255}), "release.tcb_too_old"),
    ],
)
def test_release_policy_refusals_are_audited(sim_dir, tmp_path, policy, reason) -> None:
    a = ADMIN
    dep = Deployment(sim_dir, tmp_path / "c.db")
    signed = _manifest(sim_dir, a, dep, release=policy)
    dep.http.post("/v1/manifest", content=signed.model_dump_json())
    admin.put_secret(dep.policy(signed), a, "model-key", DATA_KEY, http=dep.http)
    resp, secrets = _register(dep)
    assert resp.status_code == 200
    assert secrets["data_keys"] == {}
    decisions = [r for r in dep.audit() if r["event"] == "secret.release"]
    assert decisions[-1]["decision"] == "refused" and decisions[-1]["reason"] == reason


def test_recovery_into_a_new_coordinator(sim_dir, tmp_path) -> None:
    a = ADMIN
    recovery_key = X25519PrivateKey.generate()
    dep = Deployment(sim_dir, tmp_path / "c.db")
    signed = _manifest(
        sim_dir, a, dep, release=ReleasePolicy(allow_simulated=True), recovery=[keyrelease.public_bytes(recovery_key).hex()]
    )
    dep.http.post("/v1/manifest", content=signed.model_dump_json())
    admin.put_secret(dep.policy(signed), a, "model-key", DATA_KEY, http=dep.http)

    # the "new machine": its platform key differs, so the stored state stays sealed: locked
    new = Deployment(sim_dir, tmp_path / "c.db", platform_key=os.urandom(32))
    assert new.state.locked
    assert new.http.get("/v1/attestation", params={"nonce": "22" * 32}).json()["locked"] is True
    resp, _ = _register(new)
    assert resp.status_code == 403 and resp.json()["error"]["reason"] == "state.locked"

    # a wrong recovery key cannot open the records
    target = new.policy(admin_key=public_key_hex(a))
    with pytest.raises(VeilError):
        admin.recover("http://coord", X25519PrivateKey.generate(), a, target, http=new.http)
    result = admin.recover("http://coord", recovery_key, a, target, http=new.http)
    assert result == {"restored": True, "manifests": 1, "secrets": 1}
    assert new.state.identity == dep.state.identity  # the same state, so the same attested keys
    resp, secrets = _register(new)
    assert resp.status_code == 200 and secrets["data_keys"] == {"model-key": DATA_KEY.hex()}
    assert any(r["event"] == "recovery" for r in new.audit())


def test_concurrent_writer_conflict_is_a_clean_refusal(sim_dir, tmp_path) -> None:
    """Two coordinators on one database racing for the same history slot: the loser gets
    state.conflict (HTTP 403 with a reason), never a 500, and nothing is half-written."""
    a = ADMIN
    one = Deployment(sim_dir, tmp_path / "c.db")
    two = Deployment(sim_dir, tmp_path / "c.db")
    first = _manifest(sim_dir, a, one)
    assert one.http.post("/v1/manifest", content=first.model_dump_json()).status_code == 200
    two.state.refresh = lambda **_: None  # freeze two's view, as if it lost the race after reading
    rival = _manifest(sim_dir, a, one, settings={"rival": True})
    resp = two.http.post("/v1/manifest", content=rival.model_dump_json())
    assert resp.status_code == 403 and resp.json()["error"]["reason"] == "state.conflict"
    assert [e.digest for e in Deployment(sim_dir, tmp_path / "c.db").state.history] == [first.digest]


def test_history_rows_removed_underneath_are_refused(sim_dir, tmp_path) -> None:
    """The history is stored in the clear (it is public); a sealed head catches a host that drops
    its newest entries to serve an older manifest after a restart."""
    a = ADMIN
    dep = Deployment(sim_dir, tmp_path / "c.db")
    first = _manifest(sim_dir, a, dep)
    assert dep.http.post("/v1/manifest", content=first.model_dump_json()).status_code == 200
    second = _manifest(sim_dir, a, dep, previous=first.digest.hex(), settings={"v": 2})
    assert dep.http.post("/v1/manifest", content=second.model_dump_json()).status_code == 200
    with sqlite3.connect(tmp_path / "c.db") as db:
        db.execute("delete from veil_history where idx = 1")
    with pytest.raises(VeilError) as exc:
        Deployment(sim_dir, tmp_path / "c.db")
    assert exc.value.reason == "state.history_mismatch"
