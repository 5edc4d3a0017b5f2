"""Azure policies: vTPM CVM reference values (hardware policy, PCRs, secure boot) and MAA tokens.

No cryptography here: these run on claims that verify.py / maa.py already checked.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from veil.attest.azure.evidence import VtpmEvidence
from veil.attest.claims import Claims
from veil.attest.snp.abi import parse_report
from veil.attest.snp.validate import SnpPolicy, validate_report
from veil.attest.tdx.validate import TdxPolicy, validate_claims
from veil.errors import PolicyError

MAA_ISSUER_SUFFIX = ".attest.azure.net"


def _pcr_map(v: dict[int, list[str]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for idx, values in v.items():
        if not 0 <= idx < 24:
            raise ValueError(f"PCR index {idx} out of range")
        norm = [x.lower().removeprefix("0x") for x in values]
        if any(len(x) != 64 or any(c not in "0123456789abcdef" for c in x) for x in norm):
            raise ValueError(f"PCR{idx} values must be 32 bytes of hex")
        out[idx] = norm
    return out


class AzureVtpmPolicy(BaseModel):
    """Hardware policy per CVM kind, plus vTPM rules. Empty ``pcrs`` means PCRs are not pinned."""

    model_config = ConfigDict(extra="forbid")

    snp: SnpPolicy = Field(default_factory=lambda: SnpPolicy.model_validate({}))
    tdx: TdxPolicy = Field(default_factory=lambda: TdxPolicy())
    pcrs: dict[int, list[str]] = Field(default_factory=dict)
    require_secure_boot: bool = True

    @field_validator("pcrs")
    @classmethod
    def _pcrs(cls, v: dict[int, list[str]]) -> dict[int, list[str]]:
        return _pcr_map(v)

    def with_debug(self) -> "AzureVtpmPolicy":
        """A copy that tolerates debug guests (the CLI's --allow-debug)."""
        return self.model_copy(update={
            "snp": self.snp.model_copy(update={"allow_debug": True}),
            "tdx": self.tdx.model_copy(update={"allow_debug": True}),
        })


def validate_vtpm(claims: Claims, evidence: VtpmEvidence, policy: AzureVtpmPolicy) -> None:
    """Raise PolicyError unless verified vTPM claims satisfy ``policy``."""
    hardware = claims.details.get("hardware_platform")
    if hardware == "sev-snp":
        report = parse_report(evidence.hcl.hw_report)
        validate_report(report, policy.snp, claims.details.get("product"))
    elif hardware == "tdx":
        validate_claims(claims, policy.tdx)
    else:
        raise PolicyError("azure.platform_mismatch", f"unexpected hardware {hardware!r}")
    vm = claims.details.get("vm_configuration", {})
    if policy.require_secure_boot and vm.get("secure-boot") is not True:
        raise PolicyError("azure.secure_boot_off", "the CVM booted without UEFI secure boot")
    pcrs = claims.details.get("pcrs", {})
    for idx, allowed in policy.pcrs.items():
        if pcrs.get(str(idx)) not in allowed:
            raise PolicyError("azure.pcr_not_allowed", f"PCR{idx} is not an allowed value")


class MaaPolicy(BaseModel):
    """Which Microsoft Azure Attestation tokens to accept.

    ``issuers``: exact issuer URLs; when empty, any ``https://<name>.attest.azure.net`` issuer.
    ``signing_keys``: allowed key ids or SHA-256 fingerprints (hex) of the x5c signing
    certificate; when empty, any key of the supplied JWKS (the JWKS is then the trust anchor).
    """

    model_config = ConfigDict(extra="forbid")

    issuers: list[str] = Field(default_factory=list)
    signing_keys: list[str] = Field(default_factory=list)
    leeway_seconds: int = Field(default=60, ge=0, le=600)
    allow_debug: bool = False
    attestation_types: list[str] = Field(default_factory=lambda: ["sevsnpvm", "tdxvm"])
    measurements: list[str] = Field(default_factory=list)
    require_azure_compliant: bool = False


def issuer_allowed(issuer: str, policy: MaaPolicy) -> bool:
    if policy.issuers:
        return issuer in policy.issuers
    host = issuer.removeprefix("https://")
    return issuer.startswith("https://") and host.endswith(MAA_ISSUER_SUFFIX) and "/" not in host


def validate_maa(claims: Claims, policy: MaaPolicy) -> None:
    """Raise PolicyError unless an already verified MAA token's claims satisfy ``policy``."""
    kind = claims.details.get("attestation_type")
    if kind not in policy.attestation_types:
        raise PolicyError("azure.maa_tee_not_allowed", f"attestation type {kind!r} not allowed")
    if claims.debug and not policy.allow_debug:
        raise PolicyError("azure.maa_debug_forbidden", "the attested VM is debuggable")
    if policy.measurements and claims.measurement not in [m.lower() for m in policy.measurements]:
        raise PolicyError("azure.maa_measurement_not_allowed", "launch measurement not allowed")
    if policy.require_azure_compliant and not str(
        claims.details.get("compliance_status", "")
    ).startswith("azure-compliant"):
        raise PolicyError("azure.maa_not_compliant", "MAA did not mark the VM azure-compliant")
