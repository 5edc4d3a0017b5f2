"""Azure confidential VMs (vTPM + HCL) and MAA tokens behind the one attestation API.

Wire forms: ``{"platform": "azure-snp-vtpm"|"sim-azure-snp", "vtpm": <evidence>, "chain": <b64
ASK+ARK PEM, optional>, "maa": {"token", "certs"} (optional)}``, ``{"platform": "azure-tdx-vtpm"|
"sim-azure-tdx", "vtpm": ..., "collateral": <PCS collateral>, "maa": ...}`` and
``{"platform": "azure-maa", "maa": {"token": <JWT>, "certs": <the instance's /certs JWKS>}}``.

The binding (Veil's 64-byte report_data) must be the TPM quote's nonce, and — in v2 layouts,
which the policy requires by default — the HCL runtime claims' user-data, which the hardware
report covers. An MAA token that comes along must have attested that same user-data; its claims
(Azure's names, with its issuer as authority) are what SKR release policies are evaluated over.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from veil.attest.api import Check, VerifiedEvidence, VerifyOptions
from veil.attest.azure.evidence import VtpmEvidence, parse_evidence
from veil.attest.azure.maa import MaaToken, bound_user_data, check_nonce, token_claims, verify_token
from veil.attest.azure.validate import AzureVtpmPolicy, MaaPolicy, validate_maa, validate_vtpm
from veil.attest.azure.verify import snp_hardware, tdx_hardware, verify_vtpm
from veil.errors import ParseError, PolicyError, VerificationError

if TYPE_CHECKING:
    from veil.manifest import ReferenceValues


def _nonce(options: VerifyOptions) -> bytes:
    if options.binding.expected is None:
        raise ParseError("cli.missing_input", "vTPM evidence is checked against a nonce: give one")
    return options.binding.expected


def _chain(evidence: Mapping[str, Any]) -> bytes | None:
    raw = evidence.get("chain")
    if raw is None:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ParseError("azure.malformed_evidence", "chain is not base64") from None


def _crl(evidence: Mapping[str, Any]) -> bytes | None:
    raw = evidence.get("crl")
    if raw is None:
        return None  # the verifier's collateral cache then
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ParseError("azure.malformed_evidence", "crl is not base64") from None


def _token(evidence: Mapping[str, Any], options: VerifyOptions) -> MaaToken | None:
    maa = evidence.get("maa")
    if maa is None:
        return None
    if not isinstance(maa, dict) or not isinstance(maa.get("token"), str):
        raise ParseError("azure.malformed_evidence", "MAA evidence needs a token and its signing certificates")
    return verify_token(maa["token"], maa.get("certs"), trust=options.trust, now=options.now)


@dataclass(frozen=True)
class VtpmVerified:
    evidence: VtpmEvidence
    maa: MaaToken | None


class VtpmVerifier:
    policy_model = AzureVtpmPolicy

    def __init__(self, platform: str, hardware: str) -> None:
        self.platform, self.hardware = platform, hardware

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
        ev = parse_evidence(evidence.get("vtpm"))
        if ev.hcl.platform != self.hardware:
            raise ParseError("azure.platform_mismatch", f"HCL holds a {ev.hcl.platform} report")
        if self.hardware == "snp":
            hardware = snp_hardware(_chain(evidence), _crl(evidence))
        else:
            collateral = evidence.get("collateral")
            if collateral is not None and not isinstance(collateral, dict):
                raise ParseError("azure.malformed_evidence", "collateral must be the PCS collateral object")
            hardware = tdx_hardware(collateral)  # None: the verifier's collateral cache
        nonce = _nonce(options)
        claims, hw = verify_vtpm(ev, nonce, hardware, platform=self.platform, options=options)
        if str(claims.details.get("hardware_platform", "")).startswith("sim-") != self.platform.startswith("sim-"):
            raise PolicyError(
                "evidence.platform_mismatch", f"{self.platform} evidence holds a {claims.details.get('hardware_platform')} report"
            )
        token = _token(evidence, options)
        checks = [
            *(Check(f"hardware: {c.name}", c.result) for c in hw.checks if c.name != "binding"),
            Check("HCL binding", "the report's report_data covers the HCL runtime claims (HCLAkPub, user-data)"),
            Check("TPM quote", "signed by HCLAkPub from the runtime claims; PCR digest matches"),
            Check(
                "binding",
                "the TPM quote's nonce is the expected report_data"
                + (
                    "; so is the runtime claims' user-data (hardware-signed)"
                    if claims.details["user_data_bound"]
                    else "; NOT CHECKED in the runtime claims (legacy layout)"
                ),
            ),
        ]
        if token is not None:
            if not hmac.compare_digest(bound_user_data(token), ev.hcl.user_data) or not any(ev.hcl.user_data):
                raise VerificationError(
                    "azure.maa_binding_mismatch", "the MAA token attests other runtime claims than this evidence's"
                )
            claims = claims.__class__(
                **{
                    **claims.__dict__,
                    "simulated": claims.simulated or token.simulated,
                    "details": {**claims.details, "maa": {"issuer": token.issuer, "claims": token.payload}},
                }
            )
            checks.append(
                Check("MAA token", f"RS256 by {token.signer!r}, chain and times valid; it attests this evidence's runtime claims")
            )
        return VerifiedEvidence(claims, tuple(checks), native=VtpmVerified(ev, token))

    def policy(self, reference: ReferenceValues) -> AzureVtpmPolicy:
        return AzureVtpmPolicy.from_reference(reference)

    def validate(self, verified: VerifiedEvidence, policy: AzureVtpmPolicy) -> list[Check]:
        native: VtpmVerified = verified.native
        return validate_vtpm(verified.claims, native.evidence, policy, native.maa)


class MaaVerifier:
    policy_model = MaaPolicy

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
        token = _token(evidence, options)
        if token is None:
            raise ParseError("azure.malformed_evidence", "MAA evidence needs a token and its signing certificates")
        checks = [Check("token signature", f"RS256 by {token.signer!r}; its chain and the token's times valid")]
        if options.binding.expected is not None:
            check_nonce(token, options.binding.expected)
            checks.append(Check("binding", "the token carries the expected nonce"))
        else:
            checks.append(Check("binding", "NOT CHECKED: no nonce given"))
        return VerifiedEvidence(token_claims(token), tuple(checks), native=token)

    def policy(self, reference: ReferenceValues) -> MaaPolicy:
        raise ParseError(
            "azure.no_reference_values", "MAA tokens are judged inside Azure CVM evidence (ReferenceValues.azure.maa)"
        )

    def validate(self, verified: VerifiedEvidence, policy: MaaPolicy) -> list[Check]:
        return validate_maa(verified.native, policy, verified.claims)


AZURE_SNP_VTPM = VtpmVerifier("azure-snp-vtpm", "snp")
AZURE_TDX_VTPM = VtpmVerifier("azure-tdx-vtpm", "tdx")
SIM_AZURE_SNP = VtpmVerifier("sim-azure-snp", "snp")
SIM_AZURE_TDX = VtpmVerifier("sim-azure-tdx", "tdx")
AZURE_MAA = MaaVerifier()
