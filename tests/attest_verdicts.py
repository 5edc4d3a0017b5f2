"""Tests' edge onto the attestation API: verify, then validate, as a Verdict (as the CLI does).

The library raises typed errors; tests that sweep many evidence variants compare reason codes,
so this turns one platform's verify + validate into the Verdict an edge would print, with the
claims of genuine-but-refused evidence kept (as ``veil evidence verify`` shows them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from veil.attest.api import Binding, VerifiedEvidence, VerifyOptions, summary
from veil.attest.claims import Verdict
from veil.attest.snp import SnpEvidence, SnpPolicy
from veil.attest.tdx import TdxEvidence, TdxPolicy
from veil.attest.trust import TrustRoots
from veil.errors import VeilError


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
    collateral: Any = None,
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
    return _two_stage(lambda: verify_evidence(TdxEvidence(quote, collateral), options),
                      lambda v: TDX.validate(v, policy or TdxPolicy()))
