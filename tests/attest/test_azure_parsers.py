"""TPMS_ATTEST, HCL report and evidence JSON parsing: the real sample, edge cases, fuzzing."""

from __future__ import annotations

import base64
import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.attest.azure.evidence import TpmQuote, parse_evidence
from veil.attest.azure.hcl import parse_hcl_report
from veil.attest.azure.tpm import TPM_ALG_SHA1, parse_tpms_attest
from veil.attest.azure.verify import check_pcr_digest
from veil.errors import ParseError, VeilError, VerificationError


@pytest.fixture(scope="module")
def sample(vectors: Path) -> dict[str, Any]:
    return json.loads((vectors / "azure/snp-vtpm-milan/evidence.json").read_text())


def unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def attest(select: bytes = b"\xff\xff\xff", alg: int = 0x000B, digest: bytes = bytes(32), tail: bytes = b"") -> bytes:
    return (
        struct.pack(">IHH", 0xFF544347, 0x8018, 0)
        + struct.pack(">H", 3)
        + b"abc"
        + struct.pack(">QIIBQ", 1, 2, 3, 0, 4)
        + struct.pack(">IHB", 1, alg, len(select))
        + select
        + struct.pack(">H", len(digest))
        + digest
        + tail
    )


def test_sample_tpms_attest(sample: dict[str, Any]) -> None:
    a = parse_tpms_attest(bytes.fromhex(sample["tpm_quote"]["message"]))
    assert a.extra_data == b"challenge"
    assert a.pcr_selections[0].pcrs == tuple(range(24)) and len(a.pcr_digest) == 32


def test_sample_hcl(sample: dict[str, Any]) -> None:
    h = parse_hcl_report(unb64u(sample["hcl_report"]))
    assert h.platform == "snp" and len(h.hw_report) == 1184
    assert h.ak_jwk()["kty"] == "RSA" and h.user_data == bytes(64)


def test_attest_selection_bits() -> None:
    a = parse_tpms_attest(attest(select=b"\x81\x00\x01"))
    assert a.pcr_selections[0].pcrs == (0, 7, 16)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (attest(tail=b"x"), "azure.tpm_quote_malformed"),
        (attest()[:-1], "azure.tpm_quote_malformed"),
        (b"\0" + attest()[1:], "azure.tpm_quote_malformed"),
        (attest()[:4] + b"\x80\x17" + attest()[6:], "azure.tpm_quote_unsupported"),
    ],
)
def test_attest_refusals(data: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as e:
        parse_tpms_attest(data)
    assert e.value.reason == reason


def test_pcr_checks() -> None:
    pcrs = tuple(bytes([i]) * 32 for i in range(24))
    with pytest.raises(VerificationError) as e:
        check_pcr_digest(TpmQuote(b"", b"", pcrs, parse_tpms_attest(attest(alg=TPM_ALG_SHA1))))
    assert e.value.reason == "azure.pcr_bank_unsupported"
    with pytest.raises(VerificationError) as e:
        check_pcr_digest(TpmQuote(b"", b"", pcrs[:3], parse_tpms_attest(attest())))
    assert e.value.reason == "azure.pcr_values_missing"
    with pytest.raises(VerificationError) as e:
        check_pcr_digest(TpmQuote(b"", b"", pcrs, parse_tpms_attest(attest(select=b"\0\0\0"))))
    assert e.value.reason == "azure.pcr_selection_empty"


def test_hcl_refusals(sample: dict[str, Any]) -> None:
    raw = unb64u(sample["hcl_report"])
    for bad, reason in [
        (b"XCLA" + raw[4:], "azure.hcl_malformed"),
        (raw[:1000], "azure.hcl_malformed"),
        (raw[:1224] + b"\x03" + raw[1225:], "azure.hcl_unsupported"),
        (raw[:1232] + b"\xff\xff" + raw[1234:], "azure.hcl_malformed"),
    ]:
        with pytest.raises(ParseError) as e:
            parse_hcl_report(bad)
        assert e.value.reason == reason


def test_evidence_refusals(sample: dict[str, Any]) -> None:
    for mutate in [
        lambda d: d.pop("hcl_report"),
        lambda d: d.update(version=3),
        lambda d: d["tpm_quote"].update(pcrs="x"),
        lambda d: d.update(tpm_quote=[]),
        lambda d: d["tpm_quote"].update(message="zz"),
        lambda d: d.update(hcl_report="!"),
    ]:
        doc = copy.deepcopy(sample)
        mutate(doc)
        with pytest.raises(ParseError):
            parse_evidence(doc)
    with pytest.raises(ParseError):
        parse_evidence([])


def test_vcek_pem_or_der(sample: dict[str, Any]) -> None:
    der = parse_evidence(sample).vcek
    assert der is not None
    pem = x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()
    assert parse_evidence({**sample, "vcek": pem}).vcek == der


def _quiet(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except VeilError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_tpms_attest_fuzz(data: bytes) -> None:
    _quiet(parse_tpms_attest, data)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_tpms_attest_mutations(sample: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(bytes.fromhex(sample["tpm_quote"]["message"]))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _quiet(parse_tpms_attest, bytes(raw[:cut]) + data.draw(st.binary(max_size=8)))


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_hcl_mutations(sample: dict[str, Any], data: st.DataObject) -> None:
    raw = bytearray(unb64u(sample["hcl_report"]))
    region = data.draw(st.sampled_from([(0, 32), (1216, 1236), (1236, len(raw))]))
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(region[0], region[1] - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    _quiet(parse_hcl_report, bytes(raw[:cut]) + data.draw(st.binary(max_size=64)))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000))
def test_hcl_random(data: bytes) -> None:
    _quiet(parse_hcl_report, b"HCLA" + data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=20).map(bytes.hex),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=10,
)


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_evidence_json_fuzz(sample: dict[str, Any], data: st.DataObject) -> None:
    doc = copy.deepcopy(sample)
    key = data.draw(st.sampled_from(["version", "hcl_report", "tpm_quote", "vcek", "td_quote"]))
    doc[key] = data.draw(json_values)
    if data.draw(st.booleans()):
        doc["tpm_quote"] = {k: data.draw(json_values) for k in ("message", "signature", "pcrs")}
    _quiet(parse_evidence, doc)


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_full_verifier_only_returns_verdicts(sample: dict[str, Any], vectors: Path, data: st.DataObject) -> None:
    """Mutated evidence through the whole SNP vTPM path: a Verdict always, never an exception."""
    from attest_verdicts import azure_verdict
    from veil.attest.azure import AzureVtpmPolicy

    raw = bytearray(unb64u(sample["hcl_report"]))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    doc = {**sample, "hcl_report": base64.urlsafe_b64encode(bytes(raw)).decode()}
    roots = vectors / "roots"
    chain = (roots / "canonical_SEV-Milan.pem").read_bytes() + (roots / "canonical_ARK-Milan.pem").read_bytes()
    v = azure_verdict("azure-snp-vtpm", doc, b"challenge", AzureVtpmPolicy(require_user_data_binding=False), chain=chain)
    orig = unb64u(sample["hcl_report"])
    covered = [(32, 1216), (1236, 1236 + 1110)]  # hardware report, runtime claims
    if any(bytes(raw[a:b]) != orig[a:b] for a, b in covered):
        assert not v.accepted
