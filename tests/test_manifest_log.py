"""The client's manifest log refuses a coordinator that rolls back or forks its history."""

from __future__ import annotations

import pytest

from deployment_fixtures import start_coordinator
from veil.attest.sim import SimPlatform
from veil.client.manifest_log import ManifestLog
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.errors import PolicyError
from veil.manifest import public_key_hex, sign_manifest

URL = "http://testserver"


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    SimPlatform.create(d)
    return d


def _policy(coord) -> ClientPolicy:
    m = coord.signed.manifest
    return ClientPolicy(
        coordinator_url=URL,
        coordinator=m.coordinator,
        admin_keys=[public_key_hex(coord.admin)],
        trust_simulated=True,
        simulation_roots=m.trusted_simulation_roots,
    )


def _update(coord, sim_dir, n: int, previous: str):
    entry = sign_manifest(coord.manifest(sim_dir, settings={"n": n}), [coord.admin], previous)
    assert coord.http.post("/v1/manifest", content=entry.model_dump_json()).status_code == 200
    return entry


def test_forward_updates_are_followed(sim_dir, tmp_path) -> None:
    coord = start_coordinator(sim_dir)
    log = ManifestLog(tmp_path / "log.json")
    verify_coordinator(_policy(coord), http=coord.http, manifest_log=log)
    second = _update(coord, sim_dir, 2, coord.signed.digest.hex())
    third = _update(coord, sim_dir, 3, second.digest.hex())
    attested = verify_coordinator(_policy(coord), http=coord.http, manifest_log=log)
    assert attested.manifest.digest == third.digest
    assert log.seen(URL) == [coord.signed.digest.hex(), second.digest.hex(), third.digest.hex()]


def test_rollback_refused(sim_dir, tmp_path) -> None:
    coord = start_coordinator(sim_dir)
    log = ManifestLog(tmp_path / "log.json")
    _update(coord, sim_dir, 2, coord.signed.digest.hex())
    verify_coordinator(_policy(coord), http=coord.http, manifest_log=log)
    coord.state.history.pop()  # a malicious host restores an old database
    with pytest.raises(PolicyError) as exc:
        verify_coordinator(_policy(coord), http=coord.http, manifest_log=log)
    assert exc.value.reason == "manifest.rollback"


def test_fork_refused(sim_dir, tmp_path) -> None:
    coord = start_coordinator(sim_dir)
    log = ManifestLog(tmp_path / "log.json")
    _update(coord, sim_dir, 2, coord.signed.digest.hex())
    verify_coordinator(_policy(coord), http=coord.http, manifest_log=log)
    coord.state.history.pop()
    _update(coord, sim_dir, 99, coord.signed.digest.hex())  # another branch from the same root
    with pytest.raises(PolicyError) as exc:
        verify_coordinator(_policy(coord), http=coord.http, manifest_log=log)
    assert exc.value.reason == "manifest.fork"
