"""Attack: the host deletes, forges or rolls back the audit log admins read (issue 9.7).

The attacker controls the host, hence the coordinator's database and its restarts: it deletes a
record from the middle of the audit log, overwrites one with bytes of its own, or removes the newest
records (a rollback to before the admin's last look) and restarts the coordinator. Refused: a
missing record breaks the hash chain (``audit.chain_broken``), a forged row does not open under the
state key (``state.tampered``), and `veil audit` finds the log no longer holds the head it saw last
time (``audit.rollback``).
"""

from __future__ import annotations

import os
import shutil
import sqlite3

import pytest

from attacks.coordproc import Deployment, veil_cli
from veil import admin
from veil.testing import free_port


def _copy(db, to) -> None:
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{db}{suffix}"):
            shutil.copy(f"{db}{suffix}", f"{to}{suffix}")


def test_audit_log_tampering_is_detected(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    pristine, port = tmp_path / "pristine.db", free_port()  # one address, so the admin's last head applies
    admin_key, _, policy_path = dep.write_keys()
    with dep.coordinator(pristine, port=port) as coord:
        dep.set_up(coord)
        policy = dep.policy(coord.url)
        for n in (2, 3):  # more history, more audit records
            admin.set_manifest(policy, dep.admin, dep.manifest(dep.signed.manifest.coordinator_identity, settings={"v": n}))
        policy.save(policy_path)
        seen = veil_cli("audit", "--json", "--policy", str(policy_path), "--admin-key", str(admin_key))
        assert seen.returncode == 0, seen.stderr
    with sqlite3.connect(pristine) as db:
        (count,) = db.execute("select count(*) from veil_audit_log").fetchone()
    assert count >= 4

    def attacked(name: str, sql: str, *params: object):
        copy = tmp_path / f"{name}.db"
        _copy(pristine, copy)
        with sqlite3.connect(copy) as db:
            db.execute(sql, params)
        return dep.coordinator(copy, port=port)

    with attacked("deleted", "delete from veil_audit_log where seq = 2"):
        with pytest.raises(admin.AdminError) as exc:
            admin.audit(policy, dep.admin)
        assert exc.value.reason == "audit.chain_broken"

    with attacked("forged", "update veil_audit_log set sealed = ? where seq = 2", os.urandom(120)):
        with pytest.raises(admin.AdminError) as exc:
            admin.audit(policy, dep.admin)
        assert exc.value.reason == "state.tampered"

    with attacked("rolled-back", "delete from veil_audit_log where seq >= ?", count - 1):
        done = veil_cli("audit", "--policy", str(policy_path), "--admin-key", str(admin_key))
        assert done.returncode == 1 and "audit.rollback" in done.stderr, done.stdout + done.stderr
