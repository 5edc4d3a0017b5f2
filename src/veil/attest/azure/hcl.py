"""Azure CVM HCL report layout (the paravisor's attestation envelope): parsing only.

Layout, from Microsoft's "guest attestation for confidential VMs" design and its az-cvm-vtpm
library (all integers little-endian):

    0      32 bytes   attestation header: "HCLA", version, report size, request type, status
    32     1184 bytes hardware report: an SEV-SNP report, or a 1024-byte TDX TDREPORT + zeros
    1216   20 bytes   IGVM request data header: data size, version, report type, hash type,
                      variable-data size
    1236   variable data: the runtime claims JSON (HCLAkPub, HCLEkPub, vm-configuration, user-data)

The hardware report's report_data[0:32] is the hash (SHA-256 in practice) of the variable data,
which ties the vTPM attestation key (HCLAkPub) to the hardware-signed report.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

from veil.errors import ParseError

HCL_HEADER_SIZE = 32
HW_REPORT_SIZE = 1184
TD_REPORT_SIZE = 1024
IGVM_HEADER_SIZE = 20
VAR_DATA_OFFSET = HCL_HEADER_SIZE + HW_REPORT_SIZE + IGVM_HEADER_SIZE
MAGIC = b"HCLA"
MAX_HCL_SIZE = 64 * 1024

REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
REPORT_TYPES = {REPORT_TYPE_SNP: "snp", REPORT_TYPE_TDX: "tdx"}
HASH_TYPES = {1: "sha256", 2: "sha384", 3: "sha512"}
AK_KID = "HCLAkPub"


def _fail(msg: str) -> ParseError:
    return ParseError("azure.hcl_malformed", msg)


@dataclass(frozen=True)
class HclReport:
    version: int
    request_type: int
    report_type: int  # 2 = SEV-SNP, 4 = TDX
    hash_type: int
    hw_report: bytes  # 1184 bytes; for TDX the first 1024 are the TDREPORT
    var_data: bytes  # exactly what the hardware report_data hashes
    runtime: dict[str, Any]

    @property
    def platform(self) -> str:
        return REPORT_TYPES[self.report_type]

    @property
    def td_report(self) -> bytes:
        return self.hw_report[:TD_REPORT_SIZE]

    def var_data_digest(self) -> bytes:
        return hashlib.new(HASH_TYPES[self.hash_type], self.var_data).digest()

    def ak_jwk(self) -> dict[str, Any]:
        """The vTPM attestation key (JWK) that signs TPM quotes."""
        for key in self.runtime.get("keys", []):
            if isinstance(key, dict) and key.get("kid") == AK_KID:
                return key
        raise ParseError("azure.ak_missing", "runtime claims carry no HCLAkPub key")

    @property
    def user_data(self) -> bytes:
        """The 64 bytes the guest put in runtime claims (Veil's report_data on Azure vTPM)."""
        raw = self.runtime.get("user-data", "")
        try:
            return bytes.fromhex(raw) if isinstance(raw, str) else b""
        except ValueError as exc:
            raise _fail("user-data is not hex") from exc


def parse_hcl_report(data: bytes) -> HclReport:
    """Parse an HCL report; bytes after the variable data (zero padding) are ignored."""
    if not isinstance(data, (bytes, bytearray)):
        raise _fail("HCL report must be bytes")
    data = bytes(data)
    if len(data) > MAX_HCL_SIZE:
        raise _fail(f"HCL report of {len(data)} bytes is too large")
    if len(data) < VAR_DATA_OFFSET:
        raise _fail(f"HCL report of {len(data)} bytes is truncated")
    magic, version, _size, request_type, _status = struct.unpack_from("<4s4I", data, 0)
    if magic != MAGIC:
        raise _fail("missing HCLA signature")
    hw = data[HCL_HEADER_SIZE : HCL_HEADER_SIZE + HW_REPORT_SIZE]
    data_size, _ver, report_type, hash_type, var_size = struct.unpack_from("<5I", data, HCL_HEADER_SIZE + HW_REPORT_SIZE)
    if report_type not in REPORT_TYPES:
        raise ParseError("azure.hcl_unsupported", f"hardware report type {report_type}")
    if hash_type not in HASH_TYPES:
        raise ParseError("azure.hcl_unsupported", f"report data hash type {hash_type}")
    if var_size > len(data) - VAR_DATA_OFFSET or data_size != IGVM_HEADER_SIZE + var_size:
        raise _fail("variable data size disagrees with the report")
    var_data = data[VAR_DATA_OFFSET : VAR_DATA_OFFSET + var_size]
    try:
        runtime = json.loads(var_data.rstrip(b"\0").decode())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _fail(f"runtime claims are not JSON: {exc}") from exc
    if not isinstance(runtime, dict):
        raise _fail("runtime claims are not a JSON object")
    return HclReport(version, request_type, report_type, hash_type, hw, var_data, runtime)
