"""Tests' edge onto the attestation API: verify, then validate, as a Verdict (as the CLI does).

The library raises typed errors; tests that sweep many evidence variants compare reason codes,
so this turns one platform's verify + validate into the Verdict an edge would print, with the
claims of genuine-but-refused evidence kept (as ``veil evidence verify`` shows them).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from veil.attest.api import Binding, VerifiedEvidence, VerifyOptions, summary
from veil.attest.claims import Verdict
from veil.attest.snp import SnpEvidence, SnpPolicy
from veil.attest.tdx import TdxEvidence, TdxPolicy
from veil.attest.trust import TrustRoots
from veil.errors import VeilError


AMD_DATA = Path(__file__).parent / "data" / "amd"


class StaticCollateral:
    """A verifier's collateral cache holding fixed CRLs: AMD's real Milan and Genoa VCEK CRLs by
    default (tests/data/amd, from openpcc/openpcc's testdata; Milan: issued 2025-05-06, next
    update 2026-05-12; Genoa: 2024-10-23 .. 2025-11-03)."""

    def __init__(self, crls: dict[tuple[str, str], bytes] | None = None) -> None:
        if crls is None:
            crls = {(p, "vcek"): (AMD_DATA / f"{p}-vcek-crl.der").read_bytes() for p in ("Milan", "Genoa")}
        self.crls = crls

    def read_crl(self, product: str, kind: str = "vcek") -> bytes | None:
        return self.crls.get((product, kind))

    def read_vcek(self, product: str, chip_id: bytes, tcb: Any) -> bytes | None:
        return None

    def read_tdx(self, fmspc: str) -> dict[str, Any] | None:
        return None


AMD_CRLS = StaticCollateral()


def _options(trust: TrustRoots | None, as_of: datetime | None, expected: bytes | None, collateral: Any) -> VerifyOptions:
    binding = Binding.to(expected) if expected is not None else Binding.unbound()
    return VerifyOptions(binding, trust or TrustRoots.production(), as_of, collateral)


def _two_stage(verify: Any, validate: Any) -> Verdict:
    verified: VerifiedEvidence | None = None
    try:
        verified = verify()
        checks = verified.checks + tuple(validate(verified))
    except VeilError as err:
        return Verdict.reject(err, verified.claims if verified else None)
    return Verdict.accept(verified.claims, summary(verified.claims), checks)


def snp_verdict(
    evidence: SnpEvidence,
    policy: SnpPolicy | None = None,
    *,
    trust: TrustRoots | None = None,
    as_of: datetime | None = None,
    expected_report_data: bytes | None = None,
    collateral: Any = AMD_CRLS,
) -> Verdict:
    from veil.attest.snp.platform import SEV_SNP, verify_evidence

    options = _options(trust, as_of, expected_report_data, collateral)
    return _two_stage(lambda: verify_evidence(evidence, options), lambda v: SEV_SNP.validate(v, policy or SnpPolicy()))


def tdx_verdict(
    quote: bytes,
    collateral: dict[str, Any] | None,
    policy: TdxPolicy | None = None,
    *,
    trust: TrustRoots | None = None,
    as_of: datetime | None = None,
    expected_report_data: bytes | None = None,
    cache: Any = None,
) -> Verdict:
    from veil.attest.tdx.platform import TDX, verify_evidence

    options = _options(trust, as_of, expected_report_data, cache)
    return _two_stage(
        lambda: verify_evidence(TdxEvidence(quote, collateral), options), lambda v: TDX.validate(v, policy or TdxPolicy())
    )


def nvidia_verdict(
    evidence: Any,
    policy: Any = None,
    *,
    expected_nonce: bytes,
    as_of: datetime | None = None,
    trusted_roots: Any = None,
    trust: TrustRoots | None = None,
) -> Verdict:
    """One GPU's evidence through verify + validate; ``trusted_roots`` adds simulation roots (fake
    GPUs); ``policy`` defaults to the production GpuReference (RIMs and revocation required)."""
    from veil.attest.nvidia.platform import NVIDIA, verify_evidence
    from veil.attest.nvidia.validate import NvidiaPolicy

    trust = trust or TrustRoots.production().with_simulation(*(trusted_roots or ()))
    options = _options(trust, as_of, expected_nonce, None)
    return _two_stage(lambda: verify_evidence(evidence, options), lambda v: NVIDIA.validate(v, policy or NvidiaPolicy()))


AZURE_AS_OF = datetime(2025, 6, 1, tzinfo=__import__("datetime").timezone.utc)  # inside AMD's real Milan/Genoa CRLs


def azure_verdict(
    platform: str,
    vtpm: dict[str, Any],
    nonce: bytes,
    policy: Any = None,
    *,
    chain: bytes | None = None,
    collateral: dict[str, Any] | None = None,
    maa: dict[str, Any] | None = None,
    trust: TrustRoots | None = None,
    as_of: datetime | None = AZURE_AS_OF,
    cache: Any = AMD_CRLS,
) -> Verdict:
    """Azure vTPM evidence in Veil's wire form through the registry's verifier, then the policy
    (default: production's AzureVtpmPolicy)."""
    import base64

    from veil.attest import registry
    from veil.attest.azure import AzureVtpmPolicy

    evidence: dict[str, Any] = {"platform": platform, "vtpm": vtpm}
    if chain is not None:
        evidence["chain"] = base64.b64encode(chain).decode()
    if collateral is not None:
        evidence["collateral"] = collateral
    if maa is not None:
        evidence["maa"] = maa
    verifier = registry.verifier(platform)
    options = _options(trust, as_of, nonce, cache)
    return _two_stage(lambda: verifier.verify(evidence, options), lambda v: verifier.validate(v, policy or AzureVtpmPolicy()))
