"""Azure vTPM evidence JSON (the layout Trustee's az-snp-vtpm / az-tdx-vtpm attesters send): parsing.

    {"version": 1,
     "hcl_report": base64url,                     # HCL envelope, see hcl.py
     "tpm_quote": {"message": hex TPMS_ATTEST, "signature": hex RSASSA-PKCS1-v1_5,
                   "pcrs": [hex, ...]},           # PCR i at index i (SHA-256 bank)
     "vcek": base64url DER or PEM,                # SNP CVMs
     "td_quote": base64url}                       # TDX CVMs: the TD quote of the HCL's TDREPORT
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from veil.attest.azure.hcl import HclReport, parse_hcl_report
from veil.attest.azure.tpm import TpmsAttest, parse_tpms_attest
from veil.errors import ParseError

MAX_PCRS = 24


def _fail(msg: str) -> ParseError:
    return ParseError("azure.evidence_malformed", msg)


def b64url(value: Any, what: str) -> bytes:
    """Decode base64url with or without padding (standard base64 alphabet accepted too)."""
    if not isinstance(value, str):
        raise _fail(f"{what} must be a base64url string")
    text = value.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _fail(f"{what} is not base64url") from exc


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _fail(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise _fail(f"{what} is not hex") from exc


def load_certificate(value: Any, what: str = "vcek") -> bytes:
    """DER bytes of a certificate given as PEM text or base64(url) DER."""
    if isinstance(value, str) and "-----BEGIN" in value:
        try:
            return x509.load_pem_x509_certificate(value.encode()).public_bytes(Encoding.DER)
        except ValueError as exc:
            raise _fail(f"{what} is not a PEM certificate") from exc
    return b64url(value, what)


@dataclass(frozen=True)
class TpmQuote:
    message: bytes
    signature: bytes
    pcrs: tuple[bytes, ...]
    attest: TpmsAttest


@dataclass(frozen=True)
class VtpmEvidence:
    version: int
    hcl_report_bytes: bytes
    hcl: HclReport
    tpm_quote: TpmQuote
    vcek: bytes | None  # DER
    td_quote: bytes | None


def parse_evidence(doc: Any) -> VtpmEvidence:
    """Parse the evidence JSON object (already decoded from text)."""
    if not isinstance(doc, dict):
        raise _fail("evidence must be a JSON object")
    version = doc.get("version", 1)
    if version != 1:
        raise ParseError("azure.evidence_unsupported", f"evidence version {version!r}")
    hcl_bytes = b64url(doc.get("hcl_report"), "hcl_report")
    hcl = parse_hcl_report(hcl_bytes)
    tq = doc.get("tpm_quote")
    if not isinstance(tq, dict):
        raise _fail("tpm_quote must be an object")
    pcrs_raw = tq.get("pcrs")
    if not isinstance(pcrs_raw, list) or len(pcrs_raw) > MAX_PCRS:
        raise _fail("tpm_quote.pcrs must be a list of at most 24 hex values")
    pcrs = tuple(_hex(p, f"pcrs[{i}]") for i, p in enumerate(pcrs_raw))
    message = _hex(tq.get("message"), "tpm_quote.message")
    quote = TpmQuote(message, _hex(tq.get("signature"), "tpm_quote.signature"), pcrs,
                     parse_tpms_attest(message))
    vcek = load_certificate(doc["vcek"]) if doc.get("vcek") is not None else None
    td_quote = b64url(doc["td_quote"], "td_quote") if doc.get("td_quote") is not None else None
    return VtpmEvidence(version, hcl_bytes, hcl, quote, vcek, td_quote)
