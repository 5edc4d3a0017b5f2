"""sim-tdx: real TDX quote layouts and PCS collateral under a per-deployment root, verified by the
same dcap-qvl path as hardware (``verify_with_root_ca``), SIMULATED everywhere, refused unless
trusted; and the manifest's TDX reference values applied to it."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from attest_verdicts import tdx_verdict
from veil.attest import api, registry
from veil.attest.api import Binding, VerifyOptions
from veil.attest.sim import measure_code
from veil.attest.sim.tdx import DEFAULT_RTMRS, SimTdxPlatform
from veil.attest.tdx import TdxPolicy
from veil.attest.tdx.abi import BODY_TYPE_TD10, BODY_TYPE_TD15
from veil.attest.trust import TrustRoots
from veil.errors import PolicyError, VeilError
from veil.manifest import ReferenceValues, TdxReference

UTC = dt.timezone.utc


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimTdxPlatform:
    return SimTdxPlatform.create(tmp_path_factory.mktemp("sim-tdx"))


@pytest.fixture(scope="module")
def trust(sim: SimTdxPlatform) -> TrustRoots:
    return TrustRoots.production().with_simulation(sim.root_fingerprint)


@pytest.mark.parametrize(("version", "body"), [(4, BODY_TYPE_TD10), (5, BODY_TYPE_TD10), (5, BODY_TYPE_TD15)])
def test_every_layout_verifies_as_simulated(sim: SimTdxPlatform, trust: TrustRoots, version: int, body: int) -> None:
    quote = sim.quote(b"n" * 64, mr_td=b"\x0a" * 48, version=version, body_type=body)
    v = tdx_verdict(quote, sim.current_collateral(), trust=trust, expected_report_data=b"n" * 64)
    assert v.accepted, v
    c = v.claims
    assert c is not None and c.platform == "sim-tdx" and c.simulated and c.measurement == "0a" * 48
    assert "SIMULATED" in v.message and "SIMULATED" in c.details["notice"]
    assert c.tcb["status"] == "UpToDate" and c.details["quote_version"] == version
    chain = next(x for x in v.checks if x.name == "certificate chain")
    assert "SIMULATED root" in chain.result


def test_refused_unless_its_root_is_trusted(sim: SimTdxPlatform) -> None:
    v = tdx_verdict(sim.quote(b"n", mr_td=bytes(48)), sim.current_collateral())
    assert v.reason == "tdx.collateral_root_untrusted" and "SIMULATED TEE (sim-tdx" in v.message
    other = SimTdxPlatform.create(sim.directory.parent / "other-sim")
    mixed = tdx_verdict(
        sim.quote(b"n", mr_td=bytes(48)),
        other.current_collateral(),
        trust=TrustRoots.production().with_simulation(other.root_fingerprint),
    )
    assert not mixed.accepted and mixed.reason.startswith("tdx.")  # another deployment's collateral


def test_labelled_as_hardware_is_refused(sim: SimTdxPlatform, trust: TrustRoots) -> None:
    evidence = {"platform": "tdx", "tdx": sim.evidence(b"n", mr_td=bytes(48)).to_json()}
    with pytest.raises(PolicyError) as err:
        api.verify(evidence, VerifyOptions(Binding.unbound(), trust))
    assert err.value.reason == "evidence.platform_mismatch"


def test_debug_td_refused(sim: SimTdxPlatform, trust: TrustRoots) -> None:
    v = tdx_verdict(sim.quote(b"n", mr_td=bytes(48), debug=True), sim.current_collateral(), trust=trust)
    assert v.reason == "tdx.debug_forbidden"


def test_tampered_quote_and_stale_collateral(sim: SimTdxPlatform, trust: TrustRoots) -> None:
    quote = bytearray(sim.quote(b"n", mr_td=bytes(48)))
    quote[48 + 136] ^= 1  # MRTD
    assert tdx_verdict(bytes(quote), sim.current_collateral(), trust=trust).reason == "tdx.quote_signature_invalid"
    later = dt.datetime.now(UTC) + dt.timedelta(days=31)
    assert (
        tdx_verdict(sim.quote(b"n", mr_td=bytes(48)), sim.current_collateral(), trust=trust, as_of=later).reason
        == "tdx.collateral_expired"
    )
    old = sim.issue_collateral(issued=dt.datetime.now(UTC) - dt.timedelta(days=40))
    assert tdx_verdict(sim.quote(b"n", mr_td=bytes(48)), old, trust=trust).reason == "tdx.collateral_expired"


def test_tampered_collateral(sim: SimTdxPlatform, trust: TrustRoots) -> None:
    col = dict(sim.current_collateral())
    info = json.loads(col["tcb_info"])
    info["tcbLevels"][0]["tcbStatus"] = "UpToDate"
    info["tcbEvaluationDataNumber"] += 1
    col["tcb_info"] = json.dumps(info, separators=(",", ":"))
    v = tdx_verdict(sim.quote(b"n", mr_td=bytes(48)), col, trust=trust)
    assert v.reason == "tdx.collateral_signature_invalid"


@pytest.mark.parametrize("status", ["SWHardeningNeeded", "OutOfDate"])
def test_tcb_status_policy(tmp_path: Path, status: str) -> None:
    sim = SimTdxPlatform.create(tmp_path, tcb_status=status)
    trust = TrustRoots.production().with_simulation(sim.root_fingerprint)
    quote, col = sim.quote(b"n", mr_td=bytes(48)), sim.current_collateral()
    default = tdx_verdict(quote, col, trust=trust)
    if status == "OutOfDate":
        assert default.reason == "tdx.tcb_status_forbidden"
    else:
        assert default.accepted and default.claims and default.claims.tcb["advisory_ids"] == ["INTEL-SA-00837"]
    strict = TdxPolicy(allowed_tcb_statuses=frozenset({"UpToDate"}))
    assert tdx_verdict(quote, col, strict, trust=trust).reason == "tdx.tcb_status_forbidden"
    listed = TdxPolicy(allowed_tcb_statuses=frozenset({status}), allowed_advisories=frozenset())
    assert tdx_verdict(quote, col, listed, trust=trust).reason == "tdx.advisory_forbidden"


# ---- the manifest's reference values through the attester and the one API ---------------------


def _appraise(sim: SimTdxPlatform, ref: ReferenceValues, launch: bytes = bytes(48)):  # type: ignore[no-untyped-def]
    attester = registry.attester("sim-tdx", registry.AttesterConfig(sim_dir=sim.directory, launch_data=launch))
    evidence = attester.evidence(b"b" * 64)
    trust = TrustRoots.production().with_simulation(sim.root_fingerprint)
    return api.appraise(evidence, [ref], VerifyOptions(Binding.to(b"b" * 64), trust))


def _ref(**tdx: object) -> ReferenceValues:
    return ReferenceValues(platform="sim-tdx", measurements=[measure_code().hex()], tdx=TdxReference(**tdx))


def test_reference_values(sim: SimTdxPlatform) -> None:
    rtmrs = [r.hex() for r in DEFAULT_RTMRS]
    verified = _appraise(
        sim,
        _ref(
            rtmr0=[rtmrs[0]],
            rtmr1=[rtmrs[1]],
            rtmr2=[rtmrs[2]],
            rtmr3=[rtmrs[3]],
            mr_config_id=["c0" * 48],
            min_tcb_status="UpToDate",
            allowed_advisory_ids=[],
            td_attributes_mask=1,
            td_attributes_expected=0,
        ),
        launch=b"\xc0" * 48,
    )
    assert verified.claims.details["mr_config_id"] == "c0" * 48
    names = [c.name for c in verified.checks]
    assert {"TD attributes", "TCB status", "measurements"} <= set(names)

    def refused(ref: ReferenceValues, launch: bytes = bytes(48)) -> str:
        with pytest.raises(VeilError) as err:
            _appraise(sim, ref, launch)
        return err.value.reason

    assert refused(_ref(rtmr2=["00" * 48])) == "tdx.rtmr_not_allowed"
    assert refused(_ref(mr_config_id=["c0" * 48])) == "tdx.mrconfigid_not_allowed"
    assert refused(_ref(mr_owner=["11" * 48])) == "tdx.mrowner_not_allowed"
    assert refused(_ref(xfam_mask=0xFF, xfam_expected=0x03)) == "tdx.xfam_mismatch"
    assert refused(ReferenceValues(platform="sim-tdx", measurements=["00" * 48])) == "tdx.mrtd_not_allowed"


def test_sealing_key_is_bound_to_the_code(sim: SimTdxPlatform) -> None:
    a = registry.attester("sim-tdx", registry.AttesterConfig(sim_dir=sim.directory))
    b = registry.attester("sim-tdx", registry.AttesterConfig(sim_dir=sim.directory))
    assert a.sealing_key() == b.sealing_key() and len(a.sealing_key()) == 32
    b.measurement = b"\x00" * 48  # type: ignore[attr-defined]
    assert a.sealing_key() != b.sealing_key()


def test_collateral_is_cached_and_refreshed(sim: SimTdxPlatform) -> None:
    first = sim.current_collateral()
    assert sim.current_collateral() == first  # reused within the refresh period
    assert (sim.directory / "collateral.json").stat().st_mode & 0o777 == 0o600
