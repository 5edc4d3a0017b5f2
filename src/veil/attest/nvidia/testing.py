"""A fake GPU for tests: a locally made root -> CA -> leaf chain and SPDM reports it signs.

Same layout as a real H100 report, so the real parser and verifier run unchanged; it is trusted
only when a test passes ``trusted_roots={gpu.root_fingerprint}`` explicitly.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.abi import OpaqueField
from veil.attest.nvidia.verify import TCG_DICE_TCB_INFO, fingerprint

SHA384_OID = bytes.fromhex("608648016503040202")


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def nvidia_tcb_info(public_key: ec.EllipticCurvePublicKey, fwid: bytes) -> bytes:
    """The GH100 leaf's TcbInfo value: SEQUENCE { 1, SubjectPublicKeyInfo, FWID(sha384) }."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    fwid_seq = _der(0x30, _der(0x06, SHA384_OID) + _der(0x04, fwid))
    return _der(0x30, _der(0x02, b"\x01") + spki + fwid_seq)


def build_report(
    key: ec.EllipticCurvePrivateKey,
    nonce: bytes,
    *,
    blocks: dict[int, bytes],
    opaque: dict[int, bytes],
    trailing: bytes = b"",
    version: int = 0x11,
    operation: int = 0xFF,
) -> bytes:
    """An SPDM GET_MEASUREMENTS request + signed response, DMTF digest blocks of type 1."""
    request = bytes([version, 0xE0, 0x01, operation]) + nonce + b"\x00"
    record = b""
    for index, value in sorted(blocks.items()):
        dmtf = bytes([0x01]) + len(value).to_bytes(2, "little") + value
        record += bytes([index, 0x01]) + len(dmtf).to_bytes(2, "little") + dmtf
    opaque_bytes = b"".join(
        k.to_bytes(2, "little") + len(v).to_bytes(2, "little") + v for k, v in opaque.items()
    )
    response = (
        bytes([version, 0x60, 0x00, 0x00, len(blocks)])
        + len(record).to_bytes(3, "little")
        + record
        + bytes(range(32))  # responder nonce
        + len(opaque_bytes).to_bytes(2, "little")
        + opaque_bytes
    )
    signed = request + response
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
    return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big") + trailing


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Veil test"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_before: datetime,
    not_after: datetime,
    tcb_info: bytes | None = None,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    usage = dict.fromkeys(
        [
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    b = b.add_extension(
        x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, **usage), critical=True
    )
    if tcb_info is not None:
        b = b.add_extension(x509.UnrecognizedExtension(TCG_DICE_TCB_INFO, tcb_info), critical=False)
    return b.sign(issuer_key, hashes.SHA384())


DEFAULT_FWID = bytes.fromhex("ab" * 48)
NOT_BEFORE = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class FakeGpu:
    """A GH100-named fake GPU whose root only tests trust."""

    fwid: bytes = DEFAULT_FWID
    cert_fwid: bytes | None = None  # what the leaf certifies; defaults to ``fwid``
    driver: str = "550.90.07"
    vbios: bytes = bytes.fromhex("009f009601000000")
    blocks: dict[int, bytes] = field(
        default_factory=lambda: {i: bytes([i]) * 48 for i in range(1, 5)}
    )
    not_after: datetime = NOT_BEFORE + timedelta(days=3650)

    def __post_init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.ca_key = ec.generate_private_key(ec.SECP384R1())
        self.leaf_key = ec.generate_private_key(ec.SECP384R1())
        start, end = NOT_BEFORE, self.not_after
        self.root = _cert(
            "Fake Device Identity CA",
            self.root_key,
            "Fake Device Identity CA",
            self.root_key,
            ca=True,
            not_before=start,
            not_after=end,
        )
        self.ca = _cert(
            "Fake GH100 Provisioner",
            self.ca_key,
            "Fake Device Identity CA",
            self.root_key,
            ca=True,
            not_before=start,
            not_after=end,
        )
        tcb = nvidia_tcb_info(self.leaf_key.public_key(), self.cert_fwid or self.fwid)
        self.leaf = _cert(
            "GH100 A01 GSP FMC LF",
            self.leaf_key,
            "Fake GH100 Provisioner",
            self.ca_key,
            ca=False,
            tcb_info=tcb,
            not_before=start,
            not_after=end,
        )

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.root)

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in (self.leaf, self.ca, self.root))

    def report(self, nonce: bytes, trailing: bytes = b"") -> bytes:
        opaque = {
            int(OpaqueField.VBIOS_VERSION): self.vbios,
            int(OpaqueField.DRIVER_VERSION): self.driver.encode() + b"\x00",
            int(OpaqueField.FWID): self.fwid,
        }
        return build_report(
            self.leaf_key, nonce, blocks=self.blocks, opaque=opaque, trailing=trailing
        )

    def evidence(self, nonce: bytes) -> NvidiaEvidence:
        return NvidiaEvidence(report=self.report(nonce), cert_chain_pem=self.chain_pem())


class FakeNvml:
    """The subset of pynvml that ``collect`` uses, returning ctypes arrays like the real one."""

    class NVMLError(Exception):
        pass

    def __init__(
        self, gpus: list[FakeGpu], cc: int = 1, init_error: bool = False, report_error: bool = False
    ) -> None:
        self.gpus, self.cc = gpus, cc
        self.init_error, self.report_error = init_error, report_error
        self.shut_down = False

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlSystemGetConfComputeState(self) -> Any:
        return SimpleNamespace(ccFeature=self.cc, devToolsMode=0, environment=1)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        if self.report_error:
            raise self.NVMLError("Timeout")
        data = self.gpus[handle].report(bytes(nonce))
        buf = (ctypes.c_uint8 * 8192)(*data)
        return SimpleNamespace(attestationReport=buf, attestationReportSize=len(data))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        chain = self.gpus[handle].chain_pem()
        buf = (ctypes.c_uint8 * 0x5000)(*chain)
        return SimpleNamespace(attestationCertChain=buf, attestationCertChainSize=len(chain))
