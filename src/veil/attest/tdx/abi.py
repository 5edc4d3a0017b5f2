"""Intel TDX DCAP quote layout (v4 and v5): parsing only, no cryptography.

Layout from Intel's "TDX DCAP Quoting Library API" (quote v4, v5) and the TDX module ABI:
header (48 bytes) ‖ body ‖ u32 signature-data length ‖ signature data. Quote v4 always carries a
TD 1.0 report body; v5 prefixes the body with a type and size (2 = TD 1.0, 3 = TD 1.5).
Real quotes are often padded after the signature data, so the quote's size comes from the
signature-data length field, never from the buffer length. All integers are little-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from veil.errors import ParseError

HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
TEE_TYPE_TDX = 0x81
ATTESTATION_KEY_ECDSA_P256 = 2
BODY_TYPE_TD10 = 2
BODY_TYPE_TD15 = 3
CERT_DATA_QE_REPORT = 6  # QE report certification data, wraps the PCK chain (type 5)
CERT_DATA_PCK_CHAIN = 5
QE_REPORT_SIZE = 384
MAX_QUOTE_SIZE = 1 << 20  # a real quote is ~5 KiB; refuse absurd sizes before allocating

TD_ATTR_DEBUG = 1 << 0  # TUD.DEBUG: the host can read and write the TD's memory
TD_ATTR_SEPT_VE_DISABLE = 1 << 28


class _Reader:
    """Bounds-checked cursor: every overrun is a ParseError, never an IndexError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ParseError("tdx.quote_malformed", f"{self.what}: truncated at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdReportBody:
    """TD report body as signed in the quote (TD 1.0; TD 1.5 adds the last two fields)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def td_attributes_int(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def xfam_int(self) -> int:
        return int.from_bytes(self.xfam, "little")

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes_int & TD_ATTR_DEBUG)


@dataclass(frozen=True)
class QeReportCertData:
    """Certification data type 6: the QE's SGX report, its PCK signature, auth data, PCK chain."""

    qe_report: bytes
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_type: int
    pck_chain: bytes


@dataclass(frozen=True)
class TdxQuote:
    header: QuoteHeader
    body_type: int
    body: TdReportBody
    signature: bytes  # ECDSA P-256 r‖s over header ‖ body
    attestation_key: bytes  # raw P-256 point x‖y
    cert_data_type: int
    cert_data: bytes
    qe_cert: QeReportCertData | None
    signed_region: bytes  # the bytes the attestation key signs
    raw: bytes  # header + body + signature data, trailing padding cut off
    padding: int  # bytes after the signature data


def _parse_body(r: _Reader, body_type: int) -> TdReportBody:
    tee_tcb_svn = r.take(16)
    mr_seam = r.take(48)
    mr_signer_seam = r.take(48)
    seam_attributes = r.take(8)
    td_attributes = r.take(8)
    xfam = r.take(8)
    mr_td = r.take(48)
    mr_config_id = r.take(48)
    mr_owner = r.take(48)
    mr_owner_config = r.take(48)
    rtmrs = (r.take(48), r.take(48), r.take(48), r.take(48))
    report_data = r.take(64)
    svn2 = service = None
    if body_type == BODY_TYPE_TD15:
        svn2 = r.take(16)
        service = r.take(48)
    return TdReportBody(
        tee_tcb_svn,
        mr_seam,
        mr_signer_seam,
        seam_attributes,
        td_attributes,
        xfam,
        mr_td,
        mr_config_id,
        mr_owner,
        mr_owner_config,
        rtmrs,
        report_data,
        svn2,
        service,
    )


def parse_td_report_body(data: bytes, body_type: int = BODY_TYPE_TD10) -> TdReportBody:
    """Parse a bare TD 1.0 or 1.5 report body (exact size)."""
    expected = TD15_BODY_SIZE if body_type == BODY_TYPE_TD15 else TD10_BODY_SIZE
    if len(data) != expected:
        raise ParseError("tdx.quote_malformed", f"TD report body is {len(data)} bytes, want {expected}")
    return _parse_body(_Reader(data, "TD report body"), body_type)


def _parse_qe_cert(data: bytes) -> QeReportCertData:
    r = _Reader(data, "QE report certification data")
    qe_report = r.take(QE_REPORT_SIZE)
    qe_sig = r.take(64)
    auth = r.take(r.u16())
    chain_type = r.u16()
    chain = r.take(r.u32())
    return QeReportCertData(qe_report, qe_sig, auth, chain_type, chain)


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a TDX quote v4/v5; trailing bytes after the signature data are counted as padding."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("tdx.quote_malformed", "quote must be bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise ParseError("tdx.quote_malformed", f"quote of {len(data)} bytes is too large")
    r = _Reader(data, "TDX quote")
    version, ak_type, tee_type = struct.unpack("<HHI", r.take(8))
    qe_svn, pce_svn = r.u16(), r.u16()
    header = QuoteHeader(version, ak_type, tee_type, qe_svn, pce_svn, r.take(16), r.take(20))
    if version not in (4, 5):
        raise ParseError("tdx.unsupported_quote", f"quote version {version} (want 4 or 5)")
    if tee_type != TEE_TYPE_TDX:
        raise ParseError("tdx.unsupported_quote", f"TEE type {tee_type:#x} is not TDX")
    if ak_type != ATTESTATION_KEY_ECDSA_P256:
        raise ParseError("tdx.unsupported_quote", f"attestation key type {ak_type} (want ECDSA P-256)")
    if version == 4:
        body_type = BODY_TYPE_TD10
    else:
        body_type, body_size = r.u16(), r.u32()
        expected = {BODY_TYPE_TD10: TD10_BODY_SIZE, BODY_TYPE_TD15: TD15_BODY_SIZE}.get(body_type)
        if expected is None:
            raise ParseError("tdx.unsupported_quote", f"quote v5 body type {body_type}")
        if body_size != expected:
            raise ParseError("tdx.quote_malformed", f"body size {body_size}, want {expected}")
    body = _parse_body(r, body_type)
    signed_end = r.pos
    sig_len = r.u32()
    sig_data = r.take(sig_len)
    s = _Reader(sig_data, "quote signature data")
    signature, ak = s.take(64), s.take(64)
    cert_type = s.u16()
    cert_data = s.take(s.u32())
    qe_cert = _parse_qe_cert(cert_data) if cert_type == CERT_DATA_QE_REPORT else None
    return TdxQuote(
        header,
        body_type,
        body,
        signature,
        ak,
        cert_type,
        cert_data,
        qe_cert,
        data[:signed_end],
        data[: r.pos],
        len(data) - r.pos,
    )


TDREPORT_SIZE = 1024


@dataclass(frozen=True)
class TdReport:
    """The TDREPORT the TDX module writes for TDG.MR.REPORT (MAC'd, not signed: a quote signs it).

    Offsets from the TDX module ABI: REPORTMACSTRUCT (0..256, REPORTDATA at 128), TEE_TCB_INFO
    (256..495), reserved, TDINFO (512..1024). Azure TDX CVMs put one inside the HCL report.
    """

    report_data: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]


def parse_td_report(data: bytes) -> TdReport:
    """Parse a 1024-byte TDREPORT (trailing bytes beyond 1024 are refused by callers' slicing)."""
    if len(data) != TDREPORT_SIZE:
        raise ParseError("tdx.tdreport_malformed", f"TDREPORT is {len(data)} bytes, want 1024")

    def f(off: int, n: int) -> bytes:
        return data[off : off + n]

    return TdReport(
        report_data=f(128, 64),
        tee_tcb_svn=f(264, 16),
        mr_seam=f(280, 48),
        mr_signer_seam=f(328, 48),
        td_attributes=f(512, 8),
        xfam=f(520, 8),
        mr_td=f(528, 48),
        mr_config_id=f(576, 48),
        mr_owner=f(624, 48),
        mr_owner_config=f(672, 48),
        rtmrs=(f(720, 48), f(768, 48), f(816, 48), f(864, 48)),
    )
