"""The SPDM report parser: real H100 layout, and nothing but ParseError on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.attest.nvidia.abi import (
    REQUEST_LEN,
    SIGNATURE_LEN,
    format_vbios_version,
    load_report,
    parse_report,
)
from veil.errors import ParseError

NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
FWID = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"


@pytest.fixture(scope="module")
def h100(vectors: Path) -> bytes:
    return load_report((vectors / "nvidia" / "h100" / "report.hex").read_bytes())


def test_h100_report_fields(h100: bytes) -> None:
    r = parse_report(h100)
    assert r.nonce.hex() == NONCE
    assert r.request.version == 0x11 and r.request.operation == 0xFF
    assert len(r.response.blocks) == 64
    assert [b.index for b in r.response.blocks] == list(range(1, 65))
    assert all(b.value_type == 0x01 and len(b.value) == 48 for b in r.response.blocks)
    assert r.driver_version == "550.90.07"
    assert r.vbios_version == "96.00.9F.00.01"
    assert r.fwid is not None and r.fwid.hex() == FWID
    assert len(r.signature) == SIGNATURE_LEN
    assert r.signed == h100[: len(h100) - SIGNATURE_LEN]
    assert r.trailing == b""
    opaque = r.decoded_opaque()
    assert opaque["driver_version"] == "550.90.07" and opaque["chip_sku"] == "882"


def test_trailing_byte_is_tolerated(h100: bytes) -> None:
    r = parse_report(h100 + b"\x00")
    assert r.trailing == b"\x00"
    assert r.signature == parse_report(h100).signature


def test_binary_and_hex_files_load_the_same(h100: bytes) -> None:
    assert load_report(h100) == h100
    assert load_report(h100.hex().upper().encode() + b"\n") == h100


def test_vbios_format() -> None:
    assert format_vbios_version(bytes.fromhex("009f009601000000")) == "96.00.9F.00.01"


@pytest.mark.parametrize("cut", [0, 1, REQUEST_LEN - 1, REQUEST_LEN, REQUEST_LEN + 7, 100, -1, -96])
def test_truncation_is_malformed(h100: bytes, cut: int) -> None:
    with pytest.raises(ParseError) as exc:
        parse_report(h100[:cut])
    assert exc.value.reason == "nvidia.malformed_report"


@pytest.mark.parametrize(
    "offset,value",
    [(1, 0x60), (0, 0x10), (2, 0x00), (REQUEST_LEN + 1, 0xE0), (REQUEST_LEN + 4, 63)],
)
def test_inconsistent_headers_are_malformed(h100: bytes, offset: int, value: int) -> None:
    bad = bytearray(h100)
    bad[offset] = value
    with pytest.raises(ParseError):
        parse_report(bytes(bad))


def test_record_length_overrun_is_malformed(h100: bytes) -> None:
    bad = bytearray(h100)
    bad[REQUEST_LEN + 5 : REQUEST_LEN + 8] = (len(h100)).to_bytes(3, "little")
    with pytest.raises(ParseError):
        parse_report(bytes(bad))


def _parse_or_parse_error(data: bytes) -> None:
    try:
        parse_report(data)
    except ParseError as exc:
        assert exc.reason == "nvidia.malformed_report"


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_parse_error(data: bytes) -> None:
    _parse_or_parse_error(data)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=4, max_size=300))
def test_random_after_valid_request_only_parse_error(data: bytes) -> None:
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + bytes(32) + b"\x00"
    _parse_or_parse_error(request + bytes([0x11, 0x60]) + data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_truncated_padded_real_report(h100: bytes, data: st.DataObject) -> None:
    buf = bytearray(h100)
    for _ in range(data.draw(st.integers(0, 4))):
        pos = data.draw(st.integers(0, len(buf) - 1))
        buf[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    pad = data.draw(st.binary(max_size=8))
    _parse_or_parse_error(bytes(buf[:cut]) + pad)
