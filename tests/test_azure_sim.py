"""``sim-azure-snp``: a SIMULATED Azure SEV-SNP CVM whose evidence (HCL report, TPM quote, VCEK
chain and CRL, an MAA token) goes through the verifier of real Azure CVMs, under roots made per
deployment that are refused unless trusted."""

from __future__ import annotations

import copy
import json

import pytest

from veil.attest import api, registry
from veil.attest.api import Binding, VerifyOptions
from veil.attest.azure.skr import evaluate as skr_holds
from veil.attest.sim.azure import SIM_MAA_ISSUER, SimAzureSnp, sim_release_policy, sim_worker_reference
from veil.attest.trust import TrustRoots
from veil.coordinator.release import evaluate as release
from veil.errors import VeilError

REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module")
def attester(tmp_path_factory):  # type: ignore[no-untyped-def]
    return registry.attester("sim-azure-snp", registry.AttesterConfig(sim_dir=tmp_path_factory.mktemp("sim-azure")))


@pytest.fixture(scope="module")
def cvm(attester) -> SimAzureSnp:  # type: ignore[no-untyped-def]
    return attester._cvm


def _options(cvm: SimAzureSnp, *roots: str, report_data: bytes = REPORT_DATA) -> VerifyOptions:
    return VerifyOptions(Binding.to(report_data), TrustRoots.production().with_simulation(*roots))


def _reason(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(VeilError) as err:
        fn()
    return err.value.reason


def test_evidence_verifies_with_the_real_azure_verifier_and_says_simulated(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    evidence = attester.evidence(REPORT_DATA)
    assert evidence["platform"] == "sim-azure-snp" and json.loads(json.dumps(evidence)) == evidence
    ref = sim_worker_reference(attester.measurement.hex())
    verified = api.appraise(evidence, [ref], _options(cvm, *cvm.simulation_roots))
    claims = verified.claims
    assert claims.platform == "sim-azure-snp" and claims.simulated
    assert claims.measurement == attester.measurement.hex()
    assert claims.details["hardware_platform"] == "sim-snp" and claims.details["user_data_bound"]
    assert claims.details["maa"]["issuer"] == SIM_MAA_ISSUER
    names = [c.name for c in verified.checks]
    for step in ("hardware: report signature", "hardware: revocation (CRL)", "HCL binding", "TPM quote", "binding",
                 "MAA token", "MAA policy"):
        assert step in names, names
    # the model key's release policy (Azure's SKR grammar, over the verified MAA claims) holds
    assert release(sim_release_policy(attester.measurement.hex()), claims) == (True, "ok")


def test_refused_unless_both_simulation_roots_are_trusted(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    evidence = attester.evidence(REPORT_DATA)
    ref = sim_worker_reference(attester.measurement.hex())
    chip_root, maa_root = cvm.simulation_roots
    assert _reason(lambda: api.appraise(evidence, [ref], _options(cvm))).startswith("snp.")
    assert _reason(lambda: api.appraise(evidence, [ref], _options(cvm, chip_root))) == "azure.maa_untrusted_root"
    # the MAA root alone does not make the simulated chip trusted
    assert _reason(lambda: api.appraise(evidence, [ref], _options(cvm, maa_root))).startswith("snp.")


def test_bound_to_the_verifier_nonce(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    evidence = attester.evidence(REPORT_DATA)
    ref = sim_worker_reference(attester.measurement.hex())
    other = _options(cvm, *cvm.simulation_roots, report_data=bytes(64))
    assert _reason(lambda: api.appraise(evidence, [ref], other)) == "azure.nonce_mismatch"


def test_simulated_evidence_never_passes_as_a_real_azure_cvm(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    """Even where the simulation roots are trusted, a simulated report relabelled ``azure-snp-vtpm``
    is refused: the claims would say a real Azure platform."""
    evidence = {**attester.evidence(REPORT_DATA), "platform": "azure-snp-vtpm"}
    options = _options(cvm, *cvm.simulation_roots)
    reason = _reason(lambda: registry.verifier("azure-snp-vtpm").verify(evidence, options))
    assert reason == "evidence.platform_mismatch"


def test_the_key_is_not_released_when_the_token_is_missing_or_the_skr_policy_unmet(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    evidence = attester.evidence(REPORT_DATA)
    ref = sim_worker_reference(attester.measurement.hex())
    no_token = {k: v for k, v in evidence.items() if k != "maa"}
    assert _reason(lambda: api.appraise(no_token, [ref], _options(cvm, *cvm.simulation_roots))) == "azure.maa_required"
    claims = api.appraise(evidence, [ref], _options(cvm, *cvm.simulation_roots)).claims
    policy = sim_release_policy(attester.measurement.hex())
    assert policy.skr is not None
    tdx_only = copy.deepcopy(policy.skr)
    tdx_only["anyOf"][0]["allOf"][0]["equals"] = "tdxvm"
    assert not skr_holds(tdx_only, {SIM_MAA_ISSUER: claims.details["maa"]["claims"]})
    assert release(policy.model_copy(update={"skr": tdx_only}), claims) == (False, "release.skr_not_satisfied")


def test_the_machine_persists(attester, cvm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    again = SimAzureSnp.load_or_create(cvm.directory)
    assert again.simulation_roots == cvm.simulation_roots
    assert (cvm.directory / "azure.json").stat().st_mode & 0o077 == 0
    fresh = SimAzureSnp.load_or_create(tmp_path / "other")
    assert set(fresh.simulation_roots).isdisjoint(cvm.simulation_roots)  # roots are per deployment
