"""SEV-SNP policy: genuine reports that the policy still refuses, each with its own reason."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from veil.attest.snp.abi import POLICY_MIGRATE_MA, POLICY_SINGLE_SOCKET, Report, TcbVersion, parse_report
from veil.attest.snp.validate import MinimumTcb, SnpPolicy, validate_report
from veil.errors import PolicyError


@pytest.fixture(scope="module")
def report(vectors: Path) -> Report:
    return parse_report((vectors / "sev-snp" / "milan-vcek" / "report.bin").read_bytes())


def _refused(report: Report, policy: SnpPolicy, reason: str, product: str | None = "Milan") -> None:
    with pytest.raises(PolicyError) as err:
        validate_report(report, policy, product)
    assert err.value.reason == reason


def test_defaults_accept_production_report(report: Report) -> None:
    validate_report(report, SnpPolicy(), "Milan")


def test_debug(report: Report) -> None:
    dbg = dataclasses.replace(report, policy=report.policy | 1 << 19)
    _refused(dbg, SnpPolicy(), "snp.debug_guest")
    validate_report(dbg, SnpPolicy(allow_debug=True), "Milan")


def test_migration_agent(report: Report) -> None:
    ma = dataclasses.replace(report, policy=report.policy | POLICY_MIGRATE_MA)
    _refused(ma, SnpPolicy(), "snp.migration_agent")
    validate_report(ma, SnpPolicy(allow_migration_agent=True), "Milan")


def test_smt_and_socket(report: Report) -> None:
    _refused(report, SnpPolicy(require_smt_off=True), "snp.smt_enabled")  # policy allows SMT
    _refused(report, SnpPolicy(require_single_socket=True), "snp.not_single_socket")
    single = dataclasses.replace(report, policy=report.policy | POLICY_SINGLE_SOCKET)
    validate_report(single, SnpPolicy(require_single_socket=True), "Milan")


def test_vmpl(report: Report) -> None:
    vmpl2 = dataclasses.replace(report, vmpl=2)
    _refused(vmpl2, SnpPolicy(), "snp.vmpl_too_high")
    validate_report(vmpl2, SnpPolicy(max_vmpl=2), "Milan")


def test_measurement(report: Report) -> None:
    _refused(report, SnpPolicy(measurements=["00" * 48]), "snp.measurement_mismatch")
    validate_report(report, SnpPolicy(measurements=["00" * 48, report.measurement.hex().upper()]), "Milan")


def test_minimum_tcb(report: Report) -> None:
    validate_report(report, SnpPolicy(minimum_tcb=MinimumTcb(bootloader=3, snp=8, microcode=115)), "Milan")
    _refused(report, SnpPolicy(minimum_tcb=MinimumTcb(snp=9)), "snp.tcb_too_old")
    _refused(report, SnpPolicy(minimum_tcb=MinimumTcb(microcode=116)), "snp.tcb_too_old")


def test_minimum_tcb_turin_fmc(report: Report) -> None:
    turin = dataclasses.replace(report, reported_tcb=TcbVersion(1, 2, 3, 4, fmc=1).encode())
    validate_report(turin, SnpPolicy(minimum_tcb=MinimumTcb(fmc=1, microcode=4)), "Turin")
    _refused(turin, SnpPolicy(minimum_tcb=MinimumTcb(fmc=2, microcode=4)), "snp.tcb_too_old", "Turin")
    _refused(turin, SnpPolicy(), "snp.tcb_too_old", "Turin")  # ucode 4 is below Turin's floor (9)


def test_production_floors_per_product(report: Report) -> None:
    """Unset components take the product's floor; set ones override it (either way)."""
    from veil.attest.snp.validate import DEFAULT_MINIMUM_TCB

    assert DEFAULT_MINIMUM_TCB["Milan"].to_json() == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    validate_report(report, SnpPolicy(), "Milan")  # the real Milan report sits exactly at the floor
    old = dataclasses.replace(report, reported_tcb=TcbVersion(3, 0, 7, 115).encode())
    _refused(old, SnpPolicy(), "snp.tcb_too_old")
    validate_report(old, SnpPolicy(minimum_tcb=MinimumTcb(snp=7)), "Milan")
    _refused(report, SnpPolicy(), "snp.tcb_too_old", "Genoa")  # Genoa's floor is higher


def test_svn_firmware_product(report: Report) -> None:
    _refused(report, SnpPolicy(minimum_guest_svn=1), "snp.guest_svn_too_old")
    _refused(report, SnpPolicy(minimum_firmware=(1, 53)), "snp.firmware_too_old")
    validate_report(report, SnpPolicy(minimum_firmware=(1, 52)), "Milan")
    _refused(report, SnpPolicy(products=["Genoa"]), "snp.product_not_allowed")


def test_allowlists(report: Report) -> None:
    _refused(report, SnpPolicy(host_data=["11" * 32]), "snp.host_data_mismatch")
    validate_report(report, SnpPolicy(host_data=["00" * 32]), "Milan")
    _refused(report, SnpPolicy(id_key_digests=["11" * 48]), "snp.id_key_mismatch")
    _refused(report, SnpPolicy(author_key_digests=["11" * 48]), "snp.author_key_mismatch")
    _refused(report, SnpPolicy(chip_ids=["11" * 64]), "snp.chip_not_allowed")
    validate_report(report, SnpPolicy(chip_ids=[report.chip_id.hex()]), "Milan")
    _refused(report, SnpPolicy(report_data="00" * 64), "snp.report_data_mismatch")
    validate_report(report, SnpPolicy(report_data=report.report_data.hex()), "Milan")


@pytest.mark.parametrize(
    "bad",
    [
        {"measurements": ["zz"]},
        {"measurements": ["00" * 47]},
        {"host_data": ["00" * 31]},
        {"unknown_field": 1},
        {"max_vmpl": 4},
        {"minimum_tcb": {"snp": 256}},
    ],
)
def test_policy_model_is_strict(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError):
        SnpPolicy.model_validate(bad)


def test_policy_json_round_trip() -> None:
    p = SnpPolicy(measurements=["ab" * 48], minimum_tcb=MinimumTcb(snp=8), allow_debug=True)
    assert SnpPolicy.model_validate_json(p.model_dump_json()) == p
