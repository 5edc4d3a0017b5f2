"""Builders shared by the coordinator, client and end-to-end tests: a sim platform, admin, manifest.

A coordinator here is launched as production ones are: the bootstrap admin key in its launch data
(the simulated HOST_DATA), and every manifest naming the coordinator's state identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from veil.attest.attester import SimSnpAttester
from veil.client.policy import ClientPolicy
from veil.coordinator.app import create_app
from veil.coordinator.keys import Rotation
from veil.coordinator.state import CoordinatorState
from veil.manifest import Manifest, ModelEntry, ReferenceValues, SignedManifest, public_key_hex, sign_manifest


@dataclass
class Coordinator:
    http: TestClient
    state: CoordinatorState
    attester: SimSnpAttester
    admin: Ed25519PrivateKey
    signed: SignedManifest

    def policy(self, url: str = "http://testserver") -> ClientPolicy:
        """A client policy trusting this coordinator (its measurement, the admin key, simulation)."""
        m = self.signed.manifest
        return ClientPolicy(
            coordinator_url=url,
            coordinator=m.coordinator,
            admin_keys=[public_key_hex(self.admin)],
            trust_simulated=True,
            simulation_roots=m.trusted_simulation_roots,
        )

    def read(self, path: str, **params) -> dict:
        """A signed admin read (audit, workers, secrets), as `veil audit` makes it."""
        from veil import admin

        return admin.signed_read(self.policy(), self.admin, path, params, http=self.http)

    def manifest(self, sim_dir: Path, **kw) -> Manifest:
        """A manifest for this coordinator (its measurement and state identity)."""
        return make_manifest(sim_dir, self.admin, self.attester.measurement.hex(), coordinator_identity=self.state.identity, **kw)


def launched_attester(sim_dir: Path, admin: Ed25519PrivateKey) -> SimSnpAttester:
    """A simulated chip whose VMM put ``admin``'s public key in HOST_DATA (the bootstrap key)."""
    return SimSnpAttester(sim_dir, host_data=bytes.fromhex(public_key_hex(admin)))


def make_manifest(sim_dir: Path, admin: Ed25519PrivateKey, measurement: str, **kw) -> Manifest:
    from veil.attest.sim import SimPlatform

    refs = [ReferenceValues(platform="sim-snp", measurements=[measurement])]
    kw.setdefault("models", [ModelEntry(name="test-model", sha256="00" * 32)])
    kw.setdefault("trusted_simulation_roots", [SimPlatform.load(sim_dir).root_fingerprint])
    return Manifest(coordinator=refs, workers=refs, admin_keys=[public_key_hex(admin)], **kw)


def start_coordinator(sim_dir: Path, *, set_manifest: bool = True, rotation: Rotation = Rotation()) -> Coordinator:
    """``rotation``: e.g. ``Rotation(promotion=0)`` to have a manifest change attest new keys at once."""
    admin = Ed25519PrivateKey.generate()
    attester = launched_attester(sim_dir, admin)
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(admin), rotation=rotation)
    http = TestClient(create_app(state, attester))
    signed = sign_manifest(
        make_manifest(sim_dir, admin, attester.measurement.hex(), coordinator_identity=state.identity), [admin], None
    )
    if set_manifest:
        resp = http.post("/v1/manifest", content=signed.model_dump_json())
        assert resp.status_code == 200, resp.text
    return Coordinator(http, state, attester, admin, signed)
