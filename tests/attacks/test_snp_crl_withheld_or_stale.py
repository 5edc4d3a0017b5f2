"""Attack: a worker's host withholds the CRL, or replays an old one, to hide a revocation.

The attacker controls the worker's host: the collateral on its disk, the evidence JSON it sends,
and (on sim-snp) the simulated chip's keys, so it can sign any report the chip would. AMD revoked
a certificate of the chain (here: the simulated KDS lists the ASK); the host wants the coordinator
to accept the worker anyway. Defence: the verifier requires an ARK-signed CRL for every SEV-SNP
evidence (none -> ``snp.crl_missing``), current at verification time (``snp.crl_expired``,
``snp.crl_not_yet_valid``) and at most 400 days old whatever its own next update says
(``snp.crl_stale``); a current CRL that lists the ASK gives ``snp.revoked``. The target is a real
coordinator process; the control run registers the same worker with an honest, current CRL.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from platform_fixtures import reason, start_coordinator
from veil.attest.binding import worker_report_data
from veil.attest.sim import SimPlatform, measure_code
from veil.manifest import ReferenceValues

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def target(tmp_path_factory):  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("snp-crl-attack")
    sim = SimPlatform.create(work / "sim")
    coordinator = start_coordinator("sim-snp", sim.directory, work)
    refs = [ReferenceValues(platform="sim-snp", measurements=[measure_code().hex()])]
    coordinator.set_manifest(refs, refs, [sim.root_fingerprint])
    yield coordinator, sim
    coordinator.stop()


def _worker(sim: SimPlatform, crl: bytes | None):  # type: ignore[no-untyped-def]
    """The host's evidence for a worker running exactly the manifest's code, with ``crl``."""

    def evidence(nonce: bytes, key: bytes) -> dict:  # type: ignore[type-arg]
        ev = sim.attest(worker_report_data(nonce, key), measurement=measure_code())
        return {"platform": "sim-snp", "snp": dataclasses.replace(ev, crl=crl).to_json()}

    return evidence


def test_control_current_crl_registers(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim = target
    assert reason(coordinator.register(_worker(sim, sim.issue_crl()))) == "ok"


def test_withheld_crl_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim = target
    assert reason(coordinator.register(_worker(sim, None))) == "snp.crl_missing"


def test_replayed_expired_crl_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim = target
    old = sim.issue_crl(days=7, issued=dt.datetime.now(UTC) - dt.timedelta(days=30))  # from before the revocation
    assert reason(coordinator.register(_worker(sim, old))) == "snp.crl_expired"


def test_long_lived_but_stale_crl_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim = target
    ancient = sim.issue_crl(days=5 * 365, issued=dt.datetime.now(UTC) - dt.timedelta(days=401))
    assert reason(coordinator.register(_worker(sim, ancient))) == "snp.crl_stale"


def test_current_crl_listing_the_ask_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim = target
    assert reason(coordinator.register(_worker(sim, sim.issue_crl([sim.ask.serial_number])))) == "snp.revoked"
