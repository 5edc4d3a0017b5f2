"""``veil evidence verify --platform sev-snp``: files in, verdict out (the CLI edge), exit code by error type."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from veil.attest.collateral import CollateralCache
from veil.attest.snp import SnpEvidence
from veil.cli.evidence import EvidenceFiles, verify_files
from veil.attest.snp.verify import load_certificate
from cryptography.hazmat.primitives import serialization

AS_OF = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
CRL = Path(__file__).parents[1] / "data" / "amd" / "Milan-vcek-crl.der"  # AMD's real one (openpcc testdata)


def _inputs(d: Path, **kw: object) -> EvidenceFiles:
    base: dict[str, object] = {
        "platform": "sev-snp",
        "as_of": AS_OF,
        "report": d / "report.bin",
        "vcek": d / "vcek.der",
        "chain": d / "ask_ark.pem",
        "crl": CRL,
    }
    base.update(kw)
    return EvidenceFiles(**base)  # type: ignore[arg-type]


def test_accept(vectors: Path) -> None:
    v = verify_files(_inputs(vectors / "sev-snp" / "milan-vcek"))
    assert v.accepted and v.to_json()["verdict"] == "accept"


def test_debug_flag(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "sev-snp" / "milan-debug"
    assert verify_files(_inputs(d)).reason == "snp.debug_guest"
    assert verify_files(_inputs(d, allow_debug=True)).reason == "snp.tcb_too_old"  # pre-production firmware
    (tmp_path / "p.json").write_text(json.dumps({"minimum_tcb": {"bootloader": 2, "snp": 5, "microcode": 68}}))
    assert verify_files(_inputs(d, allow_debug=True, policy=tmp_path / "p.json")).accepted


def test_pem_vcek(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    pem = load_certificate((d / "vcek.der").read_bytes()).public_bytes(serialization.Encoding.PEM)
    (tmp_path / "vcek.pem").write_bytes(pem)
    assert verify_files(_inputs(d, vcek=tmp_path / "vcek.pem")).accepted


def test_policy_file(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    (tmp_path / "p.json").write_text(json.dumps({"measurements": ["00" * 48]}))
    assert verify_files(_inputs(d, policy=tmp_path / "p.json")).reason == "snp.measurement_mismatch"
    (tmp_path / "bad.json").write_text('{"nope": 1}')
    assert verify_files(_inputs(d, policy=tmp_path / "bad.json")).reason == "cli.malformed_policy"


def test_vcek_alone_verifies_with_amds_chain(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    v = verify_files(_inputs(d, chain=None, cache_dir=tmp_path))  # empty cache: AMD's ASK/ARK shipped with Veil
    assert v.accepted, v
    assert any("AMD's, shipped with Veil" in c.result for c in v.checks)


def test_crl_is_required_and_read_from_the_cache(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    v = verify_files(_inputs(d, crl=None, cache_dir=tmp_path))
    assert v.reason == "snp.crl_missing" and v.error == "verification"
    CollateralCache(tmp_path).write_crl("Milan", CRL.read_bytes())
    v = verify_files(_inputs(d, crl=None, cache_dir=tmp_path))
    assert v.accepted and any(c.name == "revocation (CRL)" and "#6 issued 2025-05-06" in c.result for c in v.checks)


def test_missing_inputs(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    assert verify_files(_inputs(d, report=None)).reason == "cli.missing_input"
    v = verify_files(_inputs(d, vcek=tmp_path / "absent"))
    assert v.reason == "cli.unreadable_input" and v.error == "parse"


def test_evidence_json_round_trip(vectors: Path) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    ev = SnpEvidence((d / "report.bin").read_bytes(), (d / "vcek.der").read_bytes(), (d / "ask_ark.pem").read_bytes(), b"crl")
    assert SnpEvidence.from_json(ev.to_json()) == ev
    assert SnpEvidence.from_json(json.dumps(ev.to_json())) == ev


@pytest.mark.parametrize("bad", ["not json", "[]", "{}", '{"report": "!!", "vcek": "", "chain": ""}', '{"report": 1}'])
def test_evidence_json_malformed(bad: str) -> None:
    from veil.errors import ParseError

    with pytest.raises(ParseError) as err:
        SnpEvidence.from_json(bad)
    assert err.value.reason == "snp.malformed_evidence"
