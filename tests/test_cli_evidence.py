"""`veil evidence verify` on the real vectors: verdicts, exit codes (0 accept, 1 reject, 2 usage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from veil.cli.main import app

runner = CliRunner()
MILAN_CRL = str(Path(__file__).parent / "data" / "amd" / "Milan-vcek-crl.der")  # AMD's real CRL (openpcc testdata)


def run(*args: str):
    result = runner.invoke(app, ["evidence", "verify", *args, "--json"])
    return result.exit_code, (json.loads(result.stdout) if result.stdout.strip() else None)


def test_snp_milan_accepted(vectors) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    code, out = run(
        "--platform",
        "sev-snp",
        "--report",
        str(d / "report.bin"),
        "--vcek",
        str(d / "vcek.der"),
        "--chain",
        str(d / "ask_ark.pem"),
        "--crl",
        MILAN_CRL,
        "--as-of",
        "2025-06-01T00:00:00Z",
    )
    assert code == 0, out
    assert out["verdict"] == "accept"
    assert out["claims"]["measurement"].startswith("7a1e5c26")
    names = [c["check"] for c in out["checks"]]
    assert names[:4] == ["report signature", "certificate chain", "certificate validity", "revocation (CRL)"]
    assert "binding" in names and "minimum TCB" in names


def test_snp_refusals_exit_by_error_type(vectors, tmp_path) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    base = [
        "--platform",
        "sev-snp",
        "--report",
        str(d / "report.bin"),
        "--vcek",
        str(d / "vcek.der"),
        "--as-of",
        "2025-06-01T00:00:00Z",
        "--cache",
        str(tmp_path),
    ]
    code, out = run(*base)  # no CRL anywhere: a VerificationError, exit 1
    assert code == 1 and out["reason"] == "snp.crl_missing" and out["error"] == "verification"
    code, out = run(*base, "--crl", MILAN_CRL, "--report-data", "00" * 64)  # bound to something else
    assert code == 1 and out["reason"] == "binding.report_data_mismatch"
    (tmp_path / "p.json").write_text('{"nope": 1}')
    code, out = run(*base, "--crl", MILAN_CRL, "--policy", str(tmp_path / "p.json"))  # a ParseError: exit 2
    assert code == 2 and out["reason"] == "cli.malformed_policy" and out["error"] == "parse"


def test_snp_debug_rejected_then_allowed(vectors) -> None:
    d = vectors / "sev-snp" / "milan-debug"
    args = [
        "--platform",
        "sev-snp",
        "--report",
        str(d / "report.bin"),
        "--vcek",
        str(d / "vcek.der"),
        "--chain",
        str(d / "ask_ark.pem"),
        "--crl",
        MILAN_CRL,
        "--as-of",
        "2025-06-01T00:00:00Z",
    ]
    code, out = run(*args)
    assert code == 1 and out["reason"] == "snp.debug_guest"
    code, out = run(*args, "--allow-debug")
    assert code == 1 and out["reason"] == "snp.tcb_too_old", out  # pre-production firmware 2/0/5/68


def test_tdx_uptodate_and_expired(vectors) -> None:
    d = vectors / "tdx" / "uptodate"
    quote = next(p for p in d.iterdir() if p.name != "collateral.json")
    args = ["--platform", "tdx", "--quote", str(quote), "--collateral", str(d / "collateral.json")]
    code, out = run(*args, "--as-of", "2025-07-01T00:00:00Z")
    assert code == 0, out
    code, out = run(*args, "--as-of", "2026-11-21T00:00:00Z")
    assert code == 1 and out["reason"] == "tdx.collateral_expired"


def test_nvidia_h100(vectors, tmp_path) -> None:
    d = vectors / "nvidia" / "h100"
    nonce = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
    base = [
        "--platform",
        "nvidia",
        "--report",
        str(d / "report.hex"),
        "--cert-chain",
        str(d / "cert_chain.pem"),
        "--as-of",
        "2025-06-01T00:00:00Z",
    ]
    code, out = run(*base, "--nonce", nonce)  # production policy: no RIMs to judge it by
    assert code == 1 and out["reason"] == "nvidia.rim_missing"
    (tmp_path / "p.json").write_text('{"require_rims": false, "require_revocation": false}')
    args = [*base, "--policy", str(tmp_path / "p.json")]
    code, out = run(*args, "--nonce", nonce)
    assert code == 0, out
    code, out = run(*args, "--nonce", "00" * 32)
    assert code == 1 and out["reason"] == "nvidia.nonce_mismatch"
    root_only = vectors / "nvidia" / "chain-root-only" / "cert_chain.pem"
    code, out = run(
        "--platform",
        "nvidia",
        "--report",
        str(d / "report.hex"),
        "--cert-chain",
        str(root_only),
        "--nonce",
        nonce,
        "--as-of",
        "2025-06-01T00:00:00Z",
        "--policy",
        str(tmp_path / "p.json"),
    )
    assert code == 1 and out["reason"] == "nvidia.chain_too_short"


def test_azure_snp_vtpm(vectors, tmp_path) -> None:
    ev = vectors / "azure" / "snp-vtpm-milan" / "evidence.json"
    roots = vectors / "roots"
    # the Milan ASK+ARK travel as the chain, like AMD KDS's cert_chain
    chain_file = tmp_path / "ask_ark.pem"
    chain_file.write_bytes((roots / "canonical_SEV-Milan.pem").read_bytes() + (roots / "canonical_ARK-Milan.pem").read_bytes())
    # AMD's real Milan CRL (tests/data/amd): the SNP report inside the HCL report needs one too
    crl = Path(__file__).parent / "data" / "amd" / "Milan-vcek-crl.der"
    args = [
        "--platform",
        "azure-snp-vtpm",
        "--evidence",
        str(ev),
        "--chain",
        str(chain_file),
        "--crl",
        str(crl),
        "--as-of",
        "2025-06-01T00:00:00Z",
    ]
    code, out = run(*args, "--nonce", "6368616c6c656e6765")  # a v1 sample: the report_data is not in its user-data
    assert code == 1 and out["reason"] == "azure.user_data_unbound"
    (tmp_path / "legacy.json").write_text('{"require_user_data_binding": false}')
    args += ["--policy", str(tmp_path / "legacy.json")]
    code, out = run(*args, "--nonce", "6368616c6c656e6765")
    assert code == 0, out
    assert out["claims"]["measurement"].startswith("6a063be9")
    code, out = run(*args, "--nonce", "00")
    assert code == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--platform", "nonsense"],
        ["--platform", "sev-snp"],  # no report
        ["--platform", "sev-snp", "--report", "/nonexistent", "--vcek", "/nonexistent"],
    ],
)
def test_usage_errors_exit_2(args) -> None:
    code, _ = run(*args)
    assert code == 2


def test_help_explains_itself() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("up", "verify", "chat", "proxy", "evidence"):
        assert word in result.stdout
