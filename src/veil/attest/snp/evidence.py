"""SEV-SNP evidence as it travels: the report plus the collateral to verify it offline."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from veil.errors import ParseError


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(obj: dict[str, Any], name: str, required: bool = True) -> bytes | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ParseError("snp.malformed_evidence", f"evidence has no {name!r}")
        return None
    if not isinstance(value, str):
        raise ParseError("snp.malformed_evidence", f"{name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("snp.malformed_evidence", f"{name!r} is not valid base64") from None


@dataclass(frozen=True)
class SnpEvidence:
    """What travels on the wire: the report plus the collateral to verify it offline."""

    report: bytes  # 1184-byte ATTESTATION_REPORT
    vcek: bytes  # VCEK or VLEK certificate, DER
    chain_pem: bytes = b""  # ASK (or ASVK) then ARK, PEM; empty: AMD's, shipped with Veil
    crl: bytes | None = None  # ARK-signed CRL from AMD KDS, DER; None: the verifier's cache

    def to_json(self) -> dict[str, Any]:
        # no platform name here: whether it is sev-snp or sim-snp is decided by the root it chains to
        out: dict[str, Any] = {"report": _b64(self.report), "vcek": _b64(self.vcek)}
        if self.chain_pem:
            out["chain"] = _b64(self.chain_pem)
        if self.crl is not None:
            out["crl"] = _b64(self.crl)
        return out

    @classmethod
    def from_json(cls, obj: object) -> "SnpEvidence":
        """Read ``to_json()`` output (a dict or its JSON text); ParseError when malformed."""
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except (ValueError, UnicodeDecodeError):
                raise ParseError("snp.malformed_evidence", "evidence is not JSON") from None
        if not isinstance(obj, dict):
            raise ParseError("snp.malformed_evidence", "evidence must be a JSON object")
        return cls(
            report=_unb64(obj, "report") or b"",
            vcek=_unb64(obj, "vcek") or b"",
            chain_pem=_unb64(obj, "chain", required=False) or b"",
            crl=_unb64(obj, "crl", required=False),
        )
