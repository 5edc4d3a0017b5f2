"""Attack: the host restores a coordinator onto a state of its own making (issue 9.1).

The attacker controls the host: the coordinator's disk and database, its restarts, and the network
to it. It builds a database under a state key of its own (its own OHTTP keys, the deployment's
public manifest history), makes the platform-sealed state key unreadable, restarts the genuine,
correctly measured coordinator (which comes up locked), and posts its own state key, sealed to the
attested key, with an authorisation it signed itself — or one claiming to come from the admin.
Refused with ``recovery.unauthorized``: a restore needs a signature by an admin of the restored
history over this coordinator's attested key, the state's identity and its head.
"""

from __future__ import annotations

import base64

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attacks.coordproc import Deployment, build_host_state
from veil import keyrelease
from veil.attestation import RESTORE_CONTEXT, restore_statement, sign_statement
from veil.coordinator.state import RECOVERY_UPLOAD_INFO
from veil.manifest import public_key_hex


def test_host_cannot_restore_a_state_of_its_own(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    db = tmp_path / "coordinator.db"
    with dep.coordinator(db) as coord:
        signed = dep.set_up(coord)

    host_seed = build_host_state(db)
    with dep.coordinator(db) as coord:  # the genuine code, restarted by the host on its database
        body = coord.attestation()
        assert body["locked"] is True and body["manifest"] is None
        target = bytes.fromhex(body["public_key"])
        sealed = base64.b64encode(keyrelease.seal(target, host_seed.secret, RECOVERY_UPLOAD_INFO)).decode()
        mallory = Ed25519PrivateKey.generate()
        statement = restore_statement(target, host_seed.identity, signed.digest)
        attempts = [
            (public_key_hex(mallory), sign_statement(mallory, RESTORE_CONTEXT, *statement)),  # its own "admin"
            (public_key_hex(dep.admin), sign_statement(mallory, RESTORE_CONTEXT, *statement)),  # the admin's name
        ]
        for admin_key, signature in attempts:
            resp = httpx.post(
                f"{coord.url}/v1/recover",
                timeout=30,
                json={"sealed_state_key": sealed, "admin_key": admin_key, "signature": signature},
            )
            assert resp.status_code == 403, resp.text
            assert resp.json()["error"]["reason"] == "recovery.unauthorized"
        after = coord.attestation()
        assert after["locked"] is True and after["manifest"] is None  # nothing of the host's is attested
        assert after["key_configs"] == body["key_configs"]
