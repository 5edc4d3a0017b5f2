"""Azure policies: vTPM CVM reference values (hardware policy, PCRs, secure boot, the user-data
binding, an MAA token) and MAA tokens.

No signature checks here: these run on what verify.py / maa.py already verified. The policies are
built from the manifest's ``ReferenceValues`` (``snp``/``tdx`` for the hardware report inside the
HCL report, ``azure`` for the rest).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from veil.attest.api import Check
from veil.attest.azure.evidence import VtpmEvidence
from veil.attest.azure.maa import MaaToken, check_root
from veil.attest.claims import Claims
from veil.attest.snp.abi import parse_report
from veil.attest.snp.validate import SnpPolicy, validate_report
from veil.attest.tdx.validate import TdxPolicy, validate_claims
from veil.errors import PolicyError

if TYPE_CHECKING:
    from veil.manifest import MaaReference, ReferenceValues

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


class MaaPolicy(BaseModel):
    """Which Microsoft Azure Attestation tokens to accept.

    ``signing_roots``: SHA-256 fingerprints of roots the token's signing chain may end at, beyond
    ``TrustRoots.microsoft`` (and trusted simulation roots). ``issuers``: exact issuer URLs; when
    empty, any ``https://<name>.attest.azure.net``.
    """

    model_config = ConfigDict(extra="forbid")

    issuers: list[str] = Field(default_factory=list)
    signing_roots: list[str] = Field(default_factory=list)
    leeway_seconds: int = Field(default=60, ge=0, le=600)
    allow_debug: bool = False
    attestation_types: list[str] = Field(default_factory=lambda: ["sevsnpvm", "tdxvm"])
    measurements: list[str] = Field(default_factory=list)
    require_azure_compliant: bool = True

    @classmethod
    def from_reference(cls, ref: MaaReference) -> MaaPolicy:
        return cls(
            issuers=list(ref.issuers),
            signing_roots=list(ref.signing_roots),
            leeway_seconds=ref.leeway_seconds,
            attestation_types=list(ref.attestation_types),
            require_azure_compliant=ref.require_azure_compliant,
        )


class AzureVtpmPolicy(BaseModel):
    """Hardware policy per CVM kind, plus vTPM rules. Empty ``pcrs`` means PCRs are not pinned;
    ``maa`` None means no MAA token is required (one sent is still verified)."""

    model_config = ConfigDict(extra="forbid")

    snp: SnpPolicy = Field(default_factory=lambda: SnpPolicy.model_validate({}))
    tdx: TdxPolicy = Field(default_factory=lambda: TdxPolicy())
    pcrs: dict[int, list[str]] = Field(default_factory=dict)
    require_secure_boot: bool = True
    require_user_data_binding: bool = True
    maa: MaaPolicy | None = None

    @field_validator("pcrs")
    @classmethod
    def _pcrs(cls, v: dict[int, list[str]]) -> dict[int, list[str]]:
        return _pcr_map(v)

    @classmethod
    def from_reference(cls, ref: ReferenceValues) -> AzureVtpmPolicy:
        from veil.attest.snp.platform import policy_from_reference as snp_policy
        from veil.attest.tdx.platform import policy_from_reference as tdx_policy
        from veil.manifest import SNP_PLATFORMS, AzureReference

        azure = ref.azure or AzureReference()
        hardware = {"snp": snp_policy(ref)} if ref.platform in SNP_PLATFORMS else {"tdx": tdx_policy(ref)}
        return cls(
            **hardware,
            pcrs=dict(azure.pcrs),
            require_secure_boot=azure.require_secure_boot,
            require_user_data_binding=azure.require_user_data_binding,
            maa=MaaPolicy.from_reference(azure.maa) if azure.maa is not None else None,
        )


def validate_vtpm(claims: Claims, evidence: VtpmEvidence, policy: AzureVtpmPolicy, maa: MaaToken | None = None) -> list[Check]:
    """Raise PolicyError unless verified vTPM claims satisfy ``policy``; returns the checks made."""
    hardware = claims.details.get("hardware_platform")
    if hardware in ("sev-snp", "sim-snp"):
        report = parse_report(evidence.hcl.hw_report)
        validate_report(report, policy.snp, claims.details.get("product"))
    elif hardware in ("tdx", "sim-tdx"):
        validate_claims(claims, policy.tdx)
    else:
        raise PolicyError("azure.platform_mismatch", f"unexpected hardware {hardware!r}")
    checks = [Check("hardware policy", f"{hardware} reference values (measurement, TCB, debug) hold")]
    if policy.require_user_data_binding and not claims.details.get("user_data_bound"):
        raise PolicyError(
            "azure.user_data_unbound",
            "the HCL runtime claims do not carry the report_data "
            f"(evidence layout v{evidence.version}): only the TPM quote binds it",
        )
    vm = claims.details.get("vm_configuration", {})
    if policy.require_secure_boot and vm.get("secure-boot") is not True:
        raise PolicyError("azure.secure_boot_off", "the CVM booted without UEFI secure boot")
    pcrs = claims.details.get("pcrs", {})
    for idx, allowed in policy.pcrs.items():
        if pcrs.get(str(idx)) not in allowed:
            raise PolicyError("azure.pcr_not_allowed", f"PCR{idx} is not an allowed value")
    checks.append(
        Check(
            "vTPM policy",
            f"secure boot {'required' if policy.require_secure_boot else 'not required'}, {len(policy.pcrs)} PCR(s) pinned",
        )
    )
    if policy.maa is not None:
        if maa is None:
            raise PolicyError("azure.maa_required", "the manifest requires a Microsoft Azure Attestation token")
        checks += validate_maa(maa, policy.maa)
    return checks


def issuer_allowed(issuer: str, policy: MaaPolicy) -> bool:
    if policy.issuers:
        return issuer.rstrip("/") in [i.rstrip("/") for i in policy.issuers]
    host = issuer.removeprefix("https://")
    return issuer.startswith("https://") and host.endswith(MAA_ISSUER_SUFFIX) and "/" not in host


def validate_maa(token: MaaToken, policy: MaaPolicy, claims: Claims | None = None) -> list[Check]:
    """Raise unless a verified MAA token satisfies ``policy``: a pinned signer, its issuer, TEE kind,
    debug, measurement and compliance."""
    from veil.attest.azure.maa import token_claims

    check_root(token, policy.signing_roots)
    if not issuer_allowed(token.issuer, policy):
        raise PolicyError("azure.maa_issuer_not_allowed", f"issuer {token.issuer!r} not allowed")
    claims = claims or token_claims(token)
    kind = claims.details.get("attestation_type")
    if kind not in policy.attestation_types:
        raise PolicyError("azure.maa_tee_not_allowed", f"attestation type {kind!r} not allowed")
    if claims.debug and not policy.allow_debug:
        raise PolicyError("azure.maa_debug_forbidden", "the attested VM is debuggable")
    if policy.measurements and claims.measurement not in [m.lower() for m in policy.measurements]:
        raise PolicyError("azure.maa_measurement_not_allowed", "launch measurement not allowed")
    if policy.require_azure_compliant and not str(claims.details.get("compliance_status", "")).startswith("azure-compliant"):
        raise PolicyError("azure.maa_not_compliant", "MAA did not mark the VM azure-compliant")
    root = "a SIMULATION root" if token.simulated else f"root {token.root[:16]}..."
    return [
        Check(
            "MAA policy",
            f"token by {token.issuer} signed by a chain to {root}; {kind}, {claims.details.get('compliance_status')}",
        )
    ]
