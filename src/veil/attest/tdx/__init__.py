"""Intel TDX: quotes v4/v5 verified with dcap-qvl against PCS collateral, then a TdxPolicy.

``verify_evidence`` is the library entry point; ``verify_files`` serves `veil evidence verify
--platform tdx`. Both return a Verdict and never raise for bad evidence.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from veil.attest.binding import check_report_data
from veil.attest.claims import Claims, Verdict
from veil.attest.files import EvidenceFiles
from veil.attest.tdx.abi import TdxQuote, parse_quote
from veil.attest.tdx.inputs import need, read_binary_or_hex, read_json
from veil.attest.tdx.validate import TdxPolicy, validate_claims
from veil.attest.tdx.verify import TdxVerified, to_claims, verify_quote
from veil.errors import ParseError, VeilError

__all__ = [
    "TdxPolicy", "TdxQuote", "TdxVerified", "parse_quote", "verify_quote", "validate_claims",
    "verify_evidence", "verify_files", "load_policy",
]


def verify_evidence(
    quote: bytes,
    collateral: dict[str, Any],
    policy: TdxPolicy | None = None,
    *,
    as_of: datetime | None = None,
    expected_report_data: bytes | None = None,
) -> Verdict:
    """Parse, verify (as of ``as_of``), bind report_data, then apply ``policy`` (default: production)."""
    claims: Claims | None = None
    try:
        verified = verify_quote(quote, collateral, as_of=as_of)
        claims = to_claims(verified)
        if expected_report_data is not None:
            check_report_data(claims.report_data, expected_report_data)
        validate_claims(claims, policy or TdxPolicy())
    except VeilError as exc:
        return Verdict.reject(exc, claims)
    return Verdict.accept(claims, f"TDX quote verified, TCB {claims.tcb['status']}")


def load_policy(inputs: EvidenceFiles) -> TdxPolicy:
    """The --policy file (or defaults), with --allow-debug applied on top."""
    policy = TdxPolicy()
    if inputs.policy is not None:
        try:
            policy = TdxPolicy.model_validate(read_json(inputs.policy))
        except ValueError as exc:  # pydantic.ValidationError is a ValueError
            raise ParseError("tdx.policy_invalid", str(exc)) from exc
    if inputs.allow_debug:
        policy = policy.model_copy(update={"allow_debug": True})
    return policy


def verify_files(inputs: EvidenceFiles) -> Verdict:
    """`veil evidence verify --platform tdx --quote Q --collateral C [--policy P] [--as-of T]`."""
    try:
        quote = read_binary_or_hex(need(inputs.quote, "--quote"))
        collateral = read_json(need(inputs.collateral, "--collateral"))
        policy = load_policy(inputs)
    except VeilError as exc:
        return Verdict.reject(exc)
    return verify_evidence(quote, collateral, policy, as_of=inputs.as_of)
