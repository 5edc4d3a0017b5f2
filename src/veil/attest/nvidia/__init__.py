"""NVIDIA H100/H200 confidential-computing GPU attestation.

``abi`` parses the SPDM report, ``verify`` checks chain/signature/nonce/FWID, ``validate`` applies
``NvidiaPolicy`` (and RIMs from ``rim``), ``collect`` reads evidence through NVML. This module ties
them into ``verify_evidence``, which returns a ``Verdict`` and never raises for bad evidence.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from veil.attest.claims import Verdict
from veil.attest.nvidia.abi import AttestationReport, parse_report
from veil.attest.nvidia.rim import ReferenceMeasurement
from veil.attest.nvidia.validate import (
    DEFAULT_POLICY,
    NvidiaPolicy,
    claims_from,
    validate,
)
from veil.attest.nvidia.verify import (
    CERT_ERRORS,
    NVIDIA_DEVICE_IDENTITY_CA_SHA256,
    TRUSTED_ROOTS,
    verify_report,
)
from veil.errors import ParseError, VeilError, VerificationError

__all__ = [
    "NVIDIA_DEVICE_IDENTITY_CA_SHA256",
    "NvidiaEvidence",
    "NvidiaPolicy",
    "verify_evidence",
]


@dataclass(frozen=True)
class NvidiaEvidence:
    """One GPU's evidence: the raw report (request + response) and its PEM chain, leaf first."""

    report: bytes
    cert_chain_pem: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "report": base64.b64encode(self.report).decode("ascii"),
            "cert_chain_pem": base64.b64encode(self.cert_chain_pem).decode("ascii"),
        }

    @classmethod
    def from_json(cls, obj: Any) -> NvidiaEvidence:
        if not isinstance(obj, dict):
            raise ParseError("nvidia.malformed_evidence", "NVIDIA evidence must be a JSON object")
        try:
            return cls(
                report=base64.b64decode(obj["report"], validate=True),
                cert_chain_pem=base64.b64decode(obj["cert_chain_pem"], validate=True),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ParseError("nvidia.malformed_evidence", f"bad NVIDIA evidence: {exc}") from exc

    def parse(self) -> AttestationReport:
        return parse_report(self.report)


def verify_evidence(
    evidence: NvidiaEvidence,
    policy: NvidiaPolicy = DEFAULT_POLICY,
    *,
    expected_nonce: bytes,
    as_of: datetime | None = None,
    rim_references: dict[int, ReferenceMeasurement] | None = None,
    trusted_roots: Collection[str] = TRUSTED_ROOTS,
) -> Verdict:
    """Parse, verify and validate; a refusal is a rejecting ``Verdict`` with a reason code.

    ``trusted_roots`` (SHA-256 DER fingerprints) defaults to the pinned NVIDIA Device Identity
    CA; tests pass the fingerprint of a locally made root.
    """
    claims = None
    try:
        report = parse_report(evidence.report)
        verified = verify_report(
            report,
            evidence.cert_chain_pem,
            expected_nonce=expected_nonce,
            as_of=as_of,
            trusted_roots=trusted_roots,
        )
        claims = claims_from(verified)
        validate(verified, claims, policy, rim_references)
        return Verdict.accept(claims, "NVIDIA GPU evidence verified")
    except VeilError as err:
        return Verdict.reject(err, claims)
    except CERT_ERRORS as exc:  # a certificate `cryptography` could not use, found late
        return Verdict.reject(
            VerificationError("nvidia.chain_invalid", f"unusable certificate: {exc}")
        )
