"""Attack: a worker's host backs its TDX quote with collateral that no longer vouches for it.

The attacker controls the worker's host and everything it sends with the quote, the PCS collateral
included (TCB info, QE identity, both CRLs): it can replay collateral it kept from before Intel
revoked its PCK certificate or downgraded its TCB, withhold the CRLs, or run a TCB level Intel's
current TCB info rates OutOfDate. On sim-tdx it also holds the simulated Intel keys, but the
collateral must still be signed by the hierarchy of the root the manifest trusts. Defences: the
coordinator checks the collateral's validity window at its own clock (``tdx.collateral_expired``:
Intel's collateral is valid 30 days, so a replayed one is at most that old), requires both CRLs
(``tdx.collateral_malformed``), refuses a PCK the CRL lists (``tdx.pck_revoked``), and refuses TCB
statuses below the manifest's minimum (``tdx.tcb_status_forbidden``; default SWHardeningNeeded).
The target is a real coordinator process on sim-tdx; the control run registers with current
collateral.
"""

from __future__ import annotations

import datetime as dt

import pytest

from platform_fixtures import reason, start_coordinator
from veil.attest.binding import worker_report_data
from veil.attest.sim import measure_code
from veil.attest.sim.tdx import SimTdxPlatform
from veil.manifest import ReferenceValues


@pytest.fixture(scope="module")
def target(tmp_path_factory):  # type: ignore[no-untyped-def]
    work = tmp_path_factory.mktemp("tdx-collateral-attack")
    sim = SimTdxPlatform.create(work / "sim")
    outdated = SimTdxPlatform.create(work / "outdated", tcb_status="OutOfDate")
    coordinator = start_coordinator("sim-tdx", sim.directory, work)
    refs = [ReferenceValues(platform="sim-tdx", measurements=[measure_code().hex()])]
    coordinator.set_manifest(refs, refs, [sim.root_fingerprint, outdated.root_fingerprint])
    yield coordinator, sim, outdated
    coordinator.stop()


def _with(platform: SimTdxPlatform, collateral: dict | None = None):  # type: ignore[no-untyped-def,type-arg]
    def evidence(nonce: bytes, key: bytes) -> dict:  # type: ignore[type-arg]
        ev = platform.evidence(worker_report_data(nonce, key), mr_td=measure_code()).to_json()
        if collateral is not None:
            ev["collateral"] = collateral
        return {"platform": "sim-tdx", "tdx": ev}

    return evidence


def test_control_current_collateral_registers(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, _ = target
    assert reason(coordinator.register(_with(sim))) == "ok"


def test_replayed_old_collateral_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, _ = target
    kept = sim.issue_collateral(issued=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40))
    assert reason(coordinator.register(_with(sim, kept))) == "tdx.collateral_expired"


def test_withheld_crl_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, _ = target
    for crl in ("pck_crl", "root_ca_crl"):
        stripped = {k: v for k, v in sim.issue_collateral().items() if k != crl}
        assert reason(coordinator.register(_with(sim, stripped))) == "tdx.collateral_malformed"


def test_revoked_pck_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, sim, _ = target
    revoking = sim.issue_collateral(revoke_pck=True)  # what Intel's PCS serves once the PCK is revoked
    assert reason(coordinator.register(_with(sim, revoking))) == "tdx.pck_revoked"


def test_out_of_date_tcb_refused(target) -> None:  # type: ignore[no-untyped-def]
    coordinator, _, outdated = target
    assert reason(coordinator.register(_with(outdated))) == "tdx.tcb_status_forbidden"
