"""TDX quote parsing: real v4/v5 quotes, padding, and no crash on hostile bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.attest.tdx.abi import BODY_TYPE_TD10, BODY_TYPE_TD15, parse_quote, parse_td_report_body
from veil.errors import ParseError, VeilError


@pytest.fixture(scope="module")
def v4(vectors: Path) -> bytes:
    return (vectors / "tdx/uptodate/quote.dat").read_bytes()


@pytest.fixture(scope="module")
def v5(vectors: Path) -> bytes:
    return (vectors / "tdx/no-tcb-level/quote.dat").read_bytes()


def test_v4_fields(v4: bytes) -> None:
    q = parse_quote(v4)
    assert q.header.version == 4 and q.body_type == BODY_TYPE_TD10
    assert q.body.mr_td.hex().startswith("91eb2b44d141d4ec")
    assert q.body.td_attributes.hex() == "0000001000000000"
    assert not q.body.debug
    assert q.padding == 70  # sized from the signature-data length, not the buffer
    assert len(q.raw) == len(v4) - 70
    assert len(q.signed_region) == 48 + 584
    assert q.qe_cert is not None and b"BEGIN CERTIFICATE" in q.qe_cert.pck_chain
    assert q.body.tee_tcb_svn2 is None


def test_v5_td15_body(v5: bytes) -> None:
    q = parse_quote(v5)
    assert q.header.version == 5 and q.body_type == BODY_TYPE_TD15
    assert q.body.mr_service_td is not None and len(q.body.mr_service_td) == 48
    assert q.body.tee_tcb_svn2 is not None and len(q.body.tee_tcb_svn2) == 16
    assert len(q.signed_region) == 48 + 6 + 648


def test_extra_padding_is_ignored(v4: bytes) -> None:
    assert parse_quote(v4 + b"\0" * 100).raw == parse_quote(v4).raw


def test_truncated_signature_data_refused(v4: bytes) -> None:
    with pytest.raises(ParseError) as e:
        parse_quote(v4[:1000])
    assert e.value.reason == "tdx.quote_malformed"


@pytest.mark.parametrize(
    ("offset", "value", "reason"),
    [
        (0, struct.pack("<H", 3), "tdx.unsupported_quote"),
        (4, struct.pack("<I", 0), "tdx.unsupported_quote"),
        (2, struct.pack("<H", 3), "tdx.unsupported_quote"),
    ],
)
def test_header_refusals(v4: bytes, offset: int, value: bytes, reason: str) -> None:
    bad = v4[:offset] + value + v4[offset + len(value) :]
    with pytest.raises(ParseError) as e:
        parse_quote(bad)
    assert e.value.reason == reason


def test_v5_wrong_body_size(v5: bytes) -> None:
    bad = v5[:50] + struct.pack("<I", 584) + v5[54:]
    with pytest.raises(ParseError):
        parse_quote(bad)


def test_bare_body_size_checked() -> None:
    assert parse_td_report_body(bytes(584)).mr_td == bytes(48)
    assert parse_td_report_body(bytes(648), BODY_TYPE_TD15).mr_service_td == bytes(48)
    with pytest.raises(ParseError):
        parse_td_report_body(bytes(583))


def _only_veil_errors(data: bytes) -> None:
    try:
        parse_quote(data)
    except VeilError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=6000))
def test_random_bytes_never_crash(data: bytes) -> None:
    _only_veil_errors(data)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_truncated_padded_never_crash(vectors: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["uptodate", "no-tcb-level"]))
    base = bytearray((vectors / f"tdx/{name}/quote.dat").read_bytes())
    for _ in range(data.draw(st.integers(0, 8))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    pad = data.draw(st.binary(max_size=64))
    _only_veil_errors(bytes(base[:cut]) + pad)
