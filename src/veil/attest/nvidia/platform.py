"""NVIDIA GPU evidence (SPDM report + chain) behind the one attestation API.

The binding is the SPDM nonce the GPU signed. RIMs travel as collateral (``rims``: base64 RIM
XML, see :mod:`veil.attest.nvidia.rim` for what is and is not verified about them); the policy's
allowlists and reference measurements are applied by ``validate``.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from veil.attest.api import Check, VerifiedEvidence, VerifyOptions
from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.rim import compare, merge, parse_rim
from veil.attest.nvidia.validate import NvidiaPolicy, claims_from, validate
from veil.attest.nvidia.verify import CERT_ERRORS, VerifiedReport, verify_report
from veil.errors import ParseError, VerificationError

if TYPE_CHECKING:
    from veil.manifest import ReferenceValues


def _rims(raw: Any) -> list[bytes]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(r, str) for r in raw):
        raise ParseError("nvidia.malformed_evidence", "rims must be a list of base64 RIM documents")
    try:
        return [base64.b64decode(r, validate=True) for r in raw]
    except (binascii.Error, ValueError):
        raise ParseError("nvidia.malformed_evidence", "a RIM is not valid base64") from None


def verify_evidence(evidence: NvidiaEvidence, options: VerifyOptions, rims: list[bytes] = ()) -> VerifiedEvidence:  # type: ignore[assignment]
    """Chain to the NVIDIA root (or a trusted simulation root), signature, nonce, FWID, RIMs."""
    if options.binding.expected is None:
        raise ParseError("cli.missing_input", "NVIDIA evidence is checked against a nonce: give one")
    try:
        verified = verify_report(
            evidence.parse(), evidence.cert_chain_pem, expected_nonce=options.binding.expected,
            as_of=options.now, trusted_roots=options.trust.nvidia | options.trust.simulation,
        )
        claims = claims_from(verified)
    except CERT_ERRORS as exc:  # a certificate `cryptography` could not use, found late
        raise VerificationError("nvidia.chain_invalid", f"unusable certificate: {exc}") from None
    checks = [
        Check("report signature", "ECDSA P-384/SHA-384 by the GPU's attestation key: valid"),
        Check("certificate chain", f"{len(verified.chain)} certificates to a trusted NVIDIA root"),
        Check("binding", "the GPU signed the expected SPDM nonce"),
        Check("firmware id", "the FWID certified in the leaf equals the report's"),
    ]
    if rims:
        references = merge(*(parse_rim(r, source=f"rim{i}").measurements.values() for i, r in enumerate(rims)))
        compare(verified.report.blocks_by_index(), references)
        checks.append(Check("RIM measurements", f"{len(references)} indices match the RIMs (RIM signatures NOT checked)"))
    return VerifiedEvidence(claims, tuple(checks), native=verified)


class NvidiaVerifier:
    policy_model = NvidiaPolicy

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
        return verify_evidence(NvidiaEvidence.from_json(evidence.get("nvidia")), options, _rims(evidence.get("rims")))

    def policy(self, reference: ReferenceValues) -> NvidiaPolicy:
        raise ParseError("nvidia.no_reference_values", "GPU reference values are not in the manifest yet")

    def validate(self, verified: VerifiedEvidence, policy: NvidiaPolicy) -> list[Check]:
        native: VerifiedReport = verified.native
        validate(native, verified.claims, policy)
        return [Check("GPU policy", "driver, VBIOS and platform allowlists and reference measurements hold")]


NVIDIA = NvidiaVerifier()
