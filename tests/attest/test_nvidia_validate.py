"""NVIDIA policy (the manifest's GpuReference): allowlists, golden measurements from signed RIMs and
the manifest, RIMs and revocation required by default, dev-tools mode refused."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import pytest

from attest_verdicts import nvidia_verdict
from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.abi import load_report, parse_report
from veil.attest.nvidia.testing import FakeGpu, build_report
from veil.attest.nvidia.validate import NvidiaPolicy
from veil.attest.sim.gpu import DEVTOOLS_BLOCK
from veil.manifest import ReferenceValues

NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)
CRYPTO_ONLY = NvidiaPolicy(require_rims=False, require_revocation=False)


@pytest.fixture(scope="module")
def h100(vectors: Path) -> NvidiaEvidence:
    d = vectors / "nvidia" / "h100"
    return NvidiaEvidence(load_report((d / "report.hex").read_bytes()), (d / "cert_chain.pem").read_bytes())


@pytest.fixture(scope="module")
def gpu() -> FakeGpu:
    return FakeGpu()


def _run(ev: NvidiaEvidence, policy: NvidiaPolicy):  # type: ignore[no-untyped-def]
    return nvidia_verdict(ev, policy, expected_nonce=NONCE, as_of=AS_OF)


def _sim(gpu: FakeGpu, policy: NvidiaPolicy | None = None, **evidence):  # type: ignore[no-untyped-def]
    return nvidia_verdict(gpu.evidence(NONCE, **evidence), policy, expected_nonce=NONCE, trusted_roots=gpu.simulation_roots)


def test_allowlists(h100: NvidiaEvidence) -> None:
    ok = CRYPTO_ONLY.model_copy(
        update={
            "allowed_driver_versions": ["550.90.07"],
            "allowed_vbios_versions": ["96.00.9f.00.01"],
            "allowed_platforms": ["nvidia-h100"],
        }
    )
    assert _run(h100, ok).accepted
    for field, value, reason in [
        ("allowed_driver_versions", ["560.35.03"], "nvidia.driver_not_allowed"),
        ("allowed_vbios_versions", ["96.00.AA.00.01"], "nvidia.vbios_not_allowed"),
        ("allowed_platforms", ["nvidia-gb100"], "nvidia.platform_not_allowed"),
    ]:
        assert _run(h100, CRYPTO_ONLY.model_copy(update={field: value})).reason == reason


def test_manifest_reference_measurements(h100: NvidiaEvidence) -> None:
    blocks = parse_report(h100.report).blocks_by_index()
    good = CRYPTO_ONLY.model_copy(
        update={"reference_measurements": {2: [blocks[2].value.hex()], 5: ["00" * 48, blocks[5].value.hex()]}}
    )
    assert _run(h100, good).accepted
    v = _run(h100, CRYPTO_ONLY.model_copy(update={"reference_measurements": {2: ["11" * 48]}}))
    assert v.reason == "nvidia.measurement_mismatch" and "2" in v.message


def test_production_policy_needs_rims_and_revocation(h100: NvidiaEvidence) -> None:
    """Without the RIMs a GPU cannot be judged: the default refuses (fail closed)."""
    assert _run(h100, NvidiaPolicy()).reason == "nvidia.rim_missing"
    no_rim_check = NvidiaPolicy(require_rims=False)
    assert _run(h100, no_rim_check).reason == "nvidia.revocation_missing"


def test_simulated_gpu_with_rims_and_ocsp_accepted(gpu: FakeGpu) -> None:
    v = _sim(gpu, NvidiaPolicy(allowed_rim_digests=gpu.rim_digests()))
    assert v.accepted, v
    names = [c.name for c in v.checks]
    assert {"RIM signatures", "revocation (OCSP)", "golden measurements", "revocation age"} <= set(names)
    assert v.claims is not None and v.claims.simulated
    assert set(v.claims.details["rims"]) == {"driver", "vbios"}


def test_rim_not_pinned_refused(gpu: FakeGpu) -> None:
    assert _sim(gpu, NvidiaPolicy(allowed_rim_digests=["00" * 32])).reason == "nvidia.rim_not_allowed"


def test_devtools_mode_refused(gpu: FakeGpu) -> None:
    devtools = dataclasses.replace(gpu, devtools=True)
    assert _sim(devtools).reason == "nvidia.devtools_mode"  # the host says so
    lying = dataclasses.replace(gpu, devtools=True, host_says_devtools=False)
    v = _sim(lying)  # the host hides it: the measurements give it away
    assert v.reason == "nvidia.measurement_mismatch" and str(DEVTOOLS_BLOCK) in v.message


def test_revocation_too_old_refused(gpu: FakeGpu) -> None:
    old = datetime(2025, 1, 1, tzinfo=UTC)
    v = nvidia_verdict(
        gpu.evidence(NONCE, now=old),
        NvidiaPolicy(max_revocation_age_hours=24),
        expected_nonce=NONCE,
        trusted_roots=gpu.simulation_roots,
        as_of=datetime(2025, 1, 1, 23, tzinfo=UTC),
    )
    assert v.accepted, v
    v = nvidia_verdict(
        gpu.evidence(NONCE, now=old),
        NvidiaPolicy(max_revocation_age_hours=1),
        expected_nonce=NONCE,
        trusted_roots=gpu.simulation_roots,
        as_of=datetime(2025, 1, 1, 12, tzinfo=UTC),
    )
    assert v.reason == "nvidia.revocation_too_old"


def test_require_gpu_needs_gpu_reference_values() -> None:
    with pytest.raises(ValueError, match="require_gpu needs GPU reference values"):
        ReferenceValues(platform="sim-snp", measurements=["00" * 48], require_gpu=True)
    ReferenceValues(platform="sim-snp", measurements=["00" * 48], require_gpu=True, gpu=NvidiaPolicy())


def test_single_measurement_report_refused(gpu: FakeGpu) -> None:
    report = build_report(gpu.keys["leaf"], NONCE, blocks={1: bytes(48)}, opaque={20: gpu.fwid}, operation=0x01)
    v = nvidia_verdict(
        NvidiaEvidence(report, gpu.chain_pem()), CRYPTO_ONLY, expected_nonce=NONCE, trusted_roots=gpu.simulation_roots
    )
    assert v.reason == "nvidia.partial_measurements"
