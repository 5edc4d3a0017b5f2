"""The manifest's SEV-SNP reference values reach the policy: VMPL, HOST_DATA, chip ids, products,
guest SVN, minimum TCB; and simulated HOST_DATA is settable at launch and checkable."""

from __future__ import annotations

from pathlib import Path

import pytest

from veil.attest import api, registry
from veil.attest.api import Binding, VerifyOptions
from veil.attest.sim import SimPlatform
from veil.attest.trust import TrustRoots
from veil.errors import ParseError, PolicyError
from veil.manifest import ReferenceValues, SnpReference


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sim-refs")
    SimPlatform.create(d)
    return d


def _appraise(sim_dir: Path, refs: list[ReferenceValues], host_data: bytes = bytes(32)):  # type: ignore[no-untyped-def]
    attester = registry.attester("sim-snp", registry.AttesterConfig(sim_dir=sim_dir, launch_data=host_data))
    evidence = attester.evidence(b"r" * 64)
    trust = TrustRoots.production().with_simulation(SimPlatform.load(sim_dir).root_fingerprint)
    return api.appraise(evidence, refs, VerifyOptions(Binding.to(b"r" * 64), trust))


def _ref(sim_dir: Path, **snp: object) -> ReferenceValues:
    from veil.attest.sim import measure_code

    return ReferenceValues(platform="sim-snp", measurements=[measure_code().hex()], snp=SnpReference(**snp))


def _refused(sim_dir: Path, ref: ReferenceValues, host_data: bytes = bytes(32)) -> str:
    with pytest.raises(PolicyError) as err:
        _appraise(sim_dir, [ref], host_data)
    return err.value.reason


def test_host_data_set_at_launch_and_pinned(sim_dir: Path) -> None:
    bootstrap = bytes.fromhex("ab" * 32)
    verified = _appraise(sim_dir, [_ref(sim_dir, host_data=["ab" * 32])], host_data=bootstrap)
    assert verified.claims.details["host_data"] == "ab" * 32
    assert any(c.name == "launch identity" and "HOST_DATA" in c.result for c in verified.checks)
    assert _refused(sim_dir, _ref(sim_dir, host_data=["ab" * 32])) == "snp.host_data_mismatch"


def test_chip_products_vmpl_and_guest_svn(sim_dir: Path) -> None:
    chip = SimPlatform.load(sim_dir).chip_id.hex()
    _appraise(sim_dir, [_ref(sim_dir, chip_ids=[chip], products=["Milan"], max_vmpl=0)])
    assert _refused(sim_dir, _ref(sim_dir, chip_ids=["00" * 64])) == "snp.chip_not_allowed"
    assert _refused(sim_dir, _ref(sim_dir, products=["Genoa"])) == "snp.product_not_allowed"
    assert _refused(sim_dir, _ref(sim_dir, minimum_guest_svn=1)) == "snp.guest_svn_too_old"


def test_minimum_tcb_from_the_manifest(sim_dir: Path) -> None:
    from veil.attest.sim import measure_code

    ref = ReferenceValues(platform="sim-snp", measurements=[measure_code().hex()], min_tcb={"snp": 24})
    assert _refused(sim_dir, ref) == "snp.tcb_too_old"  # the simulated chip reports snp SPL 23


def test_first_accepting_reference_set_wins(sim_dir: Path) -> None:
    good, bad = _ref(sim_dir), _ref(sim_dir, products=["Turin"])
    assert _appraise(sim_dir, [bad, good]).reference == good
    with pytest.raises(PolicyError) as err:
        _appraise(sim_dir, [bad, bad])
    assert err.value.reason == "snp.product_not_allowed" and "none of 2" in err.value.message


def test_bad_launch_data(sim_dir: Path) -> None:
    with pytest.raises(ParseError):
        registry.attester("sim-snp", registry.AttesterConfig(sim_dir=sim_dir, launch_data=b"short"))


def test_reference_values_are_per_platform() -> None:
    with pytest.raises(ValueError):
        ReferenceValues(platform="tdx", measurements=["00" * 48], snp=SnpReference())
    with pytest.raises(ValueError):
        SnpReference(host_data=["00" * 31])
    # unset per-platform values leave the canonical form (and so existing manifest digests) unchanged
    assert "snp" not in ReferenceValues(platform="sev-snp", measurements=["00" * 48]).model_dump()
