"""Worker registration with composite evidence: the CPU report binds the GPUs' SPDM reports, each
signed over a nonce derived from the same challenge and worker key."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from deployment_fixtures import launched_attester, make_manifest
from veil import admin
from veil.attest import composite
from veil.client.policy import ClientPolicy
from veil.attest.nvidia.testing import FakeGpu
from veil.attest.sim import SimPlatform
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.manifest import GpuReference, ModelEntry, ReferenceValues, ReleasePolicy, public_key_hex, sign_manifest
from veil.worker.registration import RegistrationRefused, register


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    SimPlatform.create(d)
    return d


@pytest.fixture(scope="module")
def gpu():
    return FakeGpu()


def coordinator(sim_dir, gpu, *, require_gpu: bool, gpu_reference: GpuReference | None = GpuReference()):
    admin = Ed25519PrivateKey.generate()
    attester = launched_attester(sim_dir, admin)  # worker and coordinator: the same bootstrap key
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(admin))
    http = TestClient(create_app(state, attester), base_url="http://coord")
    m = make_manifest(sim_dir, admin, attester.measurement.hex(), coordinator_identity=state.identity)
    refs = [
        ReferenceValues(platform="sim-snp", measurements=[attester.measurement.hex()], require_gpu=require_gpu, gpu=gpu_reference)
    ]
    m = m.model_copy(
        update={
            "workers": refs,
            "models": [ModelEntry(name="m", sha256="11" * 32, key_id="k")],
            "trusted_simulation_roots": [*m.trusted_simulation_roots, *gpu.simulation_roots],
            "release_policies": {"k": ReleasePolicy(allow_simulated=True, require_gpu=True)},
        }
    )
    assert http.post("/v1/manifest", content=sign_manifest(m, [admin], None).model_dump_json()).status_code == 200
    state.put_secret("k", b"\x01" * 32, admin_key="test")
    http.admin = admin  # type: ignore[attr-defined]
    return http, attester


def collector(gpu, *, tamper_nonce: bool = False):
    def collect(challenge: bytes, public_key: bytes):
        nonce = composite.gpu_nonce(challenge, public_key)
        return [gpu.evidence(bytes(32) if tamper_nonce else nonce)]

    return collect


def test_worker_with_gpu_is_admitted_and_claims_show_it(sim_dir, gpu) -> None:
    http, attester = coordinator(sim_dir, gpu, require_gpu=True)
    released = register("http://coord", attester, http, collector(gpu))
    assert released.ohttp_keys and released.data_keys == {"k": "01" * 32}
    policy = ClientPolicy(
        coordinator_url="http://coord",
        coordinator=released.manifest.manifest.coordinator,
        admin_keys=[public_key_hex(http.admin)],
        trust_simulated=True,
        simulation_roots=released.manifest.manifest.trusted_simulation_roots,
    )
    assert len(admin.list_workers(policy, http.admin, http=http)) == 1


def test_gpu_required_but_absent_is_refused(sim_dir, gpu) -> None:
    http, attester = coordinator(sim_dir, gpu, require_gpu=True)
    with pytest.raises(RegistrationRefused) as exc:
        register("http://coord", attester, http, None)
    assert exc.value.reason == "evidence.gpu_required"


def test_gpu_evidence_over_another_nonce_is_refused(sim_dir, gpu) -> None:
    http, attester = coordinator(sim_dir, gpu, require_gpu=True)
    with pytest.raises(RegistrationRefused) as exc:
        register("http://coord", attester, http, collector(gpu, tamper_nonce=True))
    assert exc.value.reason == "nvidia.nonce_mismatch"


def test_gpu_from_an_untrusted_root_is_refused(sim_dir, gpu) -> None:
    http, attester = coordinator(sim_dir, gpu, require_gpu=True)
    with pytest.raises(RegistrationRefused) as exc:
        register("http://coord", attester, http, collector(FakeGpu()))
    assert exc.value.reason == "nvidia.untrusted_root"


def test_gpu_evidence_swapped_after_binding_is_refused(sim_dir, gpu) -> None:
    """A host that swaps the GPU evidence after the CPU report was made breaks the binding."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from veil import keyrelease

    http, attester = coordinator(sim_dir, gpu, require_gpu=True)
    pub = keyrelease.public_bytes(X25519PrivateKey.generate())
    nonce = bytes.fromhex(http.post("/v1/workers/challenge").json()["nonce"])
    bound = [gpu.evidence(composite.gpu_nonce(nonce, pub))]
    ev = attester.evidence(composite.worker_report_data(nonce, pub, bound))
    ev["gpus"] = [FakeGpu().evidence(composite.gpu_nonce(nonce, pub)).to_json()]
    resp = http.post("/v1/workers/register", json={"nonce": nonce.hex(), "public_key": pub.hex(), "evidence": ev})
    assert resp.status_code == 403
    assert resp.json()["error"]["reason"] == "binding.report_data_mismatch"


def test_release_policy_requiring_gpu(sim_dir, gpu) -> None:
    http, attester = coordinator(sim_dir, gpu, require_gpu=False)
    assert register("http://coord", attester, http, None).data_keys == {}  # no GPU: key withheld
    assert register("http://coord", attester, http, collector(gpu)).data_keys == {"k": "01" * 32}


def test_gpu_evidence_without_gpu_reference_values_is_refused(sim_dir, gpu) -> None:
    """Fail closed: GPU evidence the manifest gives no reference values for is not judged 'fine'."""
    http, attester = coordinator(sim_dir, gpu, require_gpu=False, gpu_reference=None)
    with pytest.raises(RegistrationRefused) as exc:
        register("http://coord", attester, http, collector(gpu))
    assert exc.value.reason == "evidence.gpu_reference_missing"


def test_gpu_without_rims_is_refused(sim_dir, gpu) -> None:
    http, attester = coordinator(sim_dir, gpu, require_gpu=True)

    def bare(challenge: bytes, public_key: bytes):
        return [gpu.evidence(composite.gpu_nonce(challenge, public_key), with_collateral=False)]

    with pytest.raises(RegistrationRefused) as exc:
        register("http://coord", attester, http, bare)
    assert exc.value.reason == "nvidia.rim_missing"
