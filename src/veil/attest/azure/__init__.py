"""Azure confidential VMs: vTPM + HCL evidence (SEV-SNP and TDX) and Azure Attestation tokens.

Platforms: ``azure-snp-vtpm`` and ``azure-tdx-vtpm`` (hardware report ▸ HCL runtime claims ▸
vTPM attestation key ▸ TPM quote with the verifier's nonce), and ``azure-maa`` (a JWT signed by
Microsoft Azure Attestation). Entry points return a Verdict and never raise for bad evidence.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from veil.attest.azure.evidence import VtpmEvidence, parse_evidence
from veil.attest.azure.maa import check_nonce as check_maa_nonce
from veil.attest.azure.maa import token_claims, verify_token
from veil.attest.azure.validate import AzureVtpmPolicy, MaaPolicy, validate_maa, validate_vtpm
from veil.attest.azure.verify import HardwareVerifier, snp_hardware, tdx_hardware, verify_vtpm
from veil.attest.binding import check_report_data
from veil.attest.claims import Claims, Verdict
from veil.errors import ParseError, VeilError

__all__ = [
    "AzureVtpmPolicy", "MaaPolicy", "VtpmEvidence", "parse_evidence", "verify_snp_vtpm",
    "verify_tdx_vtpm", "verify_vtpm_evidence", "verify_maa",
]

_HW = {"azure-snp-vtpm": "snp", "azure-tdx-vtpm": "tdx"}


def verify_vtpm_evidence(
    evidence: dict[str, Any] | VtpmEvidence,
    nonce: bytes,
    hardware: HardwareVerifier,
    policy: AzureVtpmPolicy | None = None,
    *,
    platform: str,
    as_of: datetime | None = None,
    expected_report_data: bytes | None = None,
) -> Verdict:
    """Shared path for both CVM kinds; ``hardware`` verifies the report inside the HCL envelope."""
    claims: Claims | None = None
    try:
        ev = evidence if isinstance(evidence, VtpmEvidence) else parse_evidence(evidence)
        if ev.hcl.platform != _HW.get(platform):
            raise ParseError("azure.platform_mismatch", f"HCL holds a {ev.hcl.platform} report")
        claims = verify_vtpm(ev, nonce, hardware, platform=platform, as_of=as_of)
        if expected_report_data is not None:
            check_report_data(claims.report_data, expected_report_data)
        validate_vtpm(claims, ev, policy or AzureVtpmPolicy())
    except VeilError as exc:
        return Verdict.reject(exc, claims)
    return Verdict.accept(claims, f"{platform} evidence verified")


def verify_snp_vtpm(
    evidence: dict[str, Any] | VtpmEvidence,
    nonce: bytes,
    policy: AzureVtpmPolicy | None = None,
    *,
    chain_pem: bytes | None = None,
    as_of: datetime | None = None,
    expected_report_data: bytes | None = None,
) -> Verdict:
    """Azure SEV-SNP CVM: ``chain_pem`` is ASK+ARK (default: the SNP collateral cache)."""
    return verify_vtpm_evidence(
        evidence, nonce, snp_hardware(chain_pem), policy, platform="azure-snp-vtpm", as_of=as_of,
        expected_report_data=expected_report_data,
    )


def verify_tdx_vtpm(
    evidence: dict[str, Any] | VtpmEvidence,
    nonce: bytes,
    collateral: dict[str, Any],
    policy: AzureVtpmPolicy | None = None,
    *,
    as_of: datetime | None = None,
    expected_report_data: bytes | None = None,
) -> Verdict:
    """Azure TDX CVM: the evidence's td_quote is checked with dcap-qvl against ``collateral``."""
    return verify_vtpm_evidence(
        evidence, nonce, tdx_hardware(collateral), policy, platform="azure-tdx-vtpm", as_of=as_of,
        expected_report_data=expected_report_data,
    )


def verify_maa(
    token: str,
    jwks: Any,
    policy: MaaPolicy | None = None,
    *,
    as_of: datetime | None = None,
    expected_nonce: bytes | None = None,
) -> Verdict:
    """An MAA JWT: signature against ``jwks``, issuer, time, then the MaaPolicy."""
    policy = policy or MaaPolicy()
    claims: Claims | None = None
    try:
        payload = verify_token(token, jwks, policy, as_of=as_of)
        claims = token_claims(payload)
        if expected_nonce is not None:
            check_maa_nonce(payload, expected_nonce)
        validate_maa(claims, policy)
    except VeilError as exc:
        return Verdict.reject(exc, claims)
    return Verdict.accept(claims, "Azure Attestation token verified")
