"""Intel TDX: quotes v4/v5 verified with dcap-qvl against PCS collateral, then a TdxPolicy.

Layers: ``abi`` parses quotes (exactly as dcap-qvl reports them), ``verify`` runs dcap-qvl against
the pinned Intel root (or a trusted simulation root), ``validate`` applies ``TdxPolicy``,
``collect`` gets a quote through configfs-tsm. ``platform.TDX`` ties them into the one attestation
API (:mod:`veil.attest.api`).
"""

from __future__ import annotations

from veil.attest.tdx.abi import TdxQuote, parse_quote
from veil.attest.tdx.evidence import TdxEvidence
from veil.attest.tdx.validate import TdxPolicy, validate_claims

__all__ = ["PLATFORM", "TdxEvidence", "TdxPolicy", "TdxQuote", "parse_quote", "validate_claims"]

PLATFORM = "tdx"
