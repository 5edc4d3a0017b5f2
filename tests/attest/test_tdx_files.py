"""`veil evidence verify --platform tdx` inputs."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from veil.attest.tdx import TdxPolicy
from veil.cli.evidence import EvidenceFiles, load_policy, verify_files

IN_WINDOW = datetime(2025, 7, 1, tzinfo=timezone.utc)


def files(vectors: Path, **kw: object) -> EvidenceFiles:
    d = vectors / "tdx/uptodate"
    base: dict[str, object] = {
        "platform": "tdx",
        "quote": d / "quote.dat",
        "collateral": d / "collateral.json",
        "as_of": IN_WINDOW,
    }
    base.update(kw)
    return EvidenceFiles(**base)  # type: ignore[arg-type]


def test_accept(vectors: Path) -> None:
    assert verify_files(files(vectors)).accepted


def test_today_rejected(vectors: Path) -> None:
    assert verify_files(files(vectors, as_of=None)).reason == "tdx.collateral_expired"


def test_missing_quote(vectors: Path) -> None:
    v = verify_files(files(vectors, quote=None))
    assert not v.accepted and v.reason == "cli.missing_input"


def test_unreadable(vectors: Path, tmp_path: Path) -> None:
    assert verify_files(files(vectors, quote=tmp_path / "nope")).reason == "cli.unreadable_input"


def test_hex_quote_and_policy_file(vectors: Path, tmp_path: Path) -> None:
    q = tmp_path / "quote.hex"
    q.write_text((vectors / "tdx/uptodate/quote.dat").read_bytes().hex())
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"mrtd": ["00" * 48]}))
    assert verify_files(files(vectors, quote=q, policy=pol)).reason == "tdx.mrtd_not_allowed"
    pol.write_text(json.dumps({"mrtdd": []}))
    assert verify_files(files(vectors, quote=q, policy=pol)).reason == "cli.malformed_policy"


def test_allow_debug_flag(vectors: Path, tmp_path: Path) -> None:
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({"allowed_tcb_statuses": ["UpToDate"]}))
    p = load_policy(TdxPolicy, files(vectors, policy=pol, allow_debug=True))
    assert p.allow_debug and p.allowed_tcb_statuses == frozenset({"UpToDate"})
    assert not load_policy(TdxPolicy, files(vectors)).allow_debug
