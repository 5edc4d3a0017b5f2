"""OCSP statuses travelling with GPU evidence: verified offline, revoked/unknown/stale/forged refused."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from attest_verdicts import nvidia_verdict
from veil.attest.nvidia.testing import FakeGpu
from veil.attest.nvidia.validate import NvidiaPolicy

NONCE = bytes(range(32))
NOW = dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def gpu() -> FakeGpu:
    return FakeGpu()


def _verdict(gpu: FakeGpu, ev, as_of=NOW):  # type: ignore[no-untyped-def]
    return nvidia_verdict(ev, NvidiaPolicy(), expected_nonce=NONCE, as_of=as_of, trusted_roots=gpu.simulation_roots)


def test_good_statuses_accepted(gpu: FakeGpu) -> None:
    v = _verdict(gpu, gpu.evidence(NONCE, now=NOW))
    assert v.accepted, v
    assert len(v.claims.details["revocation"]) == 3  # provisioner CA + the RIM signer of each RIM


@pytest.mark.parametrize("which,reason", [("ca", "nvidia.cert_revoked"), ("rim_signer", "nvidia.rim_cert_revoked")])
def test_revoked_refused(gpu: FakeGpu, which: str, reason: str) -> None:
    assert _verdict(gpu, gpu.evidence(NONCE, now=NOW, revoked=frozenset({which}))).reason == reason


def test_expired_status_refused(gpu: FakeGpu) -> None:
    v = _verdict(gpu, gpu.evidence(NONCE, now=NOW), as_of=NOW + dt.timedelta(days=2))
    assert v.reason == "nvidia.revocation_stale"


def test_status_from_the_future_refused(gpu: FakeGpu) -> None:
    v = _verdict(gpu, gpu.evidence(NONCE, now=NOW), as_of=NOW - dt.timedelta(hours=1))
    assert v.reason == "nvidia.revocation_not_yet_valid"


def test_missing_status_refused(gpu: FakeGpu) -> None:
    ev = gpu.evidence(NONCE, now=NOW)
    v = _verdict(gpu, dataclasses.replace(ev, ocsp=ev.ocsp[:1]))
    assert v.reason == "nvidia.revocation_missing"


def _forged(gpu: FakeGpu, status: ocsp.OCSPCertStatus, key=None) -> bytes:  # type: ignore[no-untyped-def]
    """A response for the provisioner CA; signed by ``key`` under a look-alike of the root's name
    (default: by the real issuer)."""
    issuer_key, responder = gpu.keys["root"], gpu.certs["root"]
    if key is not None:
        from cryptography import x509

        name = gpu.certs["root"].subject
        responder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=1))
            .sign(key, hashes.SHA384())
        )
        issuer_key = key
    return (
        ocsp.OCSPResponseBuilder()
        .certificates([responder])
        .add_response(
            cert=gpu.certs["ca"],
            issuer=gpu.certs["root"],
            algorithm=hashes.SHA384(),
            cert_status=status,
            this_update=NOW - dt.timedelta(minutes=1),
            next_update=NOW + dt.timedelta(days=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
        .sign(issuer_key, hashes.SHA384())
        .public_bytes(Encoding.DER)
    )


def test_forged_good_status_refused(gpu: FakeGpu) -> None:
    """The host cannot hide a revocation by signing its own GOOD answer."""
    ev = gpu.evidence(NONCE, now=NOW, revoked=frozenset({"ca"}))
    forged = _forged(gpu, ocsp.OCSPCertStatus.GOOD, ec.generate_private_key(ec.SECP384R1()))
    v = _verdict(gpu, dataclasses.replace(ev, ocsp=(forged, *ev.ocsp[1:])))
    assert v.reason == "nvidia.ocsp_signature_invalid"


def test_unknown_status_refused(gpu: FakeGpu) -> None:
    ev = gpu.evidence(NONCE, now=NOW)
    v = _verdict(gpu, dataclasses.replace(ev, ocsp=(_forged(gpu, ocsp.OCSPCertStatus.UNKNOWN), *ev.ocsp[1:])))
    assert v.reason == "nvidia.revocation_unknown"


def test_garbage_status_refused(gpu: FakeGpu) -> None:
    ev = gpu.evidence(NONCE, now=NOW)
    assert _verdict(gpu, dataclasses.replace(ev, ocsp=(b"\x30\x03\x0a\x01\x01",))).reason == "nvidia.ocsp_malformed"
