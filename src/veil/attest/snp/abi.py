"""The SEV-SNP ATTESTATION_REPORT binary format (AMD SEV-SNP ABI spec, "ATTESTATION_REPORT Structure").

No cryptography here: this module only reads and writes the 1184-byte report, strictly. Every
reserved must-be-zero field is checked, so a report that parses also serialises back byte for
byte (the simulator relies on that) and nothing can hide in bytes that no verifier looks at.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

from veil.errors import ParseError

REPORT_SIZE = 0x4A0  # 1184
SIGNED_SIZE = 0x2A0  # bytes covered by the signature: 0x000-0x29F
SIGNATURE_OFFSET = 0x2A0
SIG_COMPONENT_SIZE = 72  # r and s, little-endian, zero-extended
MIN_VERSION = 2
MAX_VERSION = 5  # v3: CPUID family/model/stepping; v5: mitigation vectors
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

MALFORMED = "snp.malformed_report"

# Guest policy bits (ABI spec, "GUEST_POLICY Structure").
POLICY_SMT = 1 << 16
POLICY_RESERVED_ONE = 1 << 17
POLICY_MIGRATE_MA = 1 << 18
POLICY_DEBUG = 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20
POLICY_CXL_ALLOW = 1 << 21
POLICY_MEM_AES_256_XTS = 1 << 22
POLICY_RAPL_DIS = 1 << 23
POLICY_CIPHERTEXT_HIDING = 1 << 24
POLICY_PAGE_SWAP_DISABLE = 1 << 25
POLICY_KNOWN_MASK = (1 << 26) - 1


class SigningKey(IntEnum):
    """Which key signed the report (bits 4:2 of the key-info word)."""

    VCEK = 0
    VLEK = 1
    NONE = 7


# Product names as AMD's KDS spells them.
MILAN = "Milan"
GENOA = "Genoa"
TURIN = "Turin"
PRODUCTS = (MILAN, GENOA, TURIN)


def product_from_cpuid(family: int, model: int) -> str | None:
    """Map report v3 CPUID fields to a product (None when the CPU is not one we know)."""
    if family == 0x19:
        if model <= 0x0F:
            return MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:  # Genoa; Bergamo/Siena use Genoa's ARK
            return GENOA
    if family == 0x1A and model <= 0x1F:  # Turin and Turin dense
        return TURIN
    return None


@dataclass(frozen=True)
class TcbVersion:
    """A decoded TCB_VERSION. ``fmc`` exists only on Turin and later (None before)."""

    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, product: str | None) -> "TcbVersion":
        """Decode the 64-bit TCB_VERSION; the product decides the layout (Turin moved the fields)."""
        b = raw.to_bytes(8, "little")
        if product == TURIN:
            return cls(bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    def encode(self) -> int:
        """The 64-bit TCB_VERSION in the layout its ``fmc`` field implies (Turin when set)."""
        b = bytearray(8)
        if self.fmc is not None:
            b[0], b[1], b[2], b[3], b[7] = self.fmc, self.bootloader, self.tee, self.snp, self.microcode
        else:
            b[0], b[1], b[6], b[7] = self.bootloader, self.tee, self.snp, self.microcode
        return int.from_bytes(b, "little")

    def to_json(self) -> dict[str, int]:
        out = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            out["fmc"] = self.fmc
        return out

    def at_least(self, other: "TcbVersion") -> bool:
        """True when every component is >= the other's (SVNs are compared component-wise)."""
        return (
            self.bootloader >= other.bootloader
            and self.tee >= other.tee
            and self.snp >= other.snp
            and self.microcode >= other.microcode
            and (self.fmc or 0) >= (other.fmc or 0)
        )


def tcb_reserved_ok(raw: int, product: str | None) -> bool:
    """Reserved TCB bytes must be zero (only checkable once the product is known)."""
    b = raw.to_bytes(8, "little")
    if product == TURIN:
        return b[4:7] == b"\0\0\0"
    return b[2:6] == b"\0\0\0\0"


@dataclass(frozen=True)
class GuestPolicy:
    """The decoded guest POLICY word."""

    abi_minor: int
    abi_major: int
    smt: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allow: bool
    mem_aes_256_xts: bool
    rapl_dis: bool
    ciphertext_hiding: bool
    page_swap_disable: bool

    @classmethod
    def decode(cls, raw: int) -> "GuestPolicy":
        return cls(
            abi_minor=raw & 0xFF,
            abi_major=(raw >> 8) & 0xFF,
            smt=bool(raw & POLICY_SMT),
            migrate_ma=bool(raw & POLICY_MIGRATE_MA),
            debug=bool(raw & POLICY_DEBUG),
            single_socket=bool(raw & POLICY_SINGLE_SOCKET),
            cxl_allow=bool(raw & POLICY_CXL_ALLOW),
            mem_aes_256_xts=bool(raw & POLICY_MEM_AES_256_XTS),
            rapl_dis=bool(raw & POLICY_RAPL_DIS),
            ciphertext_hiding=bool(raw & POLICY_CIPHERTEXT_HIDING),
            page_swap_disable=bool(raw & POLICY_PAGE_SWAP_DISABLE),
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PlatformInfo:
    """The decoded PLATFORM_INFO word: how the host was configured when the report was made."""

    smt_enabled: bool
    tsme_enabled: bool
    ecc_enabled: bool
    rapl_disabled: bool
    ciphertext_hiding_enabled: bool
    alias_check_complete: bool
    tio_enabled: bool

    @classmethod
    def decode(cls, raw: int) -> "PlatformInfo":
        return cls(*(bool(raw >> bit & 1) for bit in (0, 1, 2, 3, 4, 5, 7)))

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Report:
    """One ATTESTATION_REPORT, field by field (integers as the spec's widths, byte strings raw)."""

    version: int
    guest_svn: int
    policy: int
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: int
    platform_info: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: int
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: int
    chip_id: bytes
    committed_tcb: int
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: int
    signature_r: bytes  # 72 bytes little-endian
    signature_s: bytes  # 72 bytes little-endian
    cpuid_fam_id: int = 0  # v3+
    cpuid_mod_id: int = 0
    cpuid_step: int = 0
    launch_mit_vector: int = 0  # v5+
    current_mit_vector: int = 0

    # ---- derived views -------------------------------------------------------------------
    @property
    def guest_policy(self) -> GuestPolicy:
        return GuestPolicy.decode(self.policy)

    @property
    def debug(self) -> bool:
        return bool(self.policy & POLICY_DEBUG)

    @property
    def platform(self) -> PlatformInfo:
        return PlatformInfo.decode(self.platform_info)

    @property
    def product(self) -> str | None:
        """The product from the CPUID fields (v3+); None for v2 reports (use the VCEK instead)."""
        if self.version < 3:
            return None
        return product_from_cpuid(self.cpuid_fam_id, self.cpuid_mod_id)

    @property
    def firmware(self) -> str:
        """Current SEV firmware version as major.minor.build."""
        return f"{self.current_major}.{self.current_minor}.{self.current_build}"

    def signature_ints(self) -> tuple[int, int]:
        """(r, s) as integers, for the ECDSA check."""
        return int.from_bytes(self.signature_r, "little"), int.from_bytes(self.signature_s, "little")

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers (0x000-0x29F)."""
        return self.to_bytes()[:SIGNED_SIZE]

    def with_signature(self, r: int, s: int) -> "Report":
        """A copy carrying (r, s); used by the simulator after signing ``signed_bytes()``."""
        return replace(
            self,
            signature_r=r.to_bytes(SIG_COMPONENT_SIZE, "little"),
            signature_s=s.to_bytes(SIG_COMPONENT_SIZE, "little"),
        )

    # ---- binary -----------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes) -> "Report":
        """Parse strictly; anything off (size, version, reserved bits) is ``snp.malformed_report``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ParseError(MALFORMED, "report must be bytes")
        data = bytes(data)
        if len(data) != REPORT_SIZE:
            raise ParseError(MALFORMED, f"report is {len(data)} bytes, expected {REPORT_SIZE}")

        def u32(off: int) -> int:
            return int(_U32.unpack_from(data, off)[0])

        def u64(off: int) -> int:
            return int(_U64.unpack_from(data, off)[0])

        def zero(start: int, end: int, what: str) -> None:
            if any(data[start:end]):
                raise ParseError(MALFORMED, f"reserved bytes 0x{start:X}-0x{end - 1:X} ({what}) are not zero")

        version = u32(0x00)
        if not MIN_VERSION <= version <= MAX_VERSION:
            raise ParseError(MALFORMED, f"unsupported report version {version}")
        policy = u64(0x08)
        if policy & ~POLICY_KNOWN_MASK:
            raise ParseError(MALFORMED, f"policy 0x{policy:X} sets reserved bits")
        if not policy & POLICY_RESERVED_ONE:
            raise ParseError(MALFORMED, "policy bit 17 (reserved, must be one) is clear")
        keyinfo = u32(0x48)
        if keyinfo >> 5:
            raise ParseError(MALFORMED, f"key info 0x{keyinfo:X} sets reserved bits")
        signing_key = (keyinfo >> 2) & 0x7
        if signing_key not in (SigningKey.VCEK, SigningKey.VLEK, SigningKey.NONE):
            raise ParseError(MALFORMED, f"unknown signing key {signing_key}")
        zero(0x4C, 0x50, "after key info")
        if version >= 3:
            zero(0x18B, 0x1A0, "after CPUID")
        else:
            zero(0x188, 0x1A0, "after reported TCB")
        zero(0x1EB, 0x1EC, "after current version")
        zero(0x1EF, 0x1F0, "after committed version")
        if version >= 5:
            zero(0x208, SIGNED_SIZE, "end of body")
        else:
            zero(0x1F8, SIGNED_SIZE, "end of body")
        zero(SIGNATURE_OFFSET + 2 * SIG_COMPONENT_SIZE, REPORT_SIZE, "end of signature")
        return cls(
            version=version,
            guest_svn=u32(0x04),
            policy=policy,
            family_id=data[0x10:0x20],
            image_id=data[0x20:0x30],
            vmpl=u32(0x30),
            signature_algo=u32(0x34),
            current_tcb=u64(0x38),
            platform_info=u64(0x40),
            author_key_en=bool(keyinfo & 1),
            mask_chip_key=bool(keyinfo & 2),
            signing_key=signing_key,
            report_data=data[0x50:0x90],
            measurement=data[0x90:0xC0],
            host_data=data[0xC0:0xE0],
            id_key_digest=data[0xE0:0x110],
            author_key_digest=data[0x110:0x140],
            report_id=data[0x140:0x160],
            report_id_ma=data[0x160:0x180],
            reported_tcb=u64(0x180),
            chip_id=data[0x1A0:0x1E0],
            committed_tcb=u64(0x1E0),
            current_build=data[0x1E8],
            current_minor=data[0x1E9],
            current_major=data[0x1EA],
            committed_build=data[0x1EC],
            committed_minor=data[0x1ED],
            committed_major=data[0x1EE],
            launch_tcb=u64(0x1F0),
            signature_r=data[0x2A0:0x2E8],
            signature_s=data[0x2E8:0x330],
            cpuid_fam_id=data[0x188] if version >= 3 else 0,
            cpuid_mod_id=data[0x189] if version >= 3 else 0,
            cpuid_step=data[0x18A] if version >= 3 else 0,
            launch_mit_vector=u64(0x1F8) if version >= 5 else 0,
            current_mit_vector=u64(0x200) if version >= 5 else 0,
        )

    def to_bytes(self) -> bytes:
        """Serialise to the exact 1184-byte layout (inverse of ``from_bytes``)."""
        out = bytearray(REPORT_SIZE)

        def put(off: int, value: bytes, size: int, name: str) -> None:
            if len(value) != size:
                raise ParseError(MALFORMED, f"{name} must be {size} bytes, got {len(value)}")
            out[off : off + size] = value

        _U32.pack_into(out, 0x00, self.version)
        _U32.pack_into(out, 0x04, self.guest_svn)
        _U64.pack_into(out, 0x08, self.policy)
        put(0x10, self.family_id, 16, "family_id")
        put(0x20, self.image_id, 16, "image_id")
        _U32.pack_into(out, 0x30, self.vmpl)
        _U32.pack_into(out, 0x34, self.signature_algo)
        _U64.pack_into(out, 0x38, self.current_tcb)
        _U64.pack_into(out, 0x40, self.platform_info)
        keyinfo = int(self.author_key_en) | int(self.mask_chip_key) << 1 | (self.signing_key & 0x7) << 2
        _U32.pack_into(out, 0x48, keyinfo)
        put(0x50, self.report_data, 64, "report_data")
        put(0x90, self.measurement, 48, "measurement")
        put(0xC0, self.host_data, 32, "host_data")
        put(0xE0, self.id_key_digest, 48, "id_key_digest")
        put(0x110, self.author_key_digest, 48, "author_key_digest")
        put(0x140, self.report_id, 32, "report_id")
        put(0x160, self.report_id_ma, 32, "report_id_ma")
        _U64.pack_into(out, 0x180, self.reported_tcb)
        if self.version >= 3:
            out[0x188], out[0x189], out[0x18A] = self.cpuid_fam_id, self.cpuid_mod_id, self.cpuid_step
        put(0x1A0, self.chip_id, 64, "chip_id")
        _U64.pack_into(out, 0x1E0, self.committed_tcb)
        out[0x1E8], out[0x1E9], out[0x1EA] = self.current_build, self.current_minor, self.current_major
        out[0x1EC], out[0x1ED], out[0x1EE] = self.committed_build, self.committed_minor, self.committed_major
        _U64.pack_into(out, 0x1F0, self.launch_tcb)
        if self.version >= 5:
            _U64.pack_into(out, 0x1F8, self.launch_mit_vector)
            _U64.pack_into(out, 0x200, self.current_mit_vector)
        put(0x2A0, self.signature_r, SIG_COMPONENT_SIZE, "signature_r")
        put(0x2E8, self.signature_s, SIG_COMPONENT_SIZE, "signature_s")
        return bytes(out)

    def to_json(self, product: str | None = None) -> dict[str, Any]:
        """A readable dump (hex for byte fields, decoded TCBs in the product's layout)."""
        product = product or self.product
        return {
            "version": self.version,
            "guest_svn": self.guest_svn,
            "policy": f"0x{self.policy:x}",
            "guest_policy": self.guest_policy.to_json(),
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "current_tcb": TcbVersion.decode(self.current_tcb, product).to_json(),
            "reported_tcb": TcbVersion.decode(self.reported_tcb, product).to_json(),
            "committed_tcb": TcbVersion.decode(self.committed_tcb, product).to_json(),
            "launch_tcb": TcbVersion.decode(self.launch_tcb, product).to_json(),
            "platform_info": self.platform.to_json(),
            "author_key_en": self.author_key_en,
            "mask_chip_key": self.mask_chip_key,
            "signing_key": SigningKey(self.signing_key).name.lower(),
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "chip_id": self.chip_id.hex(),
            "cpuid": [self.cpuid_fam_id, self.cpuid_mod_id, self.cpuid_step] if self.version >= 3 else None,
            "firmware": self.firmware,
            "committed_firmware": f"{self.committed_major}.{self.committed_minor}.{self.committed_build}",
        }


def parse_report(data: bytes) -> Report:
    """Parse a 1184-byte SNP report (``ParseError`` ``snp.malformed_report`` otherwise)."""
    return Report.from_bytes(data)
