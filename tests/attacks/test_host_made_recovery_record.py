"""Attack: the host serves `veil recover` a recovery record of its own making (issue 9.1).

The attacker controls the host: the locked coordinator's database, hence the recovery records and
the history that `GET /v1/recovery` and `GET /v1/manifest/history` serve. It seals a state key of
its own to the admin's (public) recovery key, beside the deployment's genuine public history, hoping
the admin restores (and authorises) the host's state. `veil recover` opens the record, sees that the
key inside derives another state identity than the trusted manifest names, and refuses with
``recovery.record_not_authentic`` before sending anything: the coordinator stays locked.
"""

from __future__ import annotations

from attacks.coordproc import Deployment, build_host_state, veil_cli
from veil import keyrelease


def test_veil_recover_refuses_a_host_made_record(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    db = tmp_path / "coordinator.db"
    with dep.coordinator(db) as coord:
        dep.set_up(coord)

    build_host_state(db, recovery_public=keyrelease.public_bytes(dep.recovery))
    admin_key, recovery_key, policy_path = dep.write_keys()
    with dep.coordinator(db) as coord:
        assert coord.attestation()["locked"] is True
        dep.policy(coord.url).save(policy_path)
        done = veil_cli(
            "recover", "--recovery-key", str(recovery_key), "--admin-key", str(admin_key), "--policy", str(policy_path)
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "recovery.record_not_authentic" in done.stderr, done.stderr
        after = coord.attestation()
        assert after["locked"] is True and after["manifest"] is None
