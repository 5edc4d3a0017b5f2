"""Composite worker evidence: the CPU report_data binds the GPU evidence and the GPU nonce."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from veil.attest import binding, composite
from veil.attest.api import Binding, VerifiedEvidence, VerifyOptions, verdict_of
from veil.attest.claims import Claims, Verdict
from veil.attest.composite import gpu_evidence_digest, gpu_nonce, worker_report_data
from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.validate import NvidiaPolicy
from veil.attest.trust import TrustRoots
from veil.attest.nvidia.abi import load_report
from veil.attest.nvidia.testing import FakeGpu

H100_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
CRYPTO_ONLY = NvidiaPolicy(require_rims=False, require_revocation=False)  # the real sample has no RIMs
CHALLENGE = b"c" * 32
PUBKEY = b"k" * 32


@pytest.fixture(scope="module")
def h100(vectors: Path) -> NvidiaEvidence:
    d = vectors / "nvidia" / "h100"
    return NvidiaEvidence(load_report((d / "report.hex").read_bytes()), (d / "cert_chain.pem").read_bytes())


def verify_composite(
    claims: Claims,
    gpus: object,
    *,
    challenge_nonce: bytes,
    worker_public_key: bytes,
    as_of: datetime | None = None,
    trusted_roots: list[str] | None = None,
    policy: NvidiaPolicy = CRYPTO_ONLY,
    expected_gpu_nonce: bytes | None = None,
) -> Verdict:
    """composite.verify_composite on CPU claims accepted elsewhere, as a Verdict."""
    trust = TrustRoots.production().with_simulation(*(trusted_roots or ()))
    options = VerifyOptions(Binding.unbound(), trust, as_of)
    return verdict_of(
        lambda: composite.verify_composite(
            VerifiedEvidence(claims, ()),
            gpus,
            challenge_nonce=challenge_nonce,  # type: ignore[arg-type]
            worker_public_key=worker_public_key,
            options=options,
            policy=policy,
            expected_gpu_nonce=expected_gpu_nonce,
        ),
        claims,
    )


def cpu_claims(report_data: bytes) -> Claims:
    """Stands in for the claims of an accepted CPU verdict (SNP/TDX are verified elsewhere)."""
    return Claims(
        platform="sev-snp",
        measurement="aa" * 48,
        report_data=report_data,
        debug=False,
        details={"chip_id": "00"},
    )


def test_real_h100_bound_into_cpu_report(h100: NvidiaEvidence) -> None:
    claims = cpu_claims(worker_report_data(CHALLENGE, PUBKEY, h100))
    v = verify_composite(
        claims,
        h100,
        challenge_nonce=CHALLENGE,
        worker_public_key=PUBKEY,
        as_of=AS_OF,
        expected_gpu_nonce=H100_NONCE,
    )
    assert v.accepted, v
    assert v.claims is not None and v.claims.platform == "sev-snp"
    gpu = v.claims.details["gpus"][0]
    assert gpu["platform"] == "nvidia-h100" and gpu["details"]["driver_version"] == "550.90.07"
    assert v.claims.details["chip_id"] == "00"


def test_real_h100_is_not_fresh_for_a_new_challenge(h100: NvidiaEvidence) -> None:
    claims = cpu_claims(worker_report_data(CHALLENGE, PUBKEY, h100))
    v = verify_composite(claims, h100, challenge_nonce=CHALLENGE, worker_public_key=PUBKEY, as_of=AS_OF)
    assert v.reason == "nvidia.nonce_mismatch" and v.message.startswith("GPU 0")


def test_substituted_gpu_evidence_rejected(h100: NvidiaEvidence) -> None:
    claims = cpu_claims(worker_report_data(CHALLENGE, PUBKEY, h100))
    other = NvidiaEvidence(h100.report + b"\x00", h100.cert_chain_pem)  # still a valid GPU report
    v = verify_composite(
        claims,
        other,
        challenge_nonce=CHALLENGE,
        worker_public_key=PUBKEY,
        as_of=AS_OF,
        expected_gpu_nonce=H100_NONCE,
    )
    assert v.reason == "binding.report_data_mismatch"


@pytest.mark.parametrize("challenge,key", [(b"x" * 32, PUBKEY), (CHALLENGE, b"y" * 32)])
def test_wrong_challenge_or_key_rejected(h100: NvidiaEvidence, challenge: bytes, key: bytes) -> None:
    claims = cpu_claims(worker_report_data(CHALLENGE, PUBKEY, h100))
    v = verify_composite(
        claims,
        h100,
        challenge_nonce=challenge,
        worker_public_key=key,
        as_of=AS_OF,
        expected_gpu_nonce=H100_NONCE,
    )
    assert v.reason == "binding.report_data_mismatch"


def test_worker_flow_with_fake_gpus() -> None:
    gpus = [FakeGpu(), FakeGpu()]
    nonce = gpu_nonce(CHALLENGE, PUBKEY)
    evidence = [g.evidence(nonce) for g in gpus]
    claims = cpu_claims(worker_report_data(CHALLENGE, PUBKEY, evidence))
    roots = [r for g in gpus for r in g.simulation_roots]
    as_of = None
    v = verify_composite(
        claims,
        evidence,
        challenge_nonce=CHALLENGE,
        worker_public_key=PUBKEY,
        as_of=as_of,
        trusted_roots=roots,
        policy=NvidiaPolicy(),
    )
    assert v.accepted, v
    assert v.claims is not None and len(v.claims.details["gpus"]) == 2
    assert v.claims.simulated  # simulated GPUs make the worker simulated
    dropped = verify_composite(
        claims,
        evidence[:1],
        challenge_nonce=CHALLENGE,
        worker_public_key=PUBKEY,
        as_of=as_of,
        trusted_roots=roots,
    )
    assert dropped.reason == "binding.report_data_mismatch"
    strict = verify_composite(
        claims,
        evidence,
        challenge_nonce=CHALLENGE,
        worker_public_key=PUBKEY,
        as_of=as_of,
        trusted_roots=roots,
        policy=NvidiaPolicy(allowed_driver_versions=["999.0"]),
    )
    assert strict.reason == "nvidia.driver_not_allowed"


def test_no_gpu_evidence_rejected() -> None:
    claims = cpu_claims(binding.worker_report_data(CHALLENGE, PUBKEY))
    v = verify_composite(claims, [], challenge_nonce=CHALLENGE, worker_public_key=PUBKEY)
    assert v.reason == "composite.no_gpu_evidence"


def test_digest_and_nonce_encoding(h100: NvidiaEvidence) -> None:
    d = gpu_evidence_digest(h100)
    assert len(d) == 32 and d == gpu_evidence_digest([h100])
    assert d == gpu_evidence_digest(NvidiaEvidence.from_json(h100.to_json()))
    assert d != gpu_evidence_digest([h100, h100])
    # the documented encoding, spelled out independently
    lp = lambda b: len(b).to_bytes(4, "big") + b
    expected = hashlib.sha256(
        lp(b"veil/gpu-evidence/v1") + (1).to_bytes(4, "big") + lp(h100.report) + lp(h100.cert_chain_pem)
    ).digest()
    assert d == expected
    assert gpu_nonce(CHALLENGE, PUBKEY) == hashlib.sha256(lp(b"veil/gpu-nonce/v1") + lp(CHALLENGE) + lp(PUBKEY)).digest()
    assert worker_report_data(CHALLENGE, PUBKEY, h100) == binding.worker_report_data(CHALLENGE, PUBKEY, d)


def test_worker_collects_with_the_derived_nonce(tmp_path: Path) -> None:
    """NVML's report and chain, plus the RIMs and OCSP statuses from the worker's collateral cache."""
    from veil.attest.collateral import CollateralCache
    from veil.attest.composite import collect_gpu_evidence
    from veil.attest.nvidia.testing import FakeNvml

    gpu = FakeGpu()
    cache = CollateralCache(tmp_path)
    for rim_id, xml in gpu.rims().items():
        cache.write_rim(rim_id, xml)
    for cert, der in gpu.ocsp_responses().items():
        cache.write_ocsp(cert, der)
    evidence, report_data = collect_gpu_evidence(CHALLENGE, PUBKEY, nvml=FakeNvml([gpu]), cache=cache)
    assert len(evidence[0].rims) == 2 and len(evidence[0].ocsp) == 2
    assert evidence[0].host_cc == {"cc_feature": 1, "dev_tools_mode": 0}
    v = verify_composite(
        cpu_claims(report_data),
        evidence,
        challenge_nonce=CHALLENGE,
        worker_public_key=PUBKEY,
        trusted_roots=gpu.simulation_roots,
        policy=NvidiaPolicy(),
    )
    assert v.accepted, v
    empty, _ = collect_gpu_evidence(CHALLENGE, PUBKEY, nvml=FakeNvml([gpu]), cache=CollateralCache(tmp_path / "none"))
    refused = verify_composite(
        cpu_claims(worker_report_data(CHALLENGE, PUBKEY, empty)),
        empty,
        challenge_nonce=CHALLENGE,
        worker_public_key=PUBKEY,
        trusted_roots=gpu.simulation_roots,
        policy=NvidiaPolicy(),
    )
    assert refused.reason == "nvidia.rim_missing"


def test_one_gpu_cannot_pose_as_two(h100: NvidiaEvidence) -> None:
    claims = cpu_claims(worker_report_data(CHALLENGE, PUBKEY, [h100, h100]))
    v = verify_composite(
        claims,
        [h100, h100],
        challenge_nonce=CHALLENGE,
        worker_public_key=PUBKEY,
        as_of=AS_OF,
        expected_gpu_nonce=H100_NONCE,
    )
    assert v.reason == "composite.duplicate_gpu"
