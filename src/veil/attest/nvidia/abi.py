"""The NVIDIA GPU attestation report: an SPDM GET_MEASUREMENTS request followed by its response.

Layout (DMTF DSP0274, SPDM 1.1/1.2), read strictly by its length fields so that a trailing byte
after the signature (seen in real reports) is tolerated and anything short or inconsistent is a
``ParseError`` with reason ``nvidia.malformed_report``. No cryptography here: see ``verify``.

Request (37 bytes): version, 0xE0, attributes (bit 0: signature requested), operation,
nonce (32), slot id.
Response: version, 0x60, param1, param2, number of blocks (1), record length (3, LE), the
measurement record (blocks), responder nonce (32), opaque length (2, LE), opaque data, signature.
Block: index (1), measurement specification (1, bit 0 = DMTF), size (2, LE), then for DMTF
blocks: value type (1), value size (2, LE), value.
NVIDIA's opaque data is a list of (type u16 LE, size u16 LE, value) fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum

from veil.errors import ParseError

MALFORMED = "nvidia.malformed_report"

REQUEST_LEN = 37
NONCE_LEN = 32
SIGNATURE_LEN = 96  # ECDSA P-384, raw r || s
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
SUPPORTED_VERSIONS = frozenset({0x11, 0x12})
DMTF_SPEC = 0x01
MAX_REPORT_LEN = 1 << 20  # far above the ~4 KiB of a real report; refuse absurd input early


class OpaqueField(IntEnum):
    """NVIDIA opaque-data field types (as used by NVIDIA's own verifier)."""

    CERT_ISSUER_NAME = 1
    CERT_AUTHORITY_KEY_IDENTIFIER = 2
    DRIVER_VERSION = 3
    GPU_INFO = 4
    SKU = 5
    VBIOS_VERSION = 6
    MANUFACTURER_ID = 7
    TAMPER_DETECTION = 8
    SMC = 9
    VPR = 10
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    CPRINFO = 13
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    SWITCH_PDI = 22
    FLOORSWEPT_PORTS = 23
    POSITION_ID = 24
    LOCK_SWITCH_STATUS = 25
    GPU_LINK_CONN = 32
    SYS_ENABLE_STATUS = 33
    OPAQUE_DATA_VERSION = 34
    CHIP_INFO = 35


@dataclass(frozen=True)
class MeasurementBlock:
    """One measurement block; ``value`` is the DMTF measurement value (a digest on H100)."""

    index: int
    spec: int
    value_type: int | None  # None when the block is not in DMTF format
    value: bytes
    raw: bytes  # the whole block as it appears in the record

    @property
    def is_raw_bitstream(self) -> bool:
        """DMTF value type bit 7: the value is the raw data rather than its digest."""
        return self.value_type is not None and bool(self.value_type & 0x80)


@dataclass(frozen=True)
class MeasurementRequest:
    version: int
    attributes: int
    operation: int
    nonce: bytes
    slot_id: int


@dataclass(frozen=True)
class MeasurementResponse:
    version: int
    param1: int
    param2: int
    blocks: tuple[MeasurementBlock, ...]
    record: bytes  # the measurement record: the blocks, concatenated as signed
    nonce: bytes  # the responder's nonce
    opaque: bytes
    opaque_fields: dict[int, bytes]
    signature: bytes


@dataclass(frozen=True)
class AttestationReport:
    """A parsed report. ``signed`` is everything the signature covers (request + response)."""

    raw: bytes
    request: MeasurementRequest
    response: MeasurementResponse
    signed: bytes
    trailing: bytes  # unsigned bytes after the signature, tolerated and ignored

    @property
    def nonce(self) -> bytes:
        """The requester's nonce: the freshness value the verifier chose."""
        return self.request.nonce

    @property
    def signature(self) -> bytes:
        return self.response.signature

    def field(self, kind: OpaqueField) -> bytes | None:
        return self.response.opaque_fields.get(int(kind))

    @property
    def fwid(self) -> bytes | None:
        return self.field(OpaqueField.FWID)

    @property
    def driver_version(self) -> str | None:
        return _text(self.field(OpaqueField.DRIVER_VERSION))

    @property
    def vbios_version(self) -> str | None:
        value = self.field(OpaqueField.VBIOS_VERSION)
        return None if value is None else format_vbios_version(value)

    def blocks_by_index(self) -> dict[int, MeasurementBlock]:
        return {b.index: b for b in self.response.blocks}

    def decoded_opaque(self) -> dict[str, str]:
        """Opaque fields with readable names: text where the field is text, hex otherwise."""
        out: dict[str, str] = {}
        for kind, value in self.response.opaque_fields.items():
            try:
                name = OpaqueField(kind).name.lower()
            except ValueError:
                name = f"type_{kind}"
            if kind == OpaqueField.VBIOS_VERSION:
                out[name] = format_vbios_version(value)
            elif kind in _TEXT_FIELDS and _text(value) is not None:
                out[name] = _text(value) or ""
            else:
                out[name] = value.hex()
        return out


_TEXT_FIELDS = frozenset(
    {
        OpaqueField.DRIVER_VERSION,
        OpaqueField.CHIP_SKU,
        OpaqueField.CHIP_SKU_MOD,
        OpaqueField.PROJECT,
        OpaqueField.PROJECT_SKU,
        OpaqueField.PROJECT_SKU_MOD,
    }
)


def _text(value: bytes | None) -> str | None:
    """NUL-padded ASCII as NVIDIA writes it; None when the bytes are not printable text."""
    if value is None:
        return None
    text = value.split(b"\x00", 1)[0]
    if not all(0x20 <= c < 0x7F for c in text):
        return None
    return text.decode("ascii").strip()


def format_vbios_version(value: bytes) -> str:
    """The dotted form NVIDIA prints, e.g. 96.00.9F.00.01.

    The field is little-endian: the low 32-bit word gives the first four groups (most significant
    byte first) and the fifth byte the OEM group.
    """
    if len(value) < 5:
        return value.hex().upper()
    word = int.from_bytes(value[0:4], "little")
    groups = [f"{(word >> shift) & 0xFF:02X}" for shift in (24, 16, 8, 0)]
    return ".".join([*groups, f"{value[4]:02X}"])


class _Reader:
    """Bounds-checked cursor: every short read is a ParseError, never an IndexError."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ParseError(
                MALFORMED,
                f"{self.what}: truncated at {field} (need {n} bytes at offset {self.pos}, have {len(self.data) - self.pos})",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def uint(self, n: int, field: str) -> int:
        return int.from_bytes(self.take(n, field), "little")


def parse_request(data: bytes) -> MeasurementRequest:
    r = _Reader(data, "GET_MEASUREMENTS request")
    version = r.u8("version")
    code = r.u8("request code")
    attributes = r.u8("attributes")
    operation = r.u8("operation")
    nonce = r.take(NONCE_LEN, "nonce")
    slot_id = r.u8("slot id")
    if code != GET_MEASUREMENTS:
        raise ParseError(MALFORMED, f"request code {code:#04x} is not GET_MEASUREMENTS (0xe0)")
    if version not in SUPPORTED_VERSIONS:
        raise ParseError(MALFORMED, f"unsupported SPDM version {version:#04x}")
    if not attributes & 0x01:
        raise ParseError(MALFORMED, "the request did not ask for a signature")
    return MeasurementRequest(version, attributes, operation, nonce, slot_id)


def _parse_blocks(record: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    r = _Reader(record, "measurement record")
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    while r.pos < len(record):
        start = r.pos
        index = r.u8("block index")
        spec = r.u8("measurement specification")
        size = r.uint(2, "measurement size")
        body = r.take(size, f"measurement {index}")
        if index in seen:
            raise ParseError(MALFORMED, f"measurement index {index} appears twice")
        seen.add(index)
        value_type: int | None = None
        value = body
        if spec & DMTF_SPEC:
            b = _Reader(body, f"DMTF measurement {index}")
            value_type = b.u8("value type")
            value_size = b.uint(2, "value size")
            value = b.take(value_size, "value")
            if b.pos != len(body):
                raise ParseError(MALFORMED, f"measurement {index}: size field and value disagree")
        blocks.append(MeasurementBlock(index, spec, value_type, value, record[start : r.pos]))
    if len(blocks) != count:
        raise ParseError(MALFORMED, f"header announces {count} blocks, the record holds {len(blocks)}")
    return tuple(blocks)


def parse_opaque(data: bytes) -> dict[int, bytes]:
    """NVIDIA's (type, size, value) list; a field that overruns or repeats is malformed."""
    r = _Reader(data, "opaque data")
    fields: dict[int, bytes] = {}
    while r.pos < len(data):
        kind = r.uint(2, "opaque field type")
        size = r.uint(2, "opaque field size")
        value = r.take(size, f"opaque field {kind}")
        if kind in fields:
            raise ParseError(MALFORMED, f"opaque field {kind} appears twice")
        fields[kind] = value
    return fields


def parse_report(data: bytes) -> AttestationReport:
    """Parse request + response by their length fields; tolerate bytes after the signature."""
    if not isinstance(data, (bytes, bytearray)):
        raise ParseError(MALFORMED, "report must be bytes")
    data = bytes(data)
    if len(data) > MAX_REPORT_LEN:
        raise ParseError(MALFORMED, f"report of {len(data)} bytes is implausibly large")
    request = parse_request(data[:REQUEST_LEN])
    r = _Reader(data, "GET_MEASUREMENTS response")
    r.pos = REQUEST_LEN
    version = r.u8("version")
    code = r.u8("response code")
    param1 = r.u8("param1")
    param2 = r.u8("param2")
    if code != MEASUREMENTS:
        raise ParseError(MALFORMED, f"response code {code:#04x} is not MEASUREMENTS (0x60)")
    if version != request.version:
        raise ParseError(MALFORMED, "request and response SPDM versions differ")
    count = r.u8("number of blocks")
    record_len = r.uint(3, "measurement record length")
    record = r.take(record_len, "measurement record")
    blocks = _parse_blocks(record, count)
    nonce = r.take(NONCE_LEN, "responder nonce")
    opaque_len = r.uint(2, "opaque data length")
    opaque = r.take(opaque_len, "opaque data")
    opaque_fields = parse_opaque(opaque)
    sig_offset = r.pos
    signature = r.take(SIGNATURE_LEN, "signature")
    response = MeasurementResponse(version, param1, param2, blocks, record, nonce, opaque, opaque_fields, signature)
    return AttestationReport(data, request, response, data[:sig_offset], data[r.pos :])


_HEX = re.compile(rb"[0-9a-fA-F\s]+")


def load_report(data: bytes) -> bytes:
    """A report file's bytes: hex text (as NVIDIA's tools write it) or raw binary.

    A binary report starts with the SPDM version byte (0x11 or 0x12), which is not an ASCII
    hex digit, so the two forms cannot be confused.
    """
    if data and _HEX.fullmatch(data):
        text = b"".join(data.split())
        try:
            return bytes.fromhex(text.decode("ascii"))
        except ValueError as exc:
            raise ParseError(MALFORMED, f"report file is not valid hex: {exc}") from exc
    return bytes(data)
