"""Attack: a host passes a SIMULATED Azure CVM off as a real one by renaming its evidence.

The attacker controls the worker's host and its evidence JSON, and runs the simulated Azure twin
(``sim-azure-snp``/``sim-azure-tdx``: its own chip, vTPM and MAA). The manifest trusts that
twin's simulation roots (a staging deployment that also admits real Azure CVMs), and the release
policy of the production key admits ``azure-snp-vtpm``/``azure-tdx-vtpm`` only. The attacker
labels the simulated evidence ``azure-*-vtpm`` so that the claims name a real Azure platform.
Defence: the Azure verifier refuses evidence whose hardware report is simulated under a real
platform's name, and real hardware under a twin's name (``evidence.platform_mismatch``), before
any policy runs. Targets are the coordinator's real objects (``api.appraise`` with the manifest's
reference sets, as its registration handler calls it); the control run presents the same
evidence under its true name.
"""

from __future__ import annotations

import pytest

from veil.attest import api, registry
from veil.attest.api import Binding, VerifyOptions
from veil.attest.sim.azure import PLATFORMS, sim_reference
from veil.attest.trust import TrustRoots
from veil.errors import VeilError
from veil.manifest import ReferenceValues

REPORT_DATA = b"\x42" * 64


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def cvm(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    return registry.attester(request.param, registry.AttesterConfig(sim_dir=tmp_path_factory.mktemp(request.param)))


def _appraise(cvm, evidence):  # type: ignore[no-untyped-def]
    real = f"azure-{cvm.kind}-vtpm"
    measurement = cvm.measurement.hex()
    # a staging manifest: the twin, and the real platform with the same measurement and MAA issuer
    references = [
        sim_reference(cvm.platform, measurement),
        ReferenceValues.model_validate({**sim_reference(cvm.platform, measurement).model_dump(), "platform": real}),
    ]
    options = VerifyOptions(Binding.to(REPORT_DATA), TrustRoots.production().with_simulation(*cvm.simulation_roots))
    return api.appraise(evidence, references, options)


def test_control_the_twin_under_its_own_name_verifies(cvm) -> None:  # type: ignore[no-untyped-def]
    claims = _appraise(cvm, cvm.evidence(REPORT_DATA)).claims
    assert claims.platform == cvm.platform and claims.simulated


def test_the_twin_renamed_as_a_real_azure_cvm_is_refused(cvm) -> None:  # type: ignore[no-untyped-def]
    renamed = {**cvm.evidence(REPORT_DATA), "platform": f"azure-{cvm.kind}-vtpm"}
    with pytest.raises(VeilError) as err:
        _appraise(cvm, renamed)
    assert err.value.reason == "evidence.platform_mismatch"
