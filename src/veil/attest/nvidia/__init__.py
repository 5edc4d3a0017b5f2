"""NVIDIA H100/H200 confidential-computing GPU attestation.

``abi`` parses the SPDM report, ``verify`` checks its chain, signature, nonce and FWID, ``rim``
verifies NVIDIA's signed reference values, ``revocation`` the OCSP statuses that travel with the
evidence, ``validate`` applies the manifest's GPU reference values, ``collect`` reads evidence
through NVML and ``platform`` ties them into the one attestation API (``platform.NVIDIA``).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from veil.attest.nvidia.abi import AttestationReport, parse_report
from veil.attest.trust import NVIDIA_DEVICE_IDENTITY_CA_SHA256, NVIDIA_RIM_ROOT_SHA256
from veil.errors import ParseError

__all__ = ["NVIDIA_DEVICE_IDENTITY_CA_SHA256", "NVIDIA_RIM_ROOT_SHA256", "NvidiaEvidence"]

MAX_COLLATERAL_ITEMS = 32


def _b64_list(obj: dict[str, Any], key: str) -> tuple[bytes, ...]:
    raw = obj.get(key) or []
    if not isinstance(raw, list) or len(raw) > MAX_COLLATERAL_ITEMS or not all(isinstance(r, str) for r in raw):
        raise ParseError("nvidia.malformed_evidence", f"{key} must be a list of base64 strings")
    return tuple(base64.b64decode(r, validate=True) for r in raw)


@dataclass(frozen=True)
class NvidiaEvidence:
    """One GPU's evidence: the raw report (request + response) and its PEM chain, leaf first, with
    the collateral that lets a verifier judge it offline: the driver and VBIOS RIMs (signed XML),
    DER OCSP responses for the NVIDIA-issued certificates of both chains, and the CC state NVML
    reported (the host's word, shown and refused when it says dev-tools; never proof)."""

    report: bytes
    cert_chain_pem: bytes
    rims: tuple[bytes, ...] = ()
    ocsp: tuple[bytes, ...] = ()
    host_cc: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "report": base64.b64encode(self.report).decode("ascii"),
            "cert_chain_pem": base64.b64encode(self.cert_chain_pem).decode("ascii"),
        }
        if self.rims:
            out["rims"] = [base64.b64encode(r).decode("ascii") for r in self.rims]
        if self.ocsp:
            out["ocsp"] = [base64.b64encode(r).decode("ascii") for r in self.ocsp]
        if self.host_cc is not None:
            out["host_reported_cc"] = dict(self.host_cc)
        return out

    @classmethod
    def from_json(cls, obj: Any) -> NvidiaEvidence:
        if not isinstance(obj, dict):
            raise ParseError("nvidia.malformed_evidence", "NVIDIA evidence must be a JSON object")
        try:
            cc = obj.get("host_reported_cc")
            if cc is not None and not (
                isinstance(cc, dict) and all(isinstance(k, str) and type(v) is int for k, v in cc.items())
            ):
                raise ValueError("host_reported_cc must map names to integers")
            return cls(
                report=base64.b64decode(obj["report"], validate=True),
                cert_chain_pem=base64.b64decode(obj["cert_chain_pem"], validate=True),
                rims=_b64_list(obj, "rims"),
                ocsp=_b64_list(obj, "ocsp"),
                host_cc=cc,
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ParseError("nvidia.malformed_evidence", f"bad NVIDIA evidence: {exc}") from exc

    def parse(self) -> AttestationReport:
        return parse_report(self.report)
