"""ClientPolicy: what a client lets an attested manifest admit, and its two constructors."""

from __future__ import annotations

import pytest

from veil.client.policy import HARDWARE_PLATFORMS, ClientPolicy, simulation_in
from veil.errors import PolicyError
from veil.manifest import Manifest, ReferenceValues, ReleasePolicy, SandboxSettings

ADMIN = "11" * 32
ROOT = "ab" * 32
SNP = ReferenceValues(platform="sev-snp", measurements=["aa" * 48])
SIM = ReferenceValues(platform="sim-snp", measurements=["aa" * 48])


def manifest(**kw) -> Manifest:
    base = dict(coordinator=[SNP], workers=[SNP], admin_keys=[ADMIN])
    base.update(kw)
    return Manifest(**base)


def production(**kw) -> ClientPolicy:
    return ClientPolicy.production(
        coordinator=[SNP], coordinator_url="https://c", gateway_url="https://g", admin_keys=[ADMIN], **kw
    )


def development() -> ClientPolicy:
    return ClientPolicy.local_development(
        coordinator=[SIM],
        simulation_roots=[ROOT],
        sandbox_profile="bubblewrap",
        coordinator_url="http://c",
        gateway_url="http://g",
    )


def refused(policy: ClientPolicy, m: Manifest) -> str:
    with pytest.raises(PolicyError) as info:
        policy.check(m)
    return info.value.reason


def test_production_accepts_hardware_sandboxed_manifests() -> None:
    production().check(manifest())
    production().check(
        manifest(workers=[ReferenceValues(platform="tdx", measurements=["bb" * 48])], sandbox=SandboxSettings(profile="gvisor"))
    )


@pytest.mark.parametrize(
    "m, reason",
    [
        (manifest(workers=[SNP, SIM]), "policy.simulation_refused"),
        (manifest(coordinator=[SNP, SIM]), "policy.simulation_refused"),
        (manifest(trusted_simulation_roots=[ROOT]), "policy.simulation_refused"),
        (manifest(release_policies={"k": ReleasePolicy(allow_simulated=True)}), "policy.simulation_refused"),
        (manifest(workers=[SNP.model_copy(update={"allow_debug": True})]), "policy.debug_refused"),
        (manifest(release_policies={"k": ReleasePolicy(allow_debug=True)}), "policy.debug_refused"),
        (manifest(sandbox=SandboxSettings(profile="none")), "policy.sandbox_refused"),
    ],
)
def test_production_refuses_what_it_never_admits(m: Manifest, reason: str) -> None:
    assert refused(production(), m) == reason


def test_worker_platforms_narrow_the_hardware() -> None:
    tdx = manifest(workers=[ReferenceValues(platform="tdx", measurements=["bb" * 48])])
    assert refused(production(worker_platforms=["sev-snp"]), tdx) == "policy.platform_refused"


def test_production_cannot_be_told_to_trust_simulation() -> None:
    policy = production()
    assert policy.trust_simulated is False and policy.simulation_roots == []
    assert list(policy.worker_platforms) == list(HARDWARE_PLATFORMS)
    with pytest.raises(TypeError):
        ClientPolicy.production(coordinator=[SNP], coordinator_url="c", gateway_url="g", trust_simulated=True)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        ClientPolicy.production(coordinator=[SIM], coordinator_url="c", gateway_url="g")
    with pytest.raises(ValueError):
        ClientPolicy(coordinator=[SNP], worker_platforms=["sim-snp"])  # simulation is never a listed platform


def test_development_policy_trusts_only_its_named_roots_and_sandbox() -> None:
    dev = development()
    dev.check(manifest(coordinator=[SIM], workers=[SIM], trusted_simulation_roots=[ROOT]))
    other_root = manifest(coordinator=[SIM], workers=[SIM], trusted_simulation_roots=[ROOT, "cd" * 32])
    assert refused(dev, other_root) == "policy.simulation_root_unknown"
    assert refused(dev, manifest(workers=[SIM], sandbox=SandboxSettings(profile="gvisor"))) == "policy.sandbox_refused"
    assert refused(dev, manifest(workers=[SIM.model_copy(update={"allow_debug": True})])) == "policy.debug_refused"


def test_simulation_is_derived_from_the_whole_manifest() -> None:
    assert simulation_in(manifest()) == []
    parts = simulation_in(
        manifest(
            coordinator=[SNP, SIM],
            workers=[SIM],
            trusted_simulation_roots=[ROOT],
            release_policies={"k": ReleasePolicy(allow_simulated=True)},
        )
    )
    assert parts == [
        "coordinators on sim-snp",
        "workers on sim-snp",
        f"simulation root {ROOT}",
        "release of k to simulated workers",
    ]


def test_admission_rules_are_shown_as_data() -> None:
    assert production().admission_rules() == {
        "worker_platforms": list(HARDWARE_PLATFORMS),
        "allow_debug": False,
        "sandbox_profiles": ["bubblewrap", "gvisor"],
        "trust_simulated": False,
        "simulation_roots": [],
    }
    assert development().admission_rules()["simulation_roots"] == [ROOT]
