"""Azure confidential VMs (vTPM + HCL) and MAA tokens behind the one attestation API.

Wire forms: ``{"platform": "azure-snp-vtpm", "vtpm": <evidence>, "chain": <b64 ASK+ARK PEM, optional>}``,
``{"platform": "azure-tdx-vtpm", "vtpm": <evidence>, "collateral": <PCS collateral>}`` and
``{"platform": "azure-maa", "maa": {"token": <JWT>, "jwks": <JWKS>}}``. For vTPM evidence the
binding is the nonce the TPM quote carries; for MAA the token's nonce claim.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from veil.attest.api import Check, VerifiedEvidence, VerifyOptions
from veil.attest.azure.evidence import VtpmEvidence, parse_evidence
from veil.attest.azure.maa import check_nonce, token_claims, verify_token
from veil.attest.azure.validate import AzureVtpmPolicy, MaaPolicy, validate_maa, validate_vtpm
from veil.attest.azure.verify import snp_hardware, tdx_hardware, verify_vtpm
from veil.errors import ParseError

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


class VtpmVerifier:
    policy_model = AzureVtpmPolicy

    def __init__(self, platform: str) -> None:
        self.platform = platform

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
        ev = parse_evidence(evidence.get("vtpm"))
        kind = "snp" if self.platform == "azure-snp-vtpm" else "tdx"
        if ev.hcl.platform != kind:
            raise ParseError("azure.platform_mismatch", f"HCL holds a {ev.hcl.platform} report")
        if kind == "snp":
            hardware = snp_hardware(_chain(evidence))
        else:
            collateral = evidence.get("collateral")
            if not isinstance(collateral, dict):
                raise ParseError("cli.missing_input", "azure-tdx-vtpm evidence needs its PCS collateral")
            hardware = tdx_hardware(collateral)
        claims = verify_vtpm(ev, _nonce(options), hardware, platform=self.platform, as_of=options.now)
        checks = (
            Check("hardware report", f"{claims.details.get('hardware_platform')} report signature and chain: valid"),
            Check("HCL binding", "the report's report_data covers the HCL runtime claims"),
            Check("TPM quote", "signed by HCLAkPub from the runtime claims; PCR digest matches"),
            Check("binding", "the TPM quote carries the expected nonce"),
        )
        return VerifiedEvidence(claims, checks, native=ev)

    def policy(self, reference: ReferenceValues) -> AzureVtpmPolicy:
        raise ParseError("azure.no_reference_values", f"{self.platform} reference values are not in the manifest yet")

    def validate(self, verified: VerifiedEvidence, policy: AzureVtpmPolicy) -> list[Check]:
        native: VtpmEvidence = verified.native
        validate_vtpm(verified.claims, native, policy)
        return [Check("vTPM policy", "hardware policy, PCRs and secure boot as required")]


class MaaVerifier:
    policy_model = MaaPolicy

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
        maa = evidence.get("maa")
        if not isinstance(maa, dict) or not isinstance(maa.get("token"), str):
            raise ParseError("azure.malformed_evidence", "MAA evidence needs a token and its JWKS")
        payload = verify_token(maa["token"], maa.get("jwks"), MaaPolicy(), as_of=options.now)
        checks = [Check("token signature", "RS256 by a key of the given JWKS: valid; issuer and times checked")]
        if options.binding.expected is not None:
            check_nonce(payload, options.binding.expected)
            checks.append(Check("binding", "the token carries the expected nonce"))
        else:
            checks.append(Check("binding", "NOT CHECKED: no nonce given"))
        native = {"token": maa["token"], "jwks": maa.get("jwks"), "now": options.now}
        return VerifiedEvidence(token_claims(payload), tuple(checks), native=native)

    def policy(self, reference: ReferenceValues) -> MaaPolicy:
        raise ParseError("azure.no_reference_values", "MAA reference values are not in the manifest yet")

    def validate(self, verified: VerifiedEvidence, policy: MaaPolicy) -> list[Check]:
        # the policy's issuers and signing keys narrow what verify accepted with the defaults
        native = verified.native
        verify_token(native["token"], native["jwks"], policy, as_of=native["now"])
        validate_maa(verified.claims, policy)
        return [Check("MAA policy", "issuer, signing key, attestation type, debug, measurement and compliance as required")]


AZURE_SNP_VTPM = VtpmVerifier("azure-snp-vtpm")
AZURE_TDX_VTPM = VtpmVerifier("azure-tdx-vtpm")
AZURE_MAA = MaaVerifier()
