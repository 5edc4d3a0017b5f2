"""Collect an SEV-SNP report inside a live guest: configfs-tsm first, /dev/sev-guest as fallback.

NOT YET RUN ON REAL HARDWARE. The protocol follows the kernel's ABI documents
(Documentation/ABI/testing/configfs-tsm-report, include/uapi/linux/sev-guest.h) and is tested
only against fake trees and a fake ioctl (tests/attest/test_snp_collect.py). Both roots are injectable.

configfs-tsm (:mod:`veil.attest.tsm`): provider ``sev_guest``, ``privlevel`` the VMPL, ``auxblob``
the host's certificate table (may be empty).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from veil.attest import tsm
from veil.attest.tsm import TSM_REPORT_ROOT
from veil.errors import ParseError, ProtocolError, VerificationError

if TYPE_CHECKING:
    from veil.attest.snp import SnpEvidence

SEV_GUEST_DEVICE = Path("/dev/sev-guest")
SNP_PROVIDER = "sev_guest"

# GHCB spec: GUIDs of the extended-report certificate table (RFC 4122 byte order on the wire).
CERT_TABLE_GUIDS: dict[uuid.UUID, str] = {
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd"): "vcek",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1"): "vlek",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782"): "ask",
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae"): "ark",
    uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea"): "crl",
}
_ENTRY = struct.Struct("<16sII")

# include/uapi/linux/sev-guest.h
_IOC_WRITE, _IOC_READ = 1, 2
_GUEST_REQ_SIZE = 32  # struct snp_guest_request_ioctl: u8 msg_version; u64 req; u64 resp; u64 exitinfo2
SNP_GET_REPORT = ((_IOC_READ | _IOC_WRITE) << 30) | (_GUEST_REQ_SIZE << 16) | (ord("S") << 8) | 0x0
_REPORT_REQ_SIZE = 96  # u8 user_data[64]; u32 vmpl; u8 rsvd[28]
_REPORT_RESP_SIZE = 4000
_MSG_REPORT_RSP_HDR = 32  # u32 status; u32 report_size; u8 rsvd[24]


@dataclass(frozen=True)
class CollectedReport:
    """A raw report as the guest got it, plus whatever certificates the host attached."""

    report: bytes
    source: str  # "configfs-tsm" | "sev-guest"
    provider: str = SNP_PROVIDER
    auxblob: bytes = b""
    certificates: dict[str, bytes] = field(default_factory=dict)  # from the auxblob table, DER


def parse_cert_table(blob: bytes) -> dict[str, bytes]:
    """Split the GHCB certificate table (guid, offset, length ... zero entry) into DER blobs."""
    out: dict[str, bytes] = {}
    pos = 0
    while True:
        if pos + _ENTRY.size > len(blob):
            raise ParseError("snp.malformed_cert_table", "certificate table has no terminating entry")
        guid, offset, length = _ENTRY.unpack_from(blob, pos)
        pos += _ENTRY.size
        if guid == bytes(16):
            return out
        if offset + length > len(blob) or offset < pos:
            raise ParseError("snp.malformed_cert_table", "certificate table entry points outside the blob")
        name = CERT_TABLE_GUIDS.get(uuid.UUID(bytes=guid), str(uuid.UUID(bytes=guid)))
        out[name] = blob[offset : offset + length]


def build_cert_table(certs: dict[str, bytes]) -> bytes:
    """Inverse of ``parse_cert_table`` (used by tests and the simulator's fake host)."""
    names = {v: k for k, v in CERT_TABLE_GUIDS.items()}
    header = _ENTRY.size * (len(certs) + 1)
    table, body = b"", b""
    for name, der in certs.items():
        table += _ENTRY.pack(names[name].bytes, header + len(body), len(der))
        body += der
    return table + bytes(_ENTRY.size) + body


def _report_data(report_data: bytes) -> bytes:
    if len(report_data) > 64:
        raise ParseError("snp.bad_report_data", "report_data is at most 64 bytes")
    return report_data.ljust(64, b"\0")


class ConfigfsTsm(tsm.ConfigfsTsm):
    """configfs-tsm for SEV-SNP: the report, and the host's certificate table from ``auxblob``."""

    def get_report(self, report_data: bytes, *, vmpl: int | None = None) -> CollectedReport:
        got = self.report(_report_data(report_data), provider=SNP_PROVIDER, prefix="snp", privlevel=vmpl)
        certs = parse_cert_table(got.auxblob) if got.auxblob else {}
        return CollectedReport(got.outblob, "configfs-tsm", got.provider, got.auxblob, certs)


IoctlFn = Callable[[int, int, Any], Any]


def get_report_sev_guest(
    report_data: bytes,
    *,
    vmpl: int = 0,
    device: str | os.PathLike[str] = SEV_GUEST_DEVICE,
    ioctl: IoctlFn | None = None,
) -> CollectedReport:
    """SNP_GET_REPORT through /dev/sev-guest (no certificates: use KDS or the cache for those)."""
    req = ctypes.create_string_buffer(_REPORT_REQ_SIZE)
    struct.pack_into("<64sI", req, 0, _report_data(report_data), vmpl)
    resp = ctypes.create_string_buffer(_REPORT_RESP_SIZE)
    arg = bytearray(_GUEST_REQ_SIZE)
    struct.pack_into("<B7xQQQ", arg, 0, 1, ctypes.addressof(req), ctypes.addressof(resp), 0)
    ioctl = ioctl or fcntl.ioctl
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise ProtocolError("snp.collect_unavailable", f"cannot open {device}: {exc.strerror}") from None
    try:
        ioctl(fd, SNP_GET_REPORT, arg)
    except OSError as exc:
        exitinfo = struct.unpack_from("<Q", arg, 24)[0]
        raise ProtocolError("snp.collect_failed", f"SNP_GET_REPORT failed: {exc.strerror} (exitinfo2 0x{exitinfo:x})") from None
    finally:
        os.close(fd)
    raw = resp.raw
    status, size = struct.unpack_from("<II", raw, 0)
    if status != 0:
        raise VerificationError("snp.collect_failed", f"firmware refused the report request (status {status})")
    if size > _REPORT_RESP_SIZE - _MSG_REPORT_RSP_HDR:
        raise ParseError("snp.collect_failed", f"firmware says the report is {size} bytes")
    return CollectedReport(raw[_MSG_REPORT_RSP_HDR : _MSG_REPORT_RSP_HDR + size], "sev-guest")


def get_report(
    report_data: bytes,
    *,
    vmpl: int | None = None,
    tsm_root: str | os.PathLike[str] = TSM_REPORT_ROOT,
    device: str | os.PathLike[str] = SEV_GUEST_DEVICE,
    ioctl: IoctlFn | None = None,
    tsm: ConfigfsTsm | None = None,
) -> CollectedReport:
    """configfs-tsm when the kernel has it, else /dev/sev-guest; ProtocolError when neither works."""
    tsm = tsm or ConfigfsTsm(tsm_root)
    if tsm.available():
        return tsm.get_report(report_data, vmpl=vmpl)
    if Path(device).exists():
        return get_report_sev_guest(report_data, vmpl=vmpl or 0, device=device, ioctl=ioctl)
    raise ProtocolError("snp.collect_unavailable", f"neither {tsm_root} nor {device} exists: not an SEV-SNP guest")


def to_evidence(collected: CollectedReport, *, cache: Any = None, product: str | None = None) -> "SnpEvidence":
    """Pair a collected report with its collateral: the host's certificate table first, then the
    collateral cache (``veil.attest.collateral.CollateralCache``). The ASK/ARK may be left out (the
    verifier has AMD's); the VCEK (or VLEK) and the ARK-signed CRL may not, since clients verify
    offline and require revocation data. ``product`` is needed for v2 reports (no CPUID fields).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from veil.attest.collateral import CollateralCache
    from veil.attest.snp import SnpEvidence
    from veil.attest.snp.abi import TcbVersion, parse_report
    from veil.attest.snp.verify import product_of_certificate

    report = parse_report(collected.report)
    certs = collected.certificates
    leaf = certs.get("vcek") or certs.get("vlek")
    kind = "vlek" if "vlek" in certs and "vcek" not in certs else "vcek"
    chain = b""
    if "ask" in certs and "ark" in certs:
        chain = b"".join(x509.load_der_x509_certificate(certs[n]).public_bytes(Encoding.PEM) for n in ("ask", "ark"))
    crl = certs.get("crl")
    cache = cache or CollateralCache()
    product = product or report.product or (product_of_certificate(leaf) if leaf else None)
    if product is not None:
        if leaf is None:
            leaf = cache.read_vcek(product, report.chip_id, TcbVersion.decode(report.reported_tcb, product))
        crl = crl or cache.read_crl(product, kind)
    if leaf is None or crl is None:
        raise ProtocolError(
            "snp.collateral_missing",
            f"the host attached no {'VCEK' if leaf is None else 'CRL'} and the collateral cache has none "
            "(run `veil collateral fetch --report ...` online first)",
        )
    return SnpEvidence(report=collected.report, vcek=leaf, chain_pem=chain, crl=crl)


def collect_evidence(
    report_data: bytes,
    *,
    vmpl: int | None = None,
    cache: Any = None,
    tsm_root: str | os.PathLike[str] = TSM_REPORT_ROOT,
    device: str | os.PathLike[str] = SEV_GUEST_DEVICE,
    ioctl: IoctlFn | None = None,
    tsm: ConfigfsTsm | None = None,
) -> "SnpEvidence":
    """Report + collateral in one call (what a worker or coordinator serves). Not run on hardware yet."""
    collected = get_report(report_data, vmpl=vmpl, tsm_root=tsm_root, device=device, ioctl=ioctl, tsm=tsm)
    return to_evidence(collected, cache=cache)
