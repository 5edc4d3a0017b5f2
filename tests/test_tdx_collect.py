"""configfs-tsm collection on a fake tree (no TDX hardware here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from veil.attest.tdx.collect import collect_quote
from veil.errors import VeilError


def fake_tsm(root: Path, name: str, provider: str = "tdx_guest") -> Path:
    entry = root / "report" / name
    entry.mkdir(parents=True)
    (entry / "provider").write_text(provider + "\n")
    (entry / "generation").write_text("1\n")
    (entry / "outblob").write_bytes(b"QUOTE")
    return entry


def test_collect_writes_inblob_and_reads_outblob(tmp_path: Path) -> None:
    entry = fake_tsm(tmp_path, "t")
    got = collect_quote(b"\x07" * 64, root=tmp_path, name="t")
    assert got.quote == b"QUOTE" and got.provider == "tdx_guest" and got.generation == 1
    assert (entry / "inblob").read_bytes() == b"\x07" * 64


def test_wrong_provider(tmp_path: Path) -> None:
    fake_tsm(tmp_path, "t", provider="sev_guest")
    with pytest.raises(VeilError) as e:
        collect_quote(bytes(64), root=tmp_path, name="t")
    assert e.value.reason == "tdx.collect_wrong_provider"


def test_no_configfs(tmp_path: Path) -> None:
    with pytest.raises(VeilError) as e:
        collect_quote(bytes(64), root=tmp_path / "none")
    assert e.value.reason == "tdx.collect_unavailable"


def test_report_data_size(tmp_path: Path) -> None:
    with pytest.raises(VeilError):
        collect_quote(bytes(32), root=tmp_path)


def test_missing_attribute_files(tmp_path: Path) -> None:
    (tmp_path / "report").mkdir()
    with pytest.raises(VeilError) as e:
        collect_quote(bytes(64), root=tmp_path)  # a plain directory has no provider file
    assert e.value.reason == "tdx.collect_failed"
