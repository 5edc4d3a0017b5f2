"""TDX evidence as it travels: the quote plus the PCS collateral that verifies it offline."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from veil.errors import ParseError


@dataclass(frozen=True)
class TdxEvidence:
    """A DCAP quote (v4/v5) and Intel PCS collateral (the nine PCS fields), or None when the
    verifier is to take the collateral from its cache (``VerifyOptions.collateral``)."""

    quote: bytes
    collateral: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"quote": base64.b64encode(self.quote).decode("ascii")}
        if self.collateral is not None:
            out["collateral"] = self.collateral
        return out

    @classmethod
    def from_json(cls, obj: Any) -> TdxEvidence:
        if not isinstance(obj, dict):
            raise ParseError("tdx.malformed_evidence", "TDX evidence must be a JSON object")
        quote, collateral = obj.get("quote"), obj.get("collateral")
        if not isinstance(quote, str):
            raise ParseError("tdx.malformed_evidence", "TDX evidence has no base64 quote")
        if collateral is not None and not isinstance(collateral, dict):
            raise ParseError("tdx.collateral_malformed", "collateral must be a JSON object")
        try:
            raw = base64.b64decode(quote, validate=True)
        except (binascii.Error, ValueError):
            raise ParseError("tdx.malformed_evidence", "the quote is not valid base64") from None
        return cls(raw, collateral)
