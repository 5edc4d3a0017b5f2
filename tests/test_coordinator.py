"""Coordinator: manifests, attestation, and worker registration that releases keys only to
verified evidence bound to a fresh challenge."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from deployment_fixtures import make_manifest, start_coordinator
from veil import keyrelease, wire
from veil.attest.binding import worker_report_data
from veil.attest.sim import SimPlatform
from veil.manifest import sign_manifest
from veil.ohttp.keyconfig import decode_key_config_list


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    SimPlatform.create(d)
    return d


@pytest.fixture()
def coord(sim_dir):
    return start_coordinator(sim_dir)


def _register(coord, *, evidence=None, nonce=None, key=None, bind_key=None):
    key = key or X25519PrivateKey.generate()
    public = keyrelease.public_bytes(key)
    if nonce is None:
        nonce = bytes.fromhex(coord.http.post("/v1/workers/challenge").json()["nonce"])
    if evidence is None:
        bound = keyrelease.public_bytes(bind_key) if bind_key else public
        evidence = coord.attester.evidence(worker_report_data(nonce, bound))
    resp = coord.http.post(
        "/v1/workers/register",
        json={"nonce": nonce.hex(), "public_key": public.hex(), "evidence": evidence},
    )
    return resp, key, nonce


def test_attestation_binds_manifest_and_keys(coord) -> None:
    body = coord.http.get("/v1/attestation", params={"nonce": "11" * 32}).json()
    assert body["platform"] == "sim-snp"
    assert body["manifest_digest"] == coord.signed.digest.hex()
    assert body["evidence"]["platform"] == "sim-snp"
    keys = coord.http.get("/.well-known/ohttp-gateway")
    assert keys.headers["content-type"] == "application/ohttp-keys"
    assert base64.b64decode(body["key_configs"]) == keys.content


@pytest.mark.parametrize("nonce", ["zz", "11" * 8, "11" * 65])
def test_attestation_refuses_bad_nonce(coord, nonce) -> None:
    resp = coord.http.get("/v1/attestation", params={"nonce": nonce})
    assert resp.status_code in (400, 422)


def test_worker_registration_releases_keys(coord) -> None:
    resp, key, nonce = _register(coord)
    assert resp.status_code == 200, resp.text
    blob = base64.b64decode(resp.json()["sealed_secrets"])
    secrets = json.loads(keyrelease.open_sealed(key, blob, wire.WORKER_SECRETS_INFO, aad=nonce))
    assert secrets["manifest_digest"] == coord.signed.digest.hex()
    store = keyrelease.import_ohttp_keys(secrets["ohttp_keys"])
    attested = [c.key_id for c in decode_key_config_list(coord.http.get("/.well-known/ohttp-gateway").content)]
    released = [c.key_id for c in store.configs()]
    assert released[0] == attested[0] and set(attested) <= set(released)  # plus the pending generation
    assert len(coord.read("/v1/workers")["workers"]) == 1


def _assert_refused(resp, reason_prefix: str) -> None:
    assert resp.status_code in (400, 403), resp.text
    body = resp.json()
    assert "sealed_secrets" not in body
    assert body["error"]["reason"].startswith(reason_prefix), body


def test_wrong_measurement_refused(coord, sim_dir) -> None:
    resp, key, nonce = None, None, None
    nonce = bytes.fromhex(coord.http.post("/v1/workers/challenge").json()["nonce"])
    key = X25519PrivateKey.generate()
    ev = SimPlatform.load(sim_dir).attest(worker_report_data(nonce, keyrelease.public_bytes(key)), measurement=b"\x42" * 48)
    resp, _, _ = _register(coord, evidence={"platform": "sim-snp", "snp": ev.to_json()}, nonce=nonce, key=key)
    _assert_refused(resp, "snp.measurement")
    assert coord.read("/v1/workers")["workers"] == []


def test_replayed_nonce_refused(coord) -> None:
    resp, key, nonce = _register(coord)
    assert resp.status_code == 200
    again, _, _ = _register(coord, nonce=nonce, key=key)
    _assert_refused(again, "nonce.unknown")


def test_unissued_nonce_refused(coord) -> None:
    resp, _, _ = _register(coord, nonce=b"\x01" * 32)
    _assert_refused(resp, "nonce.unknown")


def test_evidence_bound_to_other_key_refused(coord) -> None:
    resp, _, _ = _register(coord, bind_key=X25519PrivateKey.generate())
    _assert_refused(resp, "binding.report_data_mismatch")


def test_untrusted_simulation_root_refused(coord, tmp_path) -> None:
    other = SimPlatform.create(tmp_path / "other")
    nonce = bytes.fromhex(coord.http.post("/v1/workers/challenge").json()["nonce"])
    key = X25519PrivateKey.generate()
    ev = other.attest(worker_report_data(nonce, keyrelease.public_bytes(key)), measurement=coord.attester.measurement)
    resp, _, _ = _register(coord, evidence={"platform": "sim-snp", "snp": ev.to_json()}, nonce=nonce, key=key)
    _assert_refused(resp, "snp.untrusted_root")


def test_tampered_evidence_refused(coord) -> None:
    nonce = bytes.fromhex(coord.http.post("/v1/workers/challenge").json()["nonce"])
    key = X25519PrivateKey.generate()
    ev = coord.attester.evidence(worker_report_data(nonce, keyrelease.public_bytes(key)))
    report = bytearray(base64.b64decode(ev["snp"]["report"]))
    report[0x90] ^= 1  # a byte of the measurement, inside the signed region
    ev["snp"]["report"] = base64.b64encode(bytes(report)).decode()
    resp, _, _ = _register(coord, evidence=ev, nonce=nonce, key=key)
    _assert_refused(resp, "snp.")


def test_malformed_evidence_refused(coord) -> None:
    resp, _, _ = _register(coord, evidence={"platform": "sim-snp", "snp": {"report": "!!"}})
    assert resp.status_code in (400, 403)
    resp, _, _ = _register(coord, evidence={"platform": "tdx"})
    _assert_refused(resp, "evidence.platform_not_allowed")


def test_registration_without_manifest_refused(sim_dir) -> None:
    coord = start_coordinator(sim_dir, set_manifest=False)
    resp, _, _ = _register(coord)
    _assert_refused(resp, "manifest.missing")


def test_manifest_update_must_be_signed_by_previous_admin(coord, sim_dir) -> None:
    mallory = Ed25519PrivateKey.generate()
    evil = sign_manifest(
        make_manifest(sim_dir, mallory, coord.attester.measurement.hex(), coordinator_identity=coord.state.identity),
        [mallory],
        coord.signed.digest.hex(),
    )
    resp = coord.http.post("/v1/manifest", content=evil.model_dump_json())
    assert resp.status_code == 403
    assert resp.json()["error"]["reason"] == "manifest.unsigned"
    good = sign_manifest(coord.manifest(sim_dir, settings={"v": 2}), [coord.admin], coord.signed.digest.hex())
    assert coord.http.post("/v1/manifest", content=good.model_dump_json()).status_code == 200
    assert len(coord.http.get("/v1/manifest/history").json()) == 2


def test_oversized_body_refused(coord) -> None:
    resp = coord.http.post("/v1/manifest", content=b"x" * (2 << 20))
    assert resp.status_code == 413
    assert resp.json()["error"]["reason"] == "http.body_too_large"


def test_returning_to_an_earlier_manifest_is_a_new_entry(coord, sim_dir, tmp_path) -> None:
    """15.8: the entry digest covers the position, so manifest A can follow B again; re-posting the
    old entry itself is refused as not naming the head."""
    from veil.client.manifest_log import ManifestLog
    from veil.client.verify import verify_coordinator

    log = ManifestLog(tmp_path / "log.json")
    policy = coord.policy()
    verify_coordinator(policy, http=coord.http, manifest_log=log)
    b = sign_manifest(coord.manifest(sim_dir, settings={"v": "b"}), [coord.admin], coord.signed.digest.hex())
    assert coord.http.post("/v1/manifest", content=b.model_dump_json()).status_code == 200
    again = coord.http.post("/v1/manifest", content=coord.signed.model_dump_json())
    assert again.status_code == 403 and again.json()["error"]["reason"] == "manifest.bad_chain"
    back = sign_manifest(coord.signed.manifest, [coord.admin], b.digest.hex())  # A again, after B
    assert back.manifest.digest() == coord.signed.manifest.digest() and back.digest != coord.signed.digest
    assert coord.http.post("/v1/manifest", content=back.model_dump_json()).status_code == 200
    attested = verify_coordinator(policy, http=coord.http, manifest_log=log)  # the log follows: no "rollback"
    assert attested.manifest.digest == back.digest
    assert log.seen(policy.coordinator_url) == [coord.signed.digest.hex(), b.digest.hex(), back.digest.hex()]


def test_first_manifest_needs_a_bootstrap_key_and_this_state(sim_dir) -> None:
    from veil.coordinator.app import create_app
    from veil.coordinator.state import CoordinatorState
    from fastapi.testclient import TestClient

    fresh = start_coordinator(sim_dir, set_manifest=False)
    unlaunched = TestClient(create_app(CoordinatorState.generate(), fresh.attester))  # no key in its launch data
    resp = unlaunched.post("/v1/manifest", content=fresh.signed.model_dump_json())
    assert resp.status_code == 403 and resp.json()["error"]["reason"] == "manifest.no_bootstrap_key"
    other_state = sign_manifest(
        fresh.manifest(sim_dir).model_copy(update={"coordinator_identity": "ab" * 32}), [fresh.admin], None
    )
    resp = fresh.http.post("/v1/manifest", content=other_state.model_dump_json())
    assert resp.status_code == 403 and resp.json()["error"]["reason"] == "manifest.wrong_coordinator"


def test_registration_answer_is_signed_and_keys_rotate_with_the_manifest(coord, sim_dir) -> None:
    from veil.attestation import REGISTRATION_CONTEXT, registration_statement, verify_statement

    resp, key, nonce = _register(coord)
    body = resp.json()
    verify_statement(
        coord.state.identity,
        body["signature"],
        REGISTRATION_CONTEXT,
        *registration_statement(
            nonce,
            keyrelease.public_bytes(key),
            body["worker_id"],
            bytes.fromhex(body["manifest_digest"]),
            base64.b64decode(body["sealed_secrets"]),
        ),
        reason="registration.bad_signature",
    )
    before = [c.key_id for c in coord.state.ohttp_keys.configs()]
    update = sign_manifest(coord.manifest(sim_dir, settings={"v": 2}), [coord.admin], coord.signed.digest.hex())
    assert coord.http.post("/v1/manifest", content=update.model_dump_json()).status_code == 200
    assert [c.key_id for c in coord.state.ohttp_keys.configs()] == before  # clients: unchanged for now
    released = [c.key_id for c in coord.state.released_keys.configs()]
    assert released[0] == before[0] and len(released) > len(before)  # workers: the pending generation too
    newest = coord.state.keys.newest
    after = [c.key_id for g in coord.state.keys.attested(newest.current_from) for c in g.pairs]
    new = [p.key_id for p in newest.pairs]
    assert after == new + before and not set(new) & set(before)  # then new current keys; the old in their grace


def test_simulated_worker_gets_nothing_unless_the_manifest_names_its_root(sim_dir) -> None:
    """9.2 (coordinator side): keys go to simulated claims only when the manifest lists the root in
    ``trusted_simulation_roots``, the field clients check."""
    fresh = start_coordinator(sim_dir, set_manifest=False)
    no_roots = sign_manifest(fresh.manifest(sim_dir, trusted_simulation_roots=[]), [fresh.admin], None)
    assert fresh.http.post("/v1/manifest", content=no_roots.model_dump_json()).status_code == 200
    resp, _, _ = _register(fresh)
    _assert_refused(resp, "snp.untrusted_root")
