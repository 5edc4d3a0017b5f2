"""TDX policy decisions on claims: each refusal has its own reason code."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from veil.attest.claims import Claims
from veil.attest.tdx.validate import TdxPolicy, validate_claims
from veil.errors import PolicyError

MRTD = "ab" * 48


def claims(**over: object) -> Claims:
    base = Claims(
        platform="tdx",
        measurement=MRTD,
        report_data=bytes(64),
        debug=False,
        tcb={"status": "UpToDate", "advisory_ids": ["INTEL-SA-00837"]},
        details={
            "td_attributes": "0000001000000000",
            "xfam": "e702060000000000",
            "mr_seam": "11" * 48,
            "mr_config_id": "00" * 48,
            **{f"rtmr{i}": f"{i:02x}" * 48 for i in range(4)},
        },
    )
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


def refused(c: Claims, p: TdxPolicy) -> str:
    with pytest.raises(PolicyError) as e:
        validate_claims(c, p)
    return e.value.reason


def test_defaults_accept() -> None:
    validate_claims(claims(), TdxPolicy())


def test_debug_refused_unless_allowed() -> None:
    c = claims(debug=True)
    assert refused(c, TdxPolicy()) == "tdx.debug_forbidden"
    validate_claims(c, TdxPolicy(allow_debug=True))


@pytest.mark.parametrize("status", ["OutOfDate", "ConfigurationNeeded", "Revoked", ""])
def test_tcb_status(status: str) -> None:
    assert refused(claims(tcb={"status": status}), TdxPolicy()) == "tdx.tcb_status_forbidden"


def test_sw_hardening_allowed_by_default() -> None:
    validate_claims(claims(tcb={"status": "SWHardeningNeeded", "advisory_ids": []}), TdxPolicy())


def test_advisory_allowlist() -> None:
    c = claims()  # affected by INTEL-SA-00837 (see claims())
    validate_claims(c, TdxPolicy())  # None: advisories are not checked
    assert refused(c, TdxPolicy(allowed_advisories=frozenset())) == "tdx.advisory_forbidden"
    assert refused(c, TdxPolicy(allowed_advisories=frozenset({"INTEL-SA-00615"}))) == "tdx.advisory_forbidden"
    validate_claims(c, TdxPolicy(allowed_advisories=frozenset({"INTEL-SA-00837"})))


def test_minimum_tcb_status() -> None:
    from veil.attest.tdx.validate import statuses_at_least

    assert statuses_at_least("UpToDate") == frozenset({"UpToDate"})
    assert statuses_at_least("SWHardeningNeeded") == frozenset({"UpToDate", "SWHardeningNeeded"})
    with pytest.raises(ValueError):
        statuses_at_least("Revoked")


def test_allowlists() -> None:
    assert refused(claims(), TdxPolicy(mrtd=["cd" * 48])) == "tdx.mrtd_not_allowed"
    assert refused(claims(), TdxPolicy(rtmr2=["ff" * 48])) == "tdx.rtmr_not_allowed"
    assert refused(claims(), TdxPolicy(mr_seam=["ff" * 48])) == "tdx.mrseam_not_allowed"
    assert refused(claims(), TdxPolicy(mr_config_id=["ff" * 48])) == "tdx.mrconfigid_not_allowed"
    validate_claims(claims(), TdxPolicy(mrtd=["0x" + "AB" * 48], rtmr2=["02" * 48]))


def test_masks() -> None:
    sept = 1 << 28
    validate_claims(claims(), TdxPolicy(td_attributes_mask=sept, td_attributes_expected=sept))
    p = TdxPolicy(td_attributes_mask="0x10000000", td_attributes_expected=0)
    assert refused(claims(), p) == "tdx.td_attributes_mismatch"
    assert refused(claims(), TdxPolicy(xfam_mask=0xFF, xfam_expected=0x03)) == "tdx.xfam_mismatch"
    validate_claims(claims(), TdxPolicy(xfam_mask=0xFF, xfam_expected=0xE7))


def test_policy_rejects_bad_input() -> None:
    with pytest.raises(ValidationError):
        TdxPolicy(mrtd=["abc"])
    with pytest.raises(ValidationError):
        TdxPolicy.model_validate({"mrdt": []})  # typo: extra fields are refused
