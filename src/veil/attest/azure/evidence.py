"""Azure vTPM evidence JSON, in every layout the open-source attesters emit: parsing.

Trustee's attestation agent (az-snp-vtpm / az-tdx-vtpm, on kinvolk's az-cvm-vtpm) has sent three:

    v2 {"version": 2, "hcl_report": base64url, "tpm_quote": {"message": hex TPMS_ATTEST,
        "signature": hex RSASSA-PKCS1-v1_5, "pcrs": [hex, ...]}, "vcek": base64url DER}
        -- as v1, and the HCL runtime claims' user-data carries the report_data (Veil's layout)
    v1 {"version": 1, ...same fields...}
    v0 {"quote": {"message": [bytes], "signature": [bytes], "pcrs": [[bytes], ...]},
        "report": [bytes] (the HCL report), "vcek": PEM}                        (SNP, no version)
       {"tpm_quote": {... as byte arrays}, "hcl_report": [bytes], "td_quote": [bytes]}  (TDX)

TDX CVMs add ``td_quote`` (base64url in v1/v2). PCR *i* is at index *i* (SHA-256 bank). Byte
fields are accepted in the encoding their layout uses (base64url, hex, or JSON byte arrays); the
layout is reported as ``version`` so policy can refuse legacy ones.
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
from veil.attest.chain import CERT_ERRORS
from veil.errors import ParseError

MAX_PCRS = 24


def _fail(msg: str) -> ParseError:
    return ParseError("azure.evidence_malformed", msg)


MAX_FIELD = 64 * 1024


def _byte_array(value: list[Any], what: str) -> bytes:
    if len(value) > MAX_FIELD or not all(type(b) is int and 0 <= b < 256 for b in value):
        raise _fail(f"{what} must be a list of bytes")
    return bytes(value)


def b64url(value: Any, what: str) -> bytes:
    """Decode base64url with or without padding (standard base64 alphabet accepted too); a JSON
    byte array (v0 layouts) is taken as is."""
    if isinstance(value, list):
        return _byte_array(value, what)
    if not isinstance(value, str):
        raise _fail(f"{what} must be a base64url string")
    text = value.strip().replace("+", "-").replace("/", "_").rstrip("=")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise _fail(f"{what} is not base64url") from exc


def _hex(value: Any, what: str) -> bytes:
    if isinstance(value, list):
        return _byte_array(value, what)
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
        except CERT_ERRORS as exc:
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
    """Parse the evidence JSON object (already decoded from text), in any of the layouts above."""
    if not isinstance(doc, dict):
        raise _fail("evidence must be a JSON object")
    version = doc.get("version", 0)
    if version not in (0, 1, 2) or type(version) is not int:
        raise ParseError("azure.evidence_unsupported", f"evidence version {version!r}")
    legacy_snp = version == 0 and "quote" in doc
    hcl_bytes = b64url(doc.get("report" if legacy_snp else "hcl_report"), "hcl_report")
    hcl = parse_hcl_report(hcl_bytes)
    tq = doc.get("quote" if legacy_snp else "tpm_quote")
    if not isinstance(tq, dict):
        raise _fail("tpm_quote must be an object")
    pcrs_raw = tq.get("pcrs")
    if not isinstance(pcrs_raw, list) or len(pcrs_raw) > MAX_PCRS:
        raise _fail("tpm_quote.pcrs must be a list of at most 24 hex values")
    pcrs = tuple(_hex(p, f"pcrs[{i}]") for i, p in enumerate(pcrs_raw))
    message = _hex(tq.get("message"), "tpm_quote.message")
    quote = TpmQuote(message, _hex(tq.get("signature"), "tpm_quote.signature"), pcrs, parse_tpms_attest(message))
    vcek = load_certificate(doc["vcek"]) if doc.get("vcek") is not None else None
    td_quote = b64url(doc["td_quote"], "td_quote") if doc.get("td_quote") is not None else None
    return VtpmEvidence(version, hcl_bytes, hcl, quote, vcek, td_quote)
