"""NVIDIA RIMs: real NVIDIA-signed RIMs (tests/data/nvidia, from NVIDIA/nvtrust) verify against the
pinned RIM root; tampering, foreign roots, expired signers and the wrong firmware are refused."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from attest_verdicts import nvidia_verdict
from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.abi import load_report, parse_report
from veil.attest.nvidia.rim import compare, merge, rim_ids, verify_rim
from veil.attest.nvidia.testing import FakeGpu
from veil.attest.nvidia.validate import NvidiaPolicy
from veil.attest.nvidia.verify import fingerprint
from veil.attest.trust import NVIDIA_RIM_ROOT_SHA256, TrustRoots
from veil.errors import ParseError, PolicyError, VerificationError

DATA = Path(__file__).parents[1] / "data" / "nvidia"
VBIOS_RIM = (DATA / "1010_0200_882_96005E0001_PROD.swidtag").read_bytes()
DRIVER_RIM = (DATA / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
IN_WINDOW = datetime(2024, 6, 1, tzinfo=UTC)  # both signers: 2023-06 .. 2025-06
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


def _verify(xml: bytes, now: datetime = IN_WINDOW, trust: TrustRoots | None = None):  # type: ignore[no-untyped-def]
    return verify_rim(xml, trust=trust or TrustRoots.production(), now=now)


def test_pinned_rim_root_is_nvtrusts() -> None:
    root = x509.load_pem_x509_certificate((DATA / "verifier_RIM_root.pem").read_bytes())
    assert fingerprint(root) == NVIDIA_RIM_ROOT_SHA256


def test_real_vbios_and_driver_rims_verify() -> None:
    vbios, driver = _verify(VBIOS_RIM), _verify(DRIVER_RIM)
    assert not vbios.simulated and vbios.rim.product == "GH100"
    assert vbios.rim.version == "96.00.5E.00.01" and driver.rim.version == "545.00"
    assert len(vbios.chain) == 4 and fingerprint(vbios.chain[-1]) == NVIDIA_RIM_ROOT_SHA256
    assert vbios.rim.digest == hashlib.sha256(VBIOS_RIM).hexdigest()
    assert vbios.revocation_missing  # no OCSP given: every NVIDIA-issued certificate lacks a status
    # RIM index i is SPDM block i + 1; a driver and a VBIOS RIM cover disjoint active blocks
    assert vbios.rim.measurements[2].active and vbios.rim.measurements[2].values[0].hex().startswith("c3f65ef7")
    merge(vbios.rim.measurements.values(), driver.rim.measurements.values())


def test_rim_indices_line_up_with_the_real_report(vectors: Path) -> None:
    """Blocks 4-7 of the real H100 report equal RIM indices 3-6 of the real VBIOS RIM (same
    firmware parts, different VBIOS build): the +1 mapping is NVIDIA's."""
    report = parse_report(load_report((vectors / "nvidia" / "h100" / "report.hex").read_bytes()))
    rim = _verify(VBIOS_RIM).rim
    compare(report.blocks_by_index(), {i: rim.measurements[i] for i in (4, 5, 6, 7)})
    with pytest.raises(PolicyError) as exc:
        compare(report.blocks_by_index(), rim.measurements)
    assert exc.value.reason == "nvidia.measurement_mismatch"


def test_real_report_with_a_rim_for_other_firmware_refused(vectors: Path) -> None:
    d = vectors / "nvidia" / "h100"
    ev = NvidiaEvidence(load_report((d / "report.hex").read_bytes()), (d / "cert_chain.pem").read_bytes(), rims=(VBIOS_RIM,))
    v = nvidia_verdict(ev, NvidiaPolicy(require_revocation=False), expected_nonce=NONCE, as_of=IN_WINDOW)
    assert v.reason == "nvidia.rim_version_mismatch"


@pytest.mark.parametrize(
    "old,new",
    [
        (b'index="1" active="True"', b'index="1" active="False"'),  # switch a golden value off
        (b"c3f65ef79a19c029", b"c3f65ef79a19c02a"),  # change a golden value
        (b'colloquialVersion="96.00.5E.00.01"', b'colloquialVersion="96.00.9F.00.01"'),  # claim other firmware
    ],
)
def test_tampered_rim_refused(old: bytes, new: bytes) -> None:
    assert old in VBIOS_RIM
    with pytest.raises(VerificationError) as exc:
        _verify(VBIOS_RIM.replace(old, new, 1))
    assert exc.value.reason == "nvidia.rim_signature_invalid"


def test_rim_outside_its_signers_window_refused() -> None:
    with pytest.raises(VerificationError) as exc:
        _verify(VBIOS_RIM, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert exc.value.reason == "nvidia.rim_cert_expired"


def test_rim_root_is_not_a_device_root() -> None:
    """The RIM root is pinned for RIMs only, and the device root for GPUs only."""
    with pytest.raises(VerificationError) as exc:
        _verify(VBIOS_RIM, trust=TrustRoots.production().__class__(nvidia_rim=frozenset()))
    assert exc.value.reason == "nvidia.rim_untrusted_root"


def test_rim_signed_by_a_simulation_root_is_simulated() -> None:
    gpu = FakeGpu()
    rim = next(iter(gpu.rims().values()))
    with pytest.raises(VerificationError) as exc:
        _verify(rim, now=datetime.now(UTC))
    assert exc.value.reason == "nvidia.rim_untrusted_root"
    verified = _verify(rim, now=datetime.now(UTC), trust=TrustRoots.production().with_simulation(*gpu.simulation_roots))
    assert verified.simulated


def test_rim_with_a_dtd_or_garbage_refused() -> None:
    for xml in (b"<!DOCTYPE x [<!ENTITY a 'b'>]><x/>", b"not xml", b"<SoftwareIdentity/>"):
        with pytest.raises((ParseError, VerificationError)):
            _verify(xml)


def test_rim_ids_follow_nvidias_naming(gpu: FakeGpu | None = None) -> None:
    assert rim_ids("550.90.07", "96.00.9F.00.01", {"project": "1010", "project_sku": "0200", "chip_sku": "882"}) == (
        "NV_GPU_DRIVER_GH100_550.90.07",
        "NV_GPU_VBIOS_1010_0200_882_96009F0001",
    )


def test_simulated_rims_from_a_dropped_signer_refused() -> None:
    """RIMs the GPU's own deployment did not sign (another simulation root) are refused."""
    gpu, other = FakeGpu(), FakeGpu()
    ev = dataclasses.replace(gpu.evidence(NONCE), rims=tuple(other.rims().values()))
    v = nvidia_verdict(ev, NvidiaPolicy(require_revocation=False), expected_nonce=NONCE, trusted_roots=gpu.simulation_roots)
    assert v.reason == "nvidia.rim_untrusted_root"
