"""Attack: the coordinator's host launches it with launch data of its own choosing.

The attacker controls the coordinator's host and so the launch parameters: on SEV-SNP the host
sets HOST_DATA when it launches the guest, on TDX the VMM sets MRCONFIGID when it creates the TD
(veil up's simulated host passes either as --sim-launch-data). An admin binds the deployment's
bootstrap admin key there, so a host that launches the same code with its own value could set the
first manifest itself. Defence: HOST_DATA and MRCONFIGID are in the reference values
(``ReferenceValues.snp.host_data``, ``ReferenceValues.tdx.mr_config_id``) and a client pinning them
refuses any other (``snp.host_data_mismatch``, ``tdx.mrconfigid_not_allowed``). Targets are real
coordinator processes on sim-snp and sim-tdx; the control runs launch one with the admin's value
and the same client policy accepts it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from platform_fixtures import start_coordinator
from veil.attest import sim
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.errors import VeilError
from veil.manifest import ReferenceValues, SnpReference, TdxReference

# platform -> (the admin's value, the host's value, the claim holding it, the refusal)
LAUNCH_DATA = {
    "sim-snp": ("ad" * 32, "66" * 32, "host_data", "snp.host_data_mismatch"),
    "sim-tdx": ("ad" * 48, "66" * 48, "mr_config_id", "tdx.mrconfigid_not_allowed"),
}


@pytest.fixture(scope="module", params=sorted(LAUNCH_DATA))
def platform(request, tmp_path_factory) -> tuple[str, Path, str]:  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp(f"{request.param}-launch-data") / "sim"
    return request.param, directory, sim.load_or_create(request.param, directory).root_fingerprint


def _policy(platform: str, root: str, url: str) -> ClientPolicy:
    admins = [LAUNCH_DATA[platform][0]]
    ref = ReferenceValues(
        platform=platform,
        measurements=[sim.measure_code().hex()],  # type: ignore[arg-type]
        snp=SnpReference(host_data=admins) if platform == "sim-snp" else None,
        tdx=TdxReference(mr_config_id=admins) if platform == "sim-tdx" else None,
    )
    return ClientPolicy(coordinator_url=url, coordinator=[ref], trust_simulated=True, simulation_roots=[root])


@pytest.mark.parametrize("launched_by", ["admin", "host"])
def test_launch_data_pinned_by_the_client(platform, tmp_path, launched_by: str) -> None:  # type: ignore[no-untyped-def]
    name, directory, root = platform
    admins, hosts, claim, refusal = LAUNCH_DATA[name]
    value = admins if launched_by == "admin" else hosts
    coordinator = start_coordinator(name, directory, tmp_path, "--sim-launch-data", value)
    try:
        try:
            attested = verify_coordinator(_policy(name, root, coordinator.url), require_manifest=False)
            got = "ok"
            claims = attested.verdict.claims
            assert claims is not None and claims.platform == name and claims.details[claim] == value
        except VeilError as err:
            got = err.reason
        assert got == ("ok" if launched_by == "admin" else refusal)
    finally:
        coordinator.stop()
