"""Builders shared by the coordinator, client and end-to-end tests: a sim platform, admin, manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from veil.attest.attester import SimSnpAttester
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.manifest import Manifest, ModelEntry, ReferenceValues, SignedManifest, public_key_hex, sign_manifest


@dataclass
class Coordinator:
    http: TestClient
    state: CoordinatorState
    attester: SimSnpAttester
    admin: Ed25519PrivateKey
    signed: SignedManifest


def make_manifest(sim_dir: Path, admin: Ed25519PrivateKey, measurement: str, **kw) -> Manifest:
    from veil.attest.sim import SimPlatform

    refs = [ReferenceValues(platform="sim-snp", measurements=[measurement])]
    return Manifest(
        coordinator=refs,
        workers=refs,
        models=[ModelEntry(name="test-model", sha256="00" * 32)],
        admin_keys=[public_key_hex(admin)],
        trusted_simulation_roots=[SimPlatform.load(sim_dir).root_fingerprint],
        **kw,
    )


def start_coordinator(sim_dir: Path, *, set_manifest: bool = True) -> Coordinator:
    attester = SimSnpAttester(sim_dir)
    state = CoordinatorState.generate()
    http = TestClient(create_app(state, attester))
    admin = Ed25519PrivateKey.generate()
    signed = sign_manifest(make_manifest(sim_dir, admin, attester.measurement.hex()), [admin], None)
    if set_manifest:
        resp = http.post("/v1/manifest", content=signed.model_dump_json())
        assert resp.status_code == 200, resp.text
    return Coordinator(http, state, attester, admin, signed)
