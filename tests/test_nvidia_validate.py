"""NVIDIA policy: version allowlists, reference measurements from the policy and from RIMs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from veil.cli.evidence import EvidenceFiles, verify_files
from veil.attest.nvidia import NvidiaEvidence, NvidiaPolicy, verify_evidence
from veil.attest.nvidia.abi import load_report, parse_report
from veil.attest.nvidia.rim import parse_rim
from veil.attest.nvidia.validate import load_rims
from veil.errors import ParseError

NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def h100(vectors: Path) -> NvidiaEvidence:
    d = vectors / "nvidia" / "h100"
    return NvidiaEvidence(
        load_report((d / "report.hex").read_bytes()), (d / "cert_chain.pem").read_bytes()
    )


def _run(ev: NvidiaEvidence, policy: NvidiaPolicy, **kw):  # type: ignore[no-untyped-def]
    return verify_evidence(ev, policy, expected_nonce=NONCE, as_of=AS_OF, **kw)


def rim_xml(values: dict[int, list[bytes]], inactive: frozenset[int] = frozenset()) -> bytes:
    """A SWID-tag RIM in NVIDIA's layout (unsigned: Veil does not check RIM signatures)."""
    resources = []
    for index, alts in values.items():
        hashes = " ".join(f'SHA384:Hash{i}="{v.hex()}"' for i, v in enumerate(alts))
        active = "False" if index in inactive else "True"
        resources.append(
            f'<Resource type="Measurement" index="{index}" active="{active}" '
            f'alternatives="{len(alts)}" name="m{index}" size="48" {hashes}/>'
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd" '
        'xmlns:SHA384="http://www.w3.org/2001/04/xmlenc#sha384" '
        'name="GH100" tagId="test-rim" version="550.90.07">'
        f"<Payload>{''.join(resources)}</Payload></SoftwareIdentity>"
    ).encode()


def test_allowlists(h100: NvidiaEvidence) -> None:
    ok = NvidiaPolicy(
        allowed_driver_versions=["550.90.07"],
        allowed_vbios_versions=["96.00.9f.00.01"],
        allowed_platforms=["nvidia-h100"],
    )
    assert _run(h100, ok).accepted
    assert (
        _run(h100, NvidiaPolicy(allowed_driver_versions=["560.35.03"])).reason
        == "nvidia.driver_not_allowed"
    )
    assert (
        _run(h100, NvidiaPolicy(allowed_vbios_versions=["96.00.AA.00.01"])).reason
        == "nvidia.vbios_not_allowed"
    )
    assert (
        _run(h100, NvidiaPolicy(allowed_platforms=["nvidia-gb100"])).reason
        == "nvidia.platform_not_allowed"
    )


def test_policy_reference_measurements(h100: NvidiaEvidence) -> None:
    blocks = parse_report(h100.report).blocks_by_index()
    good = NvidiaPolicy(
        reference_measurements={2: [blocks[2].value.hex()], 5: ["00" * 48, blocks[5].value.hex()]}
    )
    assert _run(h100, good).accepted
    bad = NvidiaPolicy(reference_measurements={2: ["11" * 48]})
    v = _run(h100, bad)
    assert v.reason == "nvidia.measurement_mismatch" and "2" in v.message
    assert v.claims is not None  # genuine evidence: the claims say what it was


def test_rim_match_and_mismatch(h100: NvidiaEvidence, tmp_path: Path) -> None:
    blocks = parse_report(h100.report).blocks_by_index()
    values = {i: [blocks[i].value] for i in range(1, 65)}
    path = tmp_path / "driver.xml"
    path.write_bytes(rim_xml(values))
    assert _run(h100, NvidiaPolicy(), rim_references=load_rims([path])).accepted

    values[17] = [bytes([0xEE]) * 48, bytes([1]) * 48]
    path.write_bytes(rim_xml(values))
    v = _run(h100, NvidiaPolicy(), rim_references=load_rims([path]))
    assert v.reason == "nvidia.measurement_mismatch" and "17" in v.message

    path.write_bytes(rim_xml(values, inactive=frozenset({17})))  # inactive indices are skipped
    assert _run(h100, NvidiaPolicy(), rim_references=load_rims([path])).accepted


def test_rim_index_missing_from_report(h100: NvidiaEvidence, tmp_path: Path) -> None:
    path = tmp_path / "vbios.xml"
    path.write_bytes(rim_xml({99: [bytes([0xEE]) * 48]}))
    assert (
        _run(h100, NvidiaPolicy(), rim_references=load_rims([path])).reason
        == "nvidia.measurement_mismatch"
    )


def test_verify_files_with_rim_and_policy(
    vectors: Path, h100: NvidiaEvidence, tmp_path: Path
) -> None:
    blocks = parse_report(h100.report).blocks_by_index()
    (tmp_path / "rim.xml").write_bytes(rim_xml({1: [blocks[1].value]}))
    (tmp_path / "policy.json").write_text('{"allowed_driver_versions": ["550.90.07"]}')
    d = vectors / "nvidia" / "h100"
    files = EvidenceFiles(
        platform="nvidia",
        report=d / "report.hex",
        cert_chain=d / "cert_chain.pem",
        nonce=NONCE,
        as_of=AS_OF,
        policy=tmp_path / "policy.json",
        rim=tmp_path / "rim.xml",
    )
    assert verify_files(files).accepted
    (tmp_path / "policy.json").write_text('{"allowed_drivers": []}')
    assert verify_files(files).reason == "cli.malformed_policy"


@pytest.mark.parametrize(
    "xml",
    [
        b"not xml",
        b"<Other/>",
        b'<SoftwareIdentity xmlns="http://standards.iso.org/iso/19770/-2/2015/schema.xsd"/>',
        b'<!DOCTYPE x [<!ENTITY a "b">]><SoftwareIdentity/>',
        rim_xml({1: [b"\x00" * 10]}),
    ],
)
def test_bad_rims_refused(xml: bytes) -> None:
    with pytest.raises(ParseError) as exc:
        parse_rim(xml)
    assert exc.value.reason == "nvidia.rim_malformed"


def test_rim_attributes() -> None:
    rim = parse_rim(rim_xml({3: [bytes(48), bytes([2]) * 48]}))
    assert rim.tag_id == "test-rim" and rim.version == "550.90.07"
    assert rim.measurements[3].values == (bytes(48), bytes([2]) * 48)


def test_single_measurement_report_refused() -> None:
    from veil.attest.nvidia.testing import FakeGpu, build_report

    gpu, nonce = FakeGpu(), bytes(32)
    report = build_report(
        gpu.leaf_key, nonce, blocks={1: bytes(48)}, opaque={20: gpu.fwid}, operation=0x01
    )
    v = verify_evidence(
        NvidiaEvidence(report, gpu.chain_pem()),
        NvidiaPolicy(),
        expected_nonce=nonce,
        as_of=datetime(2025, 1, 1, tzinfo=UTC),
        trusted_roots={gpu.root_fingerprint},
    )
    assert v.reason == "nvidia.partial_measurements"
