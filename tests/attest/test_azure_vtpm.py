"""Azure SEV-SNP CVM vTPM evidence: the real sample in ../shared/vectors/azure, and tampering."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from attest_verdicts import AMD_CRLS, AZURE_AS_OF, azure_verdict
from veil.attest.api import Binding, VerifyOptions
from veil.attest.azure import AzureVtpmPolicy, parse_evidence
from veil.attest.azure.validate import validate_vtpm
from veil.attest.azure.verify import snp_hardware, verify_vtpm
from veil.attest.trust import TrustRoots
from veil.cli.evidence import EvidenceFiles, verify_files
from veil.errors import PolicyError

# the published sample comes from a v1 attester: its runtime claims' user-data is zeros, the
# report_data ("challenge") is bound by the TPM quote only
LEGACY = AzureVtpmPolicy(require_user_data_binding=False)


def verify_snp_vtpm(evidence, nonce, policy=None, *, chain_pem=None):  # type: ignore[no-untyped-def]
    policy = policy if policy is not None else LEGACY
    return azure_verdict("azure-snp-vtpm", evidence, nonce, policy, chain=chain_pem)


def verify_tdx_vtpm(evidence, nonce, collateral):  # type: ignore[no-untyped-def]
    return azure_verdict("azure-tdx-vtpm", evidence, nonce, LEGACY, collateral=collateral)


NONCE = bytes.fromhex("6368616c6c656e6765")
MEASUREMENT = "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e"


@pytest.fixture(scope="module")
def evidence(vectors: Path) -> dict[str, Any]:
    return json.loads((vectors / "azure/snp-vtpm-milan/evidence.json").read_text())


@pytest.fixture(scope="module")
def chain(vectors: Path) -> bytes:
    """Azure evidence carries only the VCEK: the Milan ASK/ARK come from the pinned AMD roots."""
    roots = vectors / "roots"
    return (roots / "canonical_SEV-Milan.pem").read_bytes() + (roots / "canonical_ARK-Milan.pem").read_bytes()


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def tampered(evidence: dict[str, Any], field: str, offset: int) -> dict[str, Any]:
    ev = copy.deepcopy(evidence)
    if field == "hcl_report":
        raw = bytearray(unb64u(ev["hcl_report"]))
        raw[offset] ^= 1
        ev["hcl_report"] = b64u(bytes(raw))
    else:
        raw = bytearray(bytes.fromhex(ev["tpm_quote"][field]))
        raw[offset] ^= 1
        ev["tpm_quote"][field] = raw.hex()
    return ev


def test_sample_accepted(evidence: dict[str, Any], chain: bytes) -> None:
    v = verify_snp_vtpm(evidence, NONCE, chain_pem=chain)
    assert v.accepted, v
    c = v.claims
    assert c is not None and c.platform == "azure-snp-vtpm"
    assert c.measurement == MEASUREMENT
    assert c.details["policy"] == "0x3001f" and not c.debug
    assert c.details["tpm_nonce"] == NONCE.hex()
    assert c.details["vm_configuration"]["secure-boot"] is True
    assert len(c.details["pcrs"]) == 24
    assert c.report_data == bytes(64)  # runtime claims user-data
    assert c.details["hw_report_data"].endswith("00" * 32)
    assert c.details["user_data_bound"] is False and c.details["evidence_version"] == 1
    assert any(ch.name == "hardware: revocation (CRL)" for ch in v.checks)
    # production policy: the report_data must be in the hardware-signed runtime claims too
    assert azure_verdict("azure-snp-vtpm", evidence, NONCE, chain=chain).reason == "azure.user_data_unbound"


def test_wrong_nonce(evidence: dict[str, Any], chain: bytes) -> None:
    assert verify_snp_vtpm(evidence, b"other", chain_pem=chain).reason == "azure.nonce_mismatch"


@pytest.mark.parametrize(
    ("field", "offset", "reason"),
    [
        ("message", 40, "azure.tpm_signature_invalid"),  # inside extraData
        ("message", 100, "azure.tpm_signature_invalid"),  # PCR digest
        ("signature", 10, "azure.tpm_signature_invalid"),
    ],
)
def test_tampered_tpm_quote(evidence: dict[str, Any], chain: bytes, field: str, offset: int, reason: str) -> None:
    assert verify_snp_vtpm(tampered(evidence, field, offset), NONCE, chain_pem=chain).reason == reason


def test_tampered_pcr_value(evidence: dict[str, Any], chain: bytes) -> None:
    ev = copy.deepcopy(evidence)
    ev["tpm_quote"]["pcrs"][7] = "00" * 32
    assert verify_snp_vtpm(ev, NONCE, chain_pem=chain).reason == "azure.pcr_digest_mismatch"


def test_tampered_runtime_claims(evidence: dict[str, Any], chain: bytes) -> None:
    raw = unb64u(evidence["hcl_report"]).replace(b'"secure-boot":true', b'"secure-boot":tru3')
    ev = {**evidence, "hcl_report": b64u(raw)}
    assert verify_snp_vtpm(ev, NONCE, chain_pem=chain).reason == "azure.hcl_malformed"
    raw = unb64u(evidence["hcl_report"]).replace(b"26F8BC30", b"26F8BC31")
    ev = {**evidence, "hcl_report": b64u(raw)}
    assert verify_snp_vtpm(ev, NONCE, chain_pem=chain).reason == "azure.hcl_binding_mismatch"


def test_tampered_snp_report(evidence: dict[str, Any], chain: bytes) -> None:
    v = verify_snp_vtpm(tampered(evidence, "hcl_report", 32 + 0x90), NONCE, chain_pem=chain)
    assert not v.accepted and v.reason.startswith("snp.")


def test_wrong_amd_chain(evidence: dict[str, Any], vectors: Path) -> None:
    roots = vectors / "roots"
    genoa = (roots / "canonical_SEV-Genoa.pem").read_bytes() + (roots / "canonical_ARK-Genoa.pem").read_bytes()
    v = verify_snp_vtpm(evidence, NONCE, chain_pem=genoa)
    assert not v.accepted and v.reason.startswith("snp.")


def test_platform_mismatch(evidence: dict[str, Any]) -> None:
    assert verify_tdx_vtpm(evidence, NONCE, {}).reason == "azure.platform_mismatch"


def test_policies(evidence: dict[str, Any], chain: bytes) -> None:
    pcr7 = evidence["tpm_quote"]["pcrs"][7]
    assert verify_snp_vtpm(evidence, NONCE, LEGACY.model_copy(update={"pcrs": {7: [pcr7]}}), chain_pem=chain).accepted
    v = verify_snp_vtpm(evidence, NONCE, LEGACY.model_copy(update={"pcrs": {7: ["00" * 32]}}), chain_pem=chain)
    assert v.reason == "azure.pcr_not_allowed"
    pol = AzureVtpmPolicy.model_validate({"snp": {"measurements": ["00" * 48]}, "require_user_data_binding": False})
    v = verify_snp_vtpm(evidence, NONCE, pol, chain_pem=chain)
    assert not v.accepted and v.reason.startswith("snp.")
    pol = AzureVtpmPolicy.model_validate({"snp": {"measurements": [MEASUREMENT]}, "require_user_data_binding": False})
    assert verify_snp_vtpm(evidence, NONCE, pol, chain_pem=chain).accepted


def test_secure_boot_required(evidence: dict[str, Any], chain: bytes) -> None:
    ev = parse_evidence(evidence)
    options = VerifyOptions(Binding.to(NONCE), TrustRoots.production(), AZURE_AS_OF, AMD_CRLS)
    claims, _ = verify_vtpm(ev, NONCE, snp_hardware(chain), platform="azure-snp-vtpm", options=options)
    off = dataclasses.replace(claims, details={**claims.details, "vm_configuration": {"secure-boot": False}})
    with pytest.raises(PolicyError) as e:
        validate_vtpm(off, ev, LEGACY)
    assert e.value.reason == "azure.secure_boot_off"
    validate_vtpm(off, ev, LEGACY.model_copy(update={"require_secure_boot": False}))


def test_verify_files(vectors: Path, tmp_path: Path, chain: bytes) -> None:
    chain_file = tmp_path / "ask_ark.pem"
    chain_file.write_bytes(chain)
    (tmp_path / "crl.der").write_bytes(AMD_CRLS.read_crl("Milan") or b"")
    ev = vectors / "azure/snp-vtpm-milan/evidence.json"
    legacy = tmp_path / "legacy.json"
    legacy.write_text('{"require_user_data_binding": false}')
    base = EvidenceFiles(
        platform="azure-snp-vtpm",
        evidence=ev,
        nonce=NONCE,
        chain=chain_file,
        crl=tmp_path / "crl.der",
        as_of=AZURE_AS_OF,
        policy=legacy,
    )
    assert verify_files(base).accepted
    assert verify_files(dataclasses.replace(base, policy=None)).reason == "azure.user_data_unbound"
    assert verify_files(dataclasses.replace(base, nonce=None)).reason == "cli.missing_input"
    assert verify_files(dataclasses.replace(base, evidence=None)).reason == "cli.missing_input"
    assert verify_files(dataclasses.replace(base, platform="azure-tdx-vtpm")).reason == "azure.platform_mismatch"
    pol = tmp_path / "p.json"
    pol.write_text(json.dumps({"pcrs": {"0": ["11" * 32]}, "require_user_data_binding": False}))
    assert verify_files(dataclasses.replace(base, policy=pol)).reason == "azure.pcr_not_allowed"
    pol.write_text(json.dumps({"pcrz": {}}))
    assert verify_files(dataclasses.replace(base, policy=pol)).reason == "cli.malformed_policy"
