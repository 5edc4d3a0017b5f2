"""Attack: whoever reaches a fresh coordinator first sets its first manifest (issue 9.8).

The attacker controls the network path to a freshly started coordinator and gets there before the
admins: it reads the attested state identity (public) and posts a first manifest of its own,
signed by its own key, that names itself admin. Refused with ``manifest.not_bootstrap_signed``: the
first manifest must be signed by the bootstrap admin key the coordinator was launched with in its
measured launch data (HOST_DATA on SEV-SNP, the simulated HOST_DATA here). The admins' own first
manifest is then accepted.
"""

from __future__ import annotations

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attacks.coordproc import Deployment
from deployment_fixtures import make_manifest
from veil.manifest import sign_manifest


def test_first_manifest_needs_the_bootstrap_key(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    with dep.coordinator() as coord:
        identity = coord.attestation()["identity"]
        mallory = Ed25519PrivateKey.generate()
        evil = make_manifest(dep.sim_dir, mallory, dep.attester.measurement.hex(), coordinator_identity=identity)
        resp = httpx.post(f"{coord.url}/v1/manifest", content=sign_manifest(evil, [mallory], None).model_dump_json())
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["reason"] == "manifest.not_bootstrap_signed"
        assert coord.attestation()["manifest"] is None

        genuine = sign_manifest(dep.manifest(identity), [dep.admin], None)
        resp = httpx.post(f"{coord.url}/v1/manifest", content=genuine.model_dump_json())
        assert resp.status_code == 200, resp.text
        assert coord.attestation()["manifest_digest"] == genuine.digest.hex()
