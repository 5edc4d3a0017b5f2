"""TPM 2.0 quote structures (TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE): parsing only.

Parsed here by hand from TPM 2.0 Library Part 2 ("Structures"), sections 10.12 (TPMS_ATTEST,
TPMS_CLOCK_INFO, TPMS_QUOTE_INFO) and 10.9 (TPML_PCR_SELECTION): no maintained Python library
parses TPMS_ATTEST without binding to a TPM software stack. All integers are big-endian; TPM2B
values are a u16 size followed by that many bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from veil.errors import ParseError

TPM_GENERATED_VALUE = 0xFF544347  # "\xffTCG": the TPM itself produced this structure
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
MAX_SELECTIONS = 16  # real quotes select one or two banks
MAX_ATTEST_SIZE = 4096


def _fail(msg: str) -> ParseError:
    return ParseError("azure.tpm_quote_malformed", msg)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _fail(f"TPMS_ATTEST truncated at offset {self.pos}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, fmt: str) -> int:
        return int(struct.unpack(">" + fmt, self.take(struct.calcsize(fmt)))[0])

    def tpm2b(self) -> bytes:
        return self.take(self.uint("H"))


@dataclass(frozen=True)
class PcrSelection:
    hash_alg: int
    pcrs: tuple[int, ...]  # selected PCR indices, ascending


@dataclass(frozen=True)
class TpmsAttest:
    qualified_signer: bytes
    extra_data: bytes  # the verifier's nonce
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_tpms_attest(data: bytes) -> TpmsAttest:
    """Parse a quote's TPMS_ATTEST; anything but a complete TPM-generated quote is refused."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_ATTEST_SIZE:
        raise _fail("TPMS_ATTEST must be bytes of a sane size")
    r = _Reader(bytes(data))
    if r.uint("I") != TPM_GENERATED_VALUE:
        raise _fail("magic is not TPM_GENERATED_VALUE")
    if (kind := r.uint("H")) != TPM_ST_ATTEST_QUOTE:
        raise ParseError("azure.tpm_quote_unsupported", f"attestation type {kind:#06x} is not a quote")
    signer = r.tpm2b()
    extra = r.tpm2b()
    clock, resets, restarts, safe = r.uint("Q"), r.uint("I"), r.uint("I"), r.uint("B")
    firmware = r.uint("Q")
    count = r.uint("I")
    if count > MAX_SELECTIONS:
        raise _fail(f"{count} PCR selections")
    selections = []
    for _ in range(count):
        alg = r.uint("H")
        bitmap = r.take(r.uint("B"))
        pcrs = tuple(8 * i + b for i, byte in enumerate(bitmap) for b in range(8) if byte >> b & 1)
        selections.append(PcrSelection(alg, pcrs))
    digest = r.tpm2b()
    if r.pos != len(r.data):
        raise _fail(f"{len(r.data) - r.pos} trailing bytes after TPMS_QUOTE_INFO")
    return TpmsAttest(signer, extra, clock, resets, restarts, bool(safe), firmware, tuple(selections), digest)
