"""Azure vTPM evidence in every layout the open-source attesters emit (Trustee's attestation agent on
az-cvm-vtpm: v0 byte arrays, v1, v2 with the report_data in the runtime claims; SNP on Milan and
Genoa, TDX), real samples from confidential-containers/trustee (tests/data/azure/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attest_verdicts import azure_verdict
from veil.attest.azure import AzureVtpmPolicy, parse_evidence
from veil.attest.azure.verify import ak_public_key, check_nonce, check_pcr_digest, hcl_report_data, verify_tpm_signature
from veil.attest.tdx.abi import parse_quote, parse_td_report

DATA = Path(__file__).parents[1] / "data" / "azure"
CHALLENGE = b"challenge"
V2_REPORT_DATA = bytes.fromhex("982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef")
LEGACY = AzureVtpmPolicy(require_user_data_binding=False)


def _load(name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((DATA / name).read_text())


@pytest.mark.parametrize(
    ("name", "version", "nonce", "product"),
    [
        ("trustee-az-snp-vtpm-evidence-v0.json", 0, CHALLENGE, "Milan"),
        ("trustee-az-snp-vtpm-evidence-v1.json", 1, CHALLENGE, "Milan"),
        ("trustee-az-snp-vtpm-evidence-genoa.json", 0, None, "Genoa"),
    ],
)
def test_legacy_snp_layouts_verify_through_the_tpm_quote(name: str, version: int, nonce: bytes | None, product: str) -> None:
    doc = _load(name)
    ev = parse_evidence(doc)
    nonce = nonce or ev.tpm_quote.attest.extra_data  # the Genoa sample's is a 48-byte hash
    v = azure_verdict("azure-snp-vtpm", doc, nonce, LEGACY)
    assert v.accepted, v
    assert v.claims is not None and v.claims.details["evidence_version"] == version
    assert v.claims.details["product"] == product and v.claims.details["user_data_bound"] is False
    assert azure_verdict("azure-snp-vtpm", doc, nonce).reason == "azure.user_data_unbound"  # production policy
    assert azure_verdict("azure-snp-vtpm", doc, b"other", LEGACY).reason == "azure.nonce_mismatch"


def test_v2_binds_the_report_data_in_the_runtime_claims() -> None:
    doc = _load("trustee-az-snp-vtpm-evidence-v2.json")
    v = azure_verdict("azure-snp-vtpm", doc, V2_REPORT_DATA)  # the production policy
    assert v.accepted, v
    assert v.claims is not None and v.claims.details["user_data_bound"] is True
    assert v.claims.report_data[:48] == V2_REPORT_DATA
    assert any("runtime claims' user-data" in c.result for c in v.checks)


@pytest.mark.parametrize("name", ["trustee-az-tdx-vtpm-evidence-v0.json", "trustee-az-tdx-vtpm-evidence-v1.json"])
def test_tdx_layouts(name: str) -> None:
    """Every link but the TD quote's PCS collateral (not published with the samples): the TDREPORT
    binds the runtime claims, HCLAkPub signs the TPM quote over the nonce, the TD quote quotes the
    TDREPORT. Without collateral the verifier refuses (fail closed)."""
    doc = _load(name)
    ev = parse_evidence(doc)
    assert ev.hcl.platform == "tdx" and ev.td_quote is not None
    report = parse_td_report(ev.hcl.td_report)
    assert report.report_data == hcl_report_data(ev.hcl)
    verify_tpm_signature(ev.tpm_quote, ak_public_key(ev.hcl.ak_jwk()))
    check_pcr_digest(ev.tpm_quote)
    check_nonce(ev.tpm_quote.attest, CHALLENGE)
    body = parse_quote(ev.td_quote).body
    assert body.report_data == report.report_data and body.mr_td == report.mr_td
    v = azure_verdict("azure-tdx-vtpm", doc, CHALLENGE, LEGACY)
    assert not v.accepted and v.reason.startswith(("tdx.", "cli."))


def test_layouts_agree_on_the_same_machine() -> None:
    """v0 (byte arrays, PEM VCEK) and v1 (strings, DER VCEK) come from one machine: same chip, VCEK."""
    v0, v1 = (
        parse_evidence(_load("trustee-az-snp-vtpm-evidence-v0.json")),
        parse_evidence(_load("trustee-az-snp-vtpm-evidence-v1.json")),
    )
    assert v0.vcek == v1.vcek and v0.hcl.hw_report[0x1A0:0x1E0] == v1.hcl.hw_report[0x1A0:0x1E0]  # CHIP_ID


def test_unknown_layout_refused() -> None:
    doc = _load("trustee-az-snp-vtpm-evidence-v1.json")
    assert azure_verdict("azure-snp-vtpm", {**doc, "version": 3}, CHALLENGE).reason == "azure.evidence_unsupported"
    assert azure_verdict("azure-snp-vtpm", {**doc, "hcl_report": [1, 2, 300]}, CHALLENGE).reason == "azure.evidence_malformed"
