"""Attack: the coordinator's host launches it with HOST_DATA of its own choosing.

The attacker controls the coordinator's host and so the launch parameters: on SEV-SNP the host
sets HOST_DATA when it launches the guest (veil up's simulated host passes --sim-launch-data). An
admin binds the deployment's bootstrap admin key there, so a host that launches the same code with
its own value could set the first manifest itself. Defence: HOST_DATA is in the SEV-SNP reference
values (``ReferenceValues.snp.host_data``) and a client pinning it refuses any other
(``snp.host_data_mismatch``). Targets are real coordinator processes; the control run launches one
with the admin's value and the same client policy accepts it.
"""

from __future__ import annotations

import pytest

from platform_fixtures import start_coordinator
from veil.attest.sim import SimPlatform, measure_code
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.errors import VeilError
from veil.manifest import ReferenceValues, SnpReference

ADMINS_HOST_DATA = "ad" * 32
HOSTS_HOST_DATA = "66" * 32


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> SimPlatform:  # type: ignore[no-untyped-def]
    return SimPlatform.create(tmp_path_factory.mktemp("snp-host-data") / "sim")


def _policy(sim: SimPlatform, url: str) -> ClientPolicy:
    ref = ReferenceValues(platform="sim-snp", measurements=[measure_code().hex()],
                          snp=SnpReference(host_data=[ADMINS_HOST_DATA]))
    return ClientPolicy(coordinator_url=url, coordinator=[ref], trust_simulated=True,
                        simulation_roots=[sim.root_fingerprint])


@pytest.mark.parametrize(("host_data", "expected"), [(ADMINS_HOST_DATA, "ok"), (HOSTS_HOST_DATA, "snp.host_data_mismatch")])
def test_host_data_pinned_by_the_client(sim: SimPlatform, tmp_path, host_data: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    coordinator = start_coordinator("sim-snp", sim.directory, tmp_path, "--sim-launch-data", host_data)
    try:
        try:
            attested = verify_coordinator(_policy(sim, coordinator.url), require_manifest=False)
            got = "ok"
            assert attested.verdict.claims is not None and attested.verdict.claims.details["host_data"] == host_data
        except VeilError as err:
            got = err.reason
        assert got == expected
    finally:
        coordinator.stop()
