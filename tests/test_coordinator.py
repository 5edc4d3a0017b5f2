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
    assert store.encode_configs() == coord.http.get("/.well-known/ohttp-gateway").content
    assert len(coord.http.get("/v1/workers").json()) == 1


def _assert_refused(resp, reason_prefix: str) -> None:
    assert resp.status_code in (400, 403), resp.text
    body = resp.json()
    assert "sealed_secrets" not in body
    assert body["error"]["reason"].startswith(reason_prefix), body


def test_wrong_measurement_refused(coord, sim_dir) -> None:
    resp, key, nonce = None, None, None
    nonce = bytes.fromhex(coord.http.post("/v1/workers/challenge").json()["nonce"])
    key = X25519PrivateKey.generate()
    ev = SimPlatform.load(sim_dir).attest(
        worker_report_data(nonce, keyrelease.public_bytes(key)), measurement=b"\x42" * 48
    )
    resp, _, _ = _register(coord, evidence={"platform": "sim-snp", "snp": ev.to_json()}, nonce=nonce, key=key)
    _assert_refused(resp, "snp.measurement")
    assert coord.http.get("/v1/workers").json() == []


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
        make_manifest(sim_dir, mallory, coord.attester.measurement.hex()), [mallory], coord.signed.digest.hex()
    )
    resp = coord.http.post("/v1/manifest", content=evil.model_dump_json())
    assert resp.status_code == 403
    assert resp.json()["error"]["reason"] == "manifest.unsigned"
    good = sign_manifest(
        make_manifest(sim_dir, coord.admin, coord.attester.measurement.hex(), settings={"v": 2}),
        [coord.admin],
        coord.signed.digest.hex(),
    )
    assert coord.http.post("/v1/manifest", content=good.model_dump_json()).status_code == 200
    assert len(coord.http.get("/v1/manifest/history").json()) == 2


def test_oversized_body_refused(coord) -> None:
    resp = coord.http.post("/v1/manifest", content=b"x" * (2 << 20))
    assert resp.status_code == 413
    assert resp.json()["error"]["reason"] == "http.body_too_large"
