"""``sim-azure-snp`` and ``sim-azure-tdx``: SIMULATED Azure CVMs whose evidence (HCL report, TPM
quote, the hardware report with its chain and CRL or TD quote and PCS collateral, an MAA token) goes
through the verifier of real Azure CVMs, under roots made per deployment, refused unless trusted."""

from __future__ import annotations

import copy
import json

import pytest

from veil.attest import api, registry
from veil.attest.api import Binding, VerifyOptions
from veil.attest.azure.skr import evaluate as skr_holds
from veil.attest.sim.azure import MAA_TYPES, PLATFORMS, SIM_MAA_ISSUER, SimAzureCvm, sim_release_policy, sim_reference
from veil.attest.trust import TrustRoots
from veil.coordinator.release import evaluate as release
from veil.errors import VeilError

REPORT_DATA = bytes(range(64))


@pytest.fixture(scope="module", params=sorted(PLATFORMS))
def attester(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    return registry.attester(request.param, registry.AttesterConfig(sim_dir=tmp_path_factory.mktemp(request.param)))


@pytest.fixture(scope="module")
def cvm(attester) -> SimAzureCvm:  # type: ignore[no-untyped-def]
    return attester  # type: ignore[no-any-return]


def _ref(cvm: SimAzureCvm):  # type: ignore[no-untyped-def]
    return sim_reference(cvm.platform, cvm.measurement.hex())


def _options(cvm: SimAzureCvm, *roots: str, report_data: bytes = REPORT_DATA) -> VerifyOptions:
    return VerifyOptions(Binding.to(report_data), TrustRoots.production().with_simulation(*roots))


def _reason(fn) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(VeilError) as err:
        fn()
    return err.value.reason


def test_evidence_verifies_with_the_real_azure_verifier_and_says_simulated(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    evidence = attester.evidence(REPORT_DATA)
    assert evidence["platform"] == cvm.platform and json.loads(json.dumps(evidence)) == evidence
    ref = _ref(cvm)
    verified = api.appraise(evidence, [ref], _options(cvm, *cvm.simulation_roots))
    claims = verified.claims
    assert claims.platform == cvm.platform and claims.simulated
    assert claims.measurement == cvm.measurement.hex()
    assert claims.details["hardware_platform"] == f"sim-{cvm.kind}" and claims.details["user_data_bound"]
    assert claims.details["maa"]["issuer"] == SIM_MAA_ISSUER
    names = [c.name for c in verified.checks]
    for step in ("HCL binding", "TPM quote", "binding", "MAA token", "MAA policy"):
        assert step in names, names
    assert any(n.startswith("hardware: ") and "CRL" in n for n in names), names  # the hardware's own checks
    # the model key's release policy (Azure's SKR grammar, over the verified MAA claims) holds
    assert release(sim_release_policy(cvm.platform, cvm.measurement.hex()), claims) == (True, "ok")


def test_refused_unless_both_simulation_roots_are_trusted(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    evidence = attester.evidence(REPORT_DATA)
    ref = _ref(cvm)
    chip_root, maa_root = cvm.simulation_roots
    assert _reason(lambda: api.appraise(evidence, [ref], _options(cvm))).startswith(f"{cvm.kind}.")
    assert _reason(lambda: api.appraise(evidence, [ref], _options(cvm, chip_root))) == "azure.maa_untrusted_root"
    # the MAA root alone does not make the simulated hardware trusted
    assert _reason(lambda: api.appraise(evidence, [ref], _options(cvm, maa_root))).startswith(f"{cvm.kind}.")


def test_bound_to_the_verifier_nonce(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    evidence = attester.evidence(REPORT_DATA)
    ref = _ref(cvm)
    other = _options(cvm, *cvm.simulation_roots, report_data=bytes(64))
    assert _reason(lambda: api.appraise(evidence, [ref], other)) == "azure.nonce_mismatch"


def test_the_key_is_not_released_when_the_token_is_missing_or_the_skr_policy_unmet(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    evidence = attester.evidence(REPORT_DATA)
    ref = _ref(cvm)
    no_token = {k: v for k, v in evidence.items() if k != "maa"}
    assert _reason(lambda: api.appraise(no_token, [ref], _options(cvm, *cvm.simulation_roots))) == "azure.maa_required"
    claims = api.appraise(evidence, [ref], _options(cvm, *cvm.simulation_roots)).claims
    policy = sim_release_policy(cvm.platform, cvm.measurement.hex())
    assert policy.skr is not None
    other_kind = copy.deepcopy(policy.skr)
    other_kind["anyOf"][0]["allOf"][0]["equals"] = next(t for t in MAA_TYPES.values() if t != MAA_TYPES[cvm.kind])
    assert not skr_holds(other_kind, {SIM_MAA_ISSUER: claims.details["maa"]["claims"]})
    assert release(policy.model_copy(update={"skr": other_kind}), claims) == (False, "release.skr_not_satisfied")


def test_the_machine_persists(attester, cvm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    again = SimAzureCvm.load_or_create(cvm.platform, cvm.directory)
    assert again.simulation_roots == cvm.simulation_roots
    assert (cvm.directory / "azure.json").stat().st_mode & 0o077 == 0
    fresh = SimAzureCvm.load_or_create(cvm.platform, tmp_path / "other")
    assert set(fresh.simulation_roots).isdisjoint(cvm.simulation_roots)  # roots are per deployment


def test_a_worker_cvm_with_a_simulated_h100_binds_it(attester, cvm) -> None:  # type: ignore[no-untyped-def]
    """``veil up --platform sim-azure-* --sim-gpu``'s worker: the GPU evidence is bound through the
    HCL runtime claims' user-data and the TPM quote, as the CPU report_data on bare SEV-SNP."""
    from veil.attest import composite
    from veil.attest.evidence import appraise_worker_evidence
    from veil.attest.sim.gpu import SimGpu
    from veil.manifest import GpuReference

    gpu = SimGpu()
    challenge, key = b"c" * 32, b"k" * 32
    gpus = [gpu.evidence(composite.gpu_nonce(challenge, key))]
    evidence = {**attester.evidence(composite.worker_report_data(challenge, key, gpus)), "gpus": [g.to_json() for g in gpus]}
    ref = _ref(cvm).model_copy(update={"require_gpu": True, "gpu": GpuReference(allowed_rim_digests=gpu.rim_digests())})
    trust = TrustRoots.production().with_simulation(*cvm.simulation_roots, *gpu.simulation_roots)
    verified = appraise_worker_evidence(evidence, [ref], challenge=challenge, public_key=key, trust=trust)
    assert verified.claims.platform == cvm.platform and len(verified.claims.details["gpus"]) == 1
    swapped = {**evidence, "gpus": [gpu.evidence(composite.gpu_nonce(b"d" * 32, key)).to_json()]}
    assert (
        _reason(lambda: appraise_worker_evidence(swapped, [ref], challenge=challenge, public_key=key, trust=trust))
        == "azure.nonce_mismatch"
    )  # another GPU report


def test_veil_evidence_verify_names_the_twin_and_refuses_it_untrusted(attester, cvm, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import base64
    import subprocess
    import sys

    evidence = attester.evidence(REPORT_DATA)
    (tmp_path / "vtpm.json").write_text(json.dumps(evidence["vtpm"]))
    args = [
        "--platform",
        cvm.platform,
        "--evidence",
        str(tmp_path / "vtpm.json"),
        "--nonce",
        REPORT_DATA.hex(),
        "--cache",
        str(tmp_path / "cache"),
        "--json",
    ]
    if cvm.kind == "snp":
        (tmp_path / "chain.pem").write_bytes(base64.b64decode(evidence["chain"]))
        (tmp_path / "crl.der").write_bytes(base64.b64decode(evidence["crl"]))
        args += ["--chain", str(tmp_path / "chain.pem"), "--crl", str(tmp_path / "crl.der")]
    else:
        (tmp_path / "collateral.json").write_text(json.dumps(evidence["collateral"]))
        args += ["--collateral", str(tmp_path / "collateral.json")]

    def verify(*extra: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        out = subprocess.run(
            [sys.executable, "-m", "veil", "evidence", "verify", *args, *extra], capture_output=True, text=True, timeout=120
        )
        return out.returncode, json.loads(out.stdout)

    code, report = verify("--simulation-root", cvm.root_fingerprint)
    assert code == 0 and report["claims"]["platform"] == cvm.platform and report["claims"]["simulated"], report
    code, report = verify()
    assert code == 1 and report["reason"].startswith(f"{cvm.kind}."), report
