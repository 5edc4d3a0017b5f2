"""Client-side verification of the coordinator: every refusal the walking skeleton promises."""

from __future__ import annotations

import base64

import pytest

from deployment_fixtures import start_coordinator
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.client.verify import check_attestation
from veil.errors import VeilError
from veil.manifest import ReferenceValues, public_key_hex

NONCE = b"\x07" * 32


@pytest.fixture(scope="module")
def coord(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    SimPlatform.create(d)
    return start_coordinator(d)


def policy_for(coord, **overrides) -> ClientPolicy:
    m = coord.signed.manifest
    base = dict(
        coordinator=m.coordinator,
        manifest_digests=[coord.signed.digest.hex()],
        trust_simulated=True,
        simulation_roots=m.trusted_simulation_roots,
    )
    base.update(overrides)
    return ClientPolicy(**base)


def attestation(coord, nonce: bytes = NONCE) -> dict:
    return coord.http.get("/v1/attestation", params={"nonce": nonce.hex()}).json()


def refused(body, policy, nonce=NONCE) -> str:
    with pytest.raises(VeilError) as exc:
        check_attestation(body, policy, nonce=nonce)
    return exc.value.reason


def test_accepts_and_says_simulated(coord) -> None:
    result = check_attestation(attestation(coord), policy_for(coord), nonce=NONCE)
    assert result.simulated
    assert result.to_json()["simulated"] is True
    assert result.key_configs and result.manifest.digest == coord.signed.digest


def test_accepts_manifest_signed_by_trusted_admin(coord) -> None:
    policy = policy_for(coord, manifest_digests=[], admin_keys=[public_key_hex(coord.admin)])
    check_attestation(attestation(coord), policy, nonce=NONCE)


def test_wrong_measurement_refused(coord) -> None:
    policy = policy_for(coord, coordinator=[ReferenceValues(platform="sim-snp", measurements=["00" * 48])])
    assert refused(attestation(coord), policy).startswith("snp.measurement")


def test_unpinned_manifest_refused(coord) -> None:
    assert refused(attestation(coord), policy_for(coord, manifest_digests=["ff" * 32])) == "manifest.not_trusted"


def test_simulation_refused_unless_trusted(coord) -> None:
    assert refused(attestation(coord), policy_for(coord, trust_simulated=False)) == "attestation.simulated_untrusted"
    # trusting simulation in general is not enough: the root must be named
    assert refused(attestation(coord), policy_for(coord, simulation_roots=[])) == "snp.untrusted_root"


def test_replayed_answer_refused(coord) -> None:
    old = attestation(coord, nonce=b"\x01" * 32)
    assert refused(old, policy_for(coord), nonce=NONCE) == "binding.report_data_mismatch"


def test_swapped_key_config_refused(coord) -> None:
    body = attestation(coord)
    body["key_configs"] = base64.b64encode(b"\x00\x29" + b"\x01" * 0x29).decode()
    assert refused(body, policy_for(coord)) == "binding.report_data_mismatch"


def test_swapped_manifest_refused(coord) -> None:
    body = attestation(coord)
    body["manifest"]["manifest"]["settings"] = {"evil": True}
    assert refused(body, policy_for(coord)) == "manifest.digest_mismatch"


def test_tampered_report_byte_refused(coord) -> None:
    body = attestation(coord)
    report = bytearray(base64.b64decode(body["evidence"]["snp"]["report"]))
    report[0x50] ^= 0x80  # report_data region
    body["evidence"]["snp"]["report"] = base64.b64encode(bytes(report)).decode()
    assert refused(body, policy_for(coord)).startswith(("snp.", "binding."))


@pytest.mark.parametrize("field", ["platform", "key_configs", "public_key", "evidence"])
def test_malformed_answer_refused(coord, field) -> None:
    body = attestation(coord)
    del body[field]
    assert refused(body, policy_for(coord)) == "attestation.malformed"
