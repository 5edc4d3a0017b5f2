"""TDX verification against the real quotes and PCS collateral in ../shared/vectors/tdx."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from veil.attest.binding import bind
from attest_verdicts import tdx_verdict
from veil.attest.tdx import TdxPolicy
from veil.attest.tdx.verify import load_collateral, verify_quote
from veil.errors import ParseError, VerificationError

IN_WINDOW = datetime(2025, 7, 1, tzinfo=timezone.utc)
NO_TCB_WINDOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
MRTD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"


def load(vectors: Path, name: str) -> tuple[bytes, dict[str, Any]]:
    d = vectors / "tdx" / name
    return (d / "quote.dat").read_bytes(), json.loads((d / "collateral.json").read_text())


def test_uptodate_accepted_in_window(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    v = tdx_verdict(quote, col, as_of=IN_WINDOW)
    assert v.accepted, v
    c = v.claims
    assert c is not None and c.platform == "tdx" and c.measurement == MRTD
    assert c.tcb["status"] == "UpToDate" and c.tcb["advisory_ids"] == []
    assert c.tcb["fmspc"] == "b0c06f000000"
    assert not c.debug and c.details["td_attributes"] == "0000001000000000"
    assert {"rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam", "mr_config_id", "xfam"} <= set(c.details)


def test_uptodate_rejected_today(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    v = tdx_verdict(quote, col)  # as of now: the collateral has expired
    assert not v.accepted and v.reason == "tdx.collateral_expired"


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        (datetime(2025, 1, 1, tzinfo=timezone.utc), "tdx.collateral_not_yet_valid"),
        (datetime(2025, 8, 1, tzinfo=timezone.utc), "tdx.collateral_expired"),
    ],
)
def test_wrong_as_of(vectors: Path, when: datetime, reason: str) -> None:
    quote, col = load(vectors, "uptodate")
    assert tdx_verdict(quote, col, as_of=when).reason == reason


def test_no_tcb_level(vectors: Path) -> None:
    quote, col = load(vectors, "no-tcb-level")
    v = tdx_verdict(quote, col, as_of=NO_TCB_WINDOW)
    assert not v.accepted and v.reason == "tdx.no_tcb_level"


@pytest.mark.parametrize("offset", [10, 48 + 136, 48 + 520, 600])  # header, MRTD, report_data, RTMR
def test_changed_signed_byte(vectors: Path, offset: int) -> None:
    quote, col = load(vectors, "uptodate")
    bad = bytearray(quote)
    bad[offset] ^= 1
    v = tdx_verdict(bytes(bad), col, as_of=IN_WINDOW)
    assert not v.accepted and v.reason == "tdx.quote_signature_invalid"


def test_changed_qe_report(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    bad = bytearray(quote)
    bad[1000] ^= 1
    assert tdx_verdict(bytes(bad), col, as_of=IN_WINDOW).reason == "tdx.qe_report_signature_invalid"


def test_changed_tcb_info(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    col = copy.deepcopy(col)
    col["tcb_info"] = col["tcb_info"].replace('"tcbEvaluationDataNumber":17', '"tcbEvaluationDataNumber":18')
    v = tdx_verdict(quote, col, as_of=IN_WINDOW)
    assert v.reason == "tdx.collateral_signature_invalid"


def test_changed_qe_identity_signature(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    sig = col["qe_identity_signature"]
    col = {**col, "qe_identity_signature": ("1" if sig[0] != "1" else "2") + sig[1:]}
    assert tdx_verdict(quote, col, as_of=IN_WINDOW).reason == "tdx.collateral_signature_invalid"


def test_changed_pck_crl(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    crl = col["pck_crl"]
    i = len(crl) - 20
    col = {**col, "pck_crl": crl[:i] + ("0" if crl[i] != "0" else "1") + crl[i + 1 :]}
    v = tdx_verdict(quote, col, as_of=IN_WINDOW)
    assert not v.accepted
    assert v.reason in {"tdx.collateral_signature_invalid", "tdx.collateral_malformed", "tdx.pck_chain_invalid"}


def test_collateral_missing_field(vectors: Path) -> None:
    _, col = load(vectors, "uptodate")
    del col["tcb_info"]
    with pytest.raises(ParseError) as e:
        load_collateral(col)
    assert e.value.reason == "tdx.collateral_malformed"


def test_collateral_foreign_root(vectors: Path) -> None:
    _, col = load(vectors, "uptodate")
    ark = (vectors / "roots/canonical_ARK-Milan.pem").read_text()
    col["tcb_info_issuer_chain"] = col["tcb_info_issuer_chain"] + ark
    with pytest.raises(VerificationError) as e:
        load_collateral(col)
    assert e.value.reason == "tdx.collateral_root_untrusted"


def test_collateral_of_other_platform(vectors: Path) -> None:
    quote, _ = load(vectors, "uptodate")
    _, other = load(vectors, "no-tcb-level")
    v = tdx_verdict(quote, other, as_of=NO_TCB_WINDOW)
    assert not v.accepted and v.reason == "tdx.collateral_mismatch"


def test_expected_report_data(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    ok = verify_quote(quote, col, as_of=IN_WINDOW).quote.body.report_data
    assert tdx_verdict(quote, col, as_of=IN_WINDOW, expected_report_data=ok).accepted
    v = tdx_verdict(quote, col, as_of=IN_WINDOW, expected_report_data=bind(b"x", b"nonce"))
    assert v.reason == "binding.report_data_mismatch" and v.error == "verification"


def test_policy_applied_after_verification(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    v = tdx_verdict(quote, col, TdxPolicy(mrtd=["00" * 48]), as_of=IN_WINDOW)
    assert v.reason == "tdx.mrtd_not_allowed" and v.claims is not None
    assert tdx_verdict(quote, col, TdxPolicy(mrtd=[MRTD.upper()]), as_of=IN_WINDOW).accepted


def test_padding_does_not_matter(vectors: Path) -> None:
    quote, col = load(vectors, "uptodate")
    assert tdx_verdict(quote + bytes(50), col, as_of=IN_WINDOW).accepted
