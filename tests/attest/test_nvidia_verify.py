"""GPU evidence verification: the real H100 vector, its tampered variants, and a fake GPU."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attest_verdicts import nvidia_verdict
from veil.attest.claims import Verdict
from veil.cli.evidence import EvidenceFiles, verify_files
from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.validate import NvidiaPolicy
from veil.attest.nvidia.abi import REQUEST_LEN, load_report, parse_report
from veil.attest.nvidia.testing import FakeGpu
from veil.attest.nvidia.verify import NVIDIA_DEVICE_IDENTITY_CA_SHA256, fingerprint

NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
# Every certificate of the h100 chain is valid from 2022-03-01 (the latest not-before) to 9999.
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def h100(vectors: Path) -> NvidiaEvidence:
    d = vectors / "nvidia" / "h100"
    return NvidiaEvidence(
        report=load_report((d / "report.hex").read_bytes()),
        cert_chain_pem=(d / "cert_chain.pem").read_bytes(),
    )


# the published sample carries no RIMs and no OCSP statuses: its cryptography is judged here
# (tests/attest/test_nvidia_rim.py and tests/attest/test_nvidia_revocation.py judge those)
CRYPTO_ONLY = NvidiaPolicy(require_rims=False, require_revocation=False)


def _verify(ev: NvidiaEvidence, nonce: bytes = NONCE, as_of: datetime = AS_OF, **kw):  # type: ignore[no-untyped-def]
    return nvidia_verdict(ev, kw.pop("policy", CRYPTO_ONLY), expected_nonce=nonce, as_of=as_of, **kw)


def test_h100_vector_accepted(h100: NvidiaEvidence) -> None:
    v = _verify(h100)
    assert v.accepted, v
    c = v.claims
    assert c is not None
    assert c.platform == "nvidia-h100" and not c.simulated and not c.debug
    assert c.report_data == NONCE
    assert c.details["nonce"] == NONCE.hex()
    assert c.details["measurement_count"] == 64 and len(c.details["measurements"]) == 64
    assert c.details["driver_version"] == "550.90.07"
    assert c.details["vbios_version"] == "96.00.9F.00.01"
    assert c.details["fwid"].startswith("f5c384ae") and c.details["fwid"].endswith("62b1f75d")
    assert len(c.measurement) == 96
    assert v.to_json()["verdict"] == "accept"


def test_pinned_root_is_the_vectors_root(vectors: Path, h100: NvidiaEvidence) -> None:
    root = x509.load_pem_x509_certificate((vectors / "roots" / "canonical_NVIDIA_Device_Identity_CA.pem").read_bytes())
    assert fingerprint(root) == NVIDIA_DEVICE_IDENTITY_CA_SHA256
    chain = x509.load_pem_x509_certificates(h100.cert_chain_pem)
    assert fingerprint(chain[-1]) == NVIDIA_DEVICE_IDENTITY_CA_SHA256


def test_chain_root_only_rejected(vectors: Path) -> None:
    d = vectors / "nvidia" / "chain-root-only"
    ev = NvidiaEvidence(load_report((d / "report.hex").read_bytes()), (d / "cert_chain.pem").read_bytes())
    v = _verify(ev)
    assert not v.accepted and v.reason == "nvidia.chain_too_short"


def test_trailing_byte_accepted(h100: NvidiaEvidence) -> None:
    v = _verify(NvidiaEvidence(h100.report + b"\x00", h100.cert_chain_pem))
    assert v.accepted, v
    assert v.claims is not None and v.claims.details["trailing_bytes"] == 1


@pytest.mark.parametrize("offset", [2, 10, REQUEST_LEN + 20, 2000, -97])
def test_changed_signed_byte_rejected(h100: NvidiaEvidence, offset: int) -> None:
    report = bytearray(h100.report)
    report[offset] ^= 0x01
    v = _verify(NvidiaEvidence(bytes(report), h100.cert_chain_pem))
    assert not v.accepted
    assert v.reason in {"nvidia.signature_invalid", "nvidia.malformed_report"}
    if offset in (10, REQUEST_LEN + 20, 2000):  # bytes whose change keeps the layout valid
        assert v.reason == "nvidia.signature_invalid"


def test_changed_signature_rejected(h100: NvidiaEvidence) -> None:
    report = bytearray(h100.report)
    report[-1] ^= 0x80
    v = _verify(NvidiaEvidence(bytes(report), h100.cert_chain_pem))
    assert v.reason == "nvidia.signature_invalid"


def test_wrong_nonce_rejected(h100: NvidiaEvidence) -> None:
    v = _verify(h100, nonce=bytes(32))
    assert not v.accepted and v.reason == "nvidia.nonce_mismatch"
    assert v.claims is None  # nothing unverified leaks out as claims


def test_before_validity_rejected(h100: NvidiaEvidence) -> None:
    v = _verify(h100, as_of=datetime(2021, 6, 1, tzinfo=UTC))
    assert v.reason == "nvidia.cert_expired"


def _pems(ev: NvidiaEvidence) -> list[bytes]:
    return [c.public_bytes(Encoding.PEM) for c in x509.load_pem_x509_certificates(ev.cert_chain_pem)]


def test_swapped_intermediates_rejected(h100: NvidiaEvidence) -> None:
    pems = _pems(h100)
    pems[1], pems[2] = pems[2], pems[1]
    v = _verify(NvidiaEvidence(h100.report, b"".join(pems)))
    assert v.reason == "nvidia.chain_invalid"


def test_foreign_leaf_rejected(h100: NvidiaEvidence) -> None:
    gpu = FakeGpu()
    pems = _pems(h100)
    pems[0] = gpu.leaf.public_bytes(Encoding.PEM)
    v = _verify(NvidiaEvidence(h100.report, b"".join(pems)))
    assert v.reason == "nvidia.chain_invalid"


def test_missing_intermediate_rejected(h100: NvidiaEvidence) -> None:
    pems = _pems(h100)
    del pems[2]
    assert _verify(NvidiaEvidence(h100.report, b"".join(pems))).reason == "nvidia.chain_invalid"


def test_garbage_chain_rejected(h100: NvidiaEvidence) -> None:
    assert _verify(NvidiaEvidence(h100.report, b"not pem")).reason == "nvidia.malformed_chain"


def test_garbage_report_rejected(h100: NvidiaEvidence) -> None:
    v = _verify(NvidiaEvidence(b"\x11\xe0", h100.cert_chain_pem))
    assert v.reason == "nvidia.malformed_report"


# --- a fake GPU: the same code with a locally made, explicitly trusted root ----------------------

FAKE_NONCE = bytes(range(32))
FAKE_AS_OF = datetime(2025, 1, 1, tzinfo=UTC)


def test_fake_gpu_needs_explicit_trust() -> None:
    gpu = FakeGpu()
    ev = gpu.evidence(FAKE_NONCE, now=FAKE_AS_OF)
    assert _verify(ev, FAKE_NONCE, FAKE_AS_OF).reason == "nvidia.untrusted_root"
    ok = _verify(ev, FAKE_NONCE, FAKE_AS_OF, trusted_roots=gpu.simulation_roots, policy=NvidiaPolicy())
    assert ok.accepted, ok
    assert ok.claims is not None and ok.claims.details["measurement_count"] == 16 and ok.claims.simulated


def test_fwid_mismatch_rejected() -> None:
    gpu = FakeGpu(cert_fwid=bytes.fromhex("cd" * 48))
    v = _verify(gpu.evidence(FAKE_NONCE, now=FAKE_AS_OF), FAKE_NONCE, FAKE_AS_OF, trusted_roots=gpu.simulation_roots)
    assert v.reason == "nvidia.fwid_mismatch"


def test_expired_chain_rejected() -> None:
    gpu = FakeGpu(not_after=FAKE_AS_OF - timedelta(days=1))
    v = _verify(gpu.evidence(FAKE_NONCE, now=FAKE_AS_OF), FAKE_NONCE, FAKE_AS_OF, trusted_roots=gpu.simulation_roots)
    assert v.reason == "nvidia.cert_expired"


def test_report_signed_by_other_gpu_rejected() -> None:
    a, b = FakeGpu(), FakeGpu()
    ev = NvidiaEvidence(b.report(FAKE_NONCE), a.chain_pem())
    v = _verify(ev, FAKE_NONCE, FAKE_AS_OF, trusted_roots=a.simulation_roots)
    assert v.reason == "nvidia.signature_invalid"


def test_spdm_1_2_report_accepted() -> None:
    from veil.attest.nvidia.testing import build_report

    gpu = FakeGpu()
    report = build_report(gpu.keys["leaf"], FAKE_NONCE, blocks={1: bytes(48)}, opaque={20: gpu.fwid}, version=0x12)
    assert parse_report(report).request.version == 0x12
    v = _verify(
        NvidiaEvidence(report, gpu.chain_pem()),
        FAKE_NONCE,
        FAKE_AS_OF,
        trusted_roots=gpu.simulation_roots,
    )
    assert v.accepted, v


def test_evidence_json_round_trip(h100: NvidiaEvidence) -> None:
    assert NvidiaEvidence.from_json(h100.to_json()) == h100
    with pytest.raises(Exception) as exc:
        NvidiaEvidence.from_json({"report": "!!"})
    assert getattr(exc.value, "reason", "") == "nvidia.malformed_evidence"


def test_verify_files(vectors: Path, tmp_path: Path) -> None:
    d = vectors / "nvidia" / "h100"
    files = EvidenceFiles(
        platform="nvidia",
        report=d / "report.hex",
        cert_chain=d / "cert_chain.pem",
        nonce=NONCE,
        as_of=AS_OF,
    )
    refused = verify_files(files)  # production policy: a GPU without RIMs cannot be judged
    assert not refused.accepted and refused.reason == "nvidia.rim_missing"
    relaxed = tmp_path / "policy.json"
    relaxed.write_text(CRYPTO_ONLY.model_dump_json())
    ok = verify_files(
        EvidenceFiles(
            platform="nvidia", report=d / "report.hex", cert_chain=d / "cert_chain.pem", nonce=NONCE, as_of=AS_OF, policy=relaxed
        )
    )
    assert ok.accepted, ok
    assert any(c.result.startswith("NOT CHECKED") for c in ok.checks)  # says what it did not check
    missing = EvidenceFiles(platform="nvidia", report=d / "report.hex")
    assert verify_files(missing).reason == "cli.missing_input"


def test_a_certificate_with_an_invalid_version_is_a_malformed_chain(h100: NvidiaEvidence) -> None:
    """cryptography raises InvalidVersion (not a ValueError) for a version field other than v1-v3:
    hypothesis found the verifier raising it instead of refusing."""
    ders = [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(h100.cert_chain_pem)]
    v3 = b"\xa0\x03\x02\x01\x02"  # TBSCertificate's [0] EXPLICIT Version v3
    assert v3 in ders[0]
    ders[0] = ders[0].replace(v3, v3[:-1] + b"\x05", 1)
    v = _verify(NvidiaEvidence(h100.report, b"".join(_der_to_pem(d) for d in ders)))
    assert v.reason == "nvidia.malformed_chain", v


# --- verify_evidence never raises for bad evidence ----------------------------------------------


def _der_to_pem(der: bytes) -> bytes:
    b64 = base64.encodebytes(der).replace(b"\n", b"")
    lines = b"\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_chain_or_report_never_raises(h100: NvidiaEvidence, data: st.DataObject) -> None:
    ders = [c.public_bytes(Encoding.DER) for c in x509.load_pem_x509_certificates(h100.cert_chain_pem)]
    which = data.draw(st.integers(0, len(ders) - 1))
    der = bytearray(ders[which])
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    ders[which] = bytes(der)
    report = bytearray(h100.report)
    if data.draw(st.booleans()):
        report[data.draw(st.integers(0, len(report) - 1))] ^= data.draw(st.integers(1, 255))
    ev = NvidiaEvidence(bytes(report), b"".join(_der_to_pem(d) for d in ders))
    v = _verify(ev)
    assert isinstance(v, Verdict)
