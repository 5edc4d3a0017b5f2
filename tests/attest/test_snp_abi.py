"""SEV-SNP report ABI: real reports parse to the values their publishers state, strictly."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.attest.snp.abi import (
    GENOA,
    MILAN,
    REPORT_SIZE,
    TURIN,
    Report,
    SigningKey,
    TcbVersion,
    parse_report,
    product_from_cpuid,
)
from veil.errors import ParseError


@pytest.fixture(scope="module")
def milan(vectors: Path) -> bytes:
    return (vectors / "sev-snp" / "milan-vcek" / "report.bin").read_bytes()


@pytest.fixture(scope="module")
def debug(vectors: Path) -> bytes:
    return (vectors / "sev-snp" / "milan-debug" / "report.bin").read_bytes()


def test_milan_report_fields(milan: bytes) -> None:
    r = parse_report(milan)
    assert r.version == 2
    assert r.policy == 0x30000
    assert not r.debug and not r.guest_policy.debug and r.guest_policy.smt
    assert r.vmpl == 0
    assert r.signature_algo == 1
    assert r.signing_key == SigningKey.VCEK
    assert r.measurement.hex() == (
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    )
    assert TcbVersion.decode(r.reported_tcb, MILAN) == TcbVersion(3, 0, 8, 115)
    assert r.firmware == "1.52.4"
    assert r.product is None  # v2 has no CPUID fields: the chain decides


def test_debug_report_fields(debug: bytes) -> None:
    r = parse_report(debug)
    assert r.policy == 0xB0000 and r.debug and r.guest_policy.debug
    assert r.measurement.hex().startswith("b07af962") and r.measurement.hex().endswith("e4872b01")
    assert TcbVersion.decode(r.reported_tcb, MILAN) == TcbVersion(2, 0, 5, 68)
    assert r.report_data == bytes.fromhex("0102030405") + bytes(59)


@pytest.mark.parametrize("name", ["milan", "debug"])
def test_round_trip_is_byte_exact(name: str, request: pytest.FixtureRequest) -> None:
    raw = request.getfixturevalue(name)
    assert parse_report(raw).to_bytes() == raw
    assert parse_report(raw).signed_bytes() == raw[:0x2A0]


def test_to_json_is_readable(milan: bytes) -> None:
    j = parse_report(milan).to_json(MILAN)
    assert j["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert j["signing_key"] == "vcek" and j["firmware"] == "1.52.4"


def test_tcb_layouts() -> None:
    raw = bytes([1, 2, 3, 4, 0, 0, 0, 9])
    value = int.from_bytes(raw, "little")
    turin = TcbVersion.decode(value, TURIN)
    assert turin == TcbVersion(bootloader=2, tee=3, snp=4, microcode=9, fmc=1)
    assert turin.encode() == value
    milan = TcbVersion(bootloader=3, tee=0, snp=8, microcode=115)
    assert TcbVersion.decode(milan.encode(), GENOA) == milan
    assert milan.encode().to_bytes(8, "little") == bytes([3, 0, 0, 0, 0, 0, 8, 115])


def test_product_from_cpuid() -> None:
    assert product_from_cpuid(0x19, 0x01) == MILAN
    assert product_from_cpuid(0x19, 0x11) == GENOA
    assert product_from_cpuid(0x1A, 0x02) == TURIN
    assert product_from_cpuid(0x17, 0x31) is None


def _patch(raw: bytes, offset: int, data: bytes) -> bytes:
    return raw[:offset] + data + raw[offset + len(data) :]


@pytest.mark.parametrize(
    "offset,data",
    [
        (0x4C, b"\x01"),  # reserved after key info
        (0x48, struct.pack("<I", 1 << 5)),  # reserved key-info bits
        (0x48, struct.pack("<I", 3 << 2)),  # unknown signing key 3
        (0x190, b"\x01"),  # reserved after reported TCB (v2: CPUID bytes too)
        (0x188, b"\x19"),  # v2 report with a CPUID byte
        (0x1EB, b"\x01"),
        (0x1EF, b"\x01"),
        (0x250, b"\x01"),  # reserved end of body
        (0x400, b"\x01"),  # reserved end of signature
        (0x00, struct.pack("<I", 1)),  # version 1
        (0x00, struct.pack("<I", 99)),  # unknown version
        (0x08, struct.pack("<Q", 0x10000)),  # policy bit 17 (must be one) clear
        (0x08, struct.pack("<Q", 0x30000 | 1 << 40)),  # reserved policy bits
    ],
)
def test_reserved_and_version_violations(milan: bytes, offset: int, data: bytes) -> None:
    with pytest.raises(ParseError) as err:
        parse_report(_patch(milan, offset, data))
    assert err.value.reason == "snp.malformed_report"


@pytest.mark.parametrize("size", [0, 1, REPORT_SIZE - 1, REPORT_SIZE + 1, 4000])
def test_wrong_size(milan: bytes, size: int) -> None:
    data = (milan * 4)[:size]
    with pytest.raises(ParseError) as err:
        parse_report(data)
    assert err.value.reason == "snp.malformed_report"


def test_v3_cpuid_fields(milan: bytes) -> None:
    raw = _patch(_patch(milan, 0, struct.pack("<I", 3)), 0x188, bytes([0x1A, 0x02, 0x01]))
    r = parse_report(raw)
    assert (r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step) == (0x1A, 0x02, 0x01)
    assert r.product == TURIN
    assert r.to_bytes() == raw


def test_v5_mitigation_vectors(milan: bytes) -> None:
    raw = _patch(_patch(milan, 0, struct.pack("<I", 5)), 0x1F8, struct.pack("<QQ", 7, 9))
    r = parse_report(raw)
    assert (r.launch_mit_vector, r.current_mit_vector) == (7, 9)
    assert r.to_bytes() == raw
    with pytest.raises(ParseError):
        parse_report(_patch(raw, 0x208, b"\x01"))


def test_not_bytes() -> None:
    with pytest.raises(ParseError):
        Report.from_bytes("x" * REPORT_SIZE)  # type: ignore[arg-type]


# ---- the parser never crashes: only ParseError ------------------------------------------


def _only_parse_errors(data: bytes) -> None:
    try:
        r = parse_report(data)
    except ParseError as err:
        assert err.reason == "snp.malformed_report"
    else:
        assert r.to_bytes() == data  # whatever parses round-trips


_settings = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(st.binary(max_size=2 * REPORT_SIZE))
def test_fuzz_random(data: bytes) -> None:
    _only_parse_errors(data)


@_settings
@given(st.binary(min_size=REPORT_SIZE, max_size=REPORT_SIZE))
def test_fuzz_random_right_size(data: bytes) -> None:
    _only_parse_errors(data)


@_settings
@given(st.lists(st.tuples(st.integers(0, REPORT_SIZE - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_fuzz_mutated(milan: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(milan)
    for pos, val in edits:
        data[pos] = val
    _only_parse_errors(bytes(data))


@_settings
@given(st.integers(0, REPORT_SIZE), st.binary(max_size=64))
def test_fuzz_truncated_or_padded(milan: bytes, cut: int, pad: bytes) -> None:
    _only_parse_errors(milan[:cut])
    _only_parse_errors(milan + pad if pad else milan)
