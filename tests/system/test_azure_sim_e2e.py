"""`veil up --platform sim-azure-snp|sim-azure-tdx` end to end: coordinator and worker run in
SIMULATED Azure confidential VMs (vTPM, HCL report, the SEV-SNP report or TD quote under the
paravisor, a token from a simulated MAA); the client verifies the coordinator's through the
verifier of real Azure CVMs, and the coordinator releases the model key to the worker only
after its evidence and MAA token verified and the key's Azure Key Vault SKR policy held. The last
test changes that policy so the worker's CVM no longer meets it: the coordinator process refuses
the key on the worker's next re-attestation (``release.skr_not_satisfied``, audited)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from veil import admin, wire
from veil.attest.sim.azure import MAA_TYPES, PLATFORMS
from veil.client.policy import ClientPolicy
from veil.localdeploy import DATA_KEY_ID, LocalDeployment
from veil.manifest import SignedManifest, sign_manifest
from veil.testing import free_port

pytestmark = pytest.mark.slow
SANDBOX = os.environ.get("VEIL_TEST_SANDBOX", "bubblewrap")
HARDWARE = {"sim-azure-snp": "sim-snp", "sim-azure-tdx": "sim-tdx"}


@pytest.fixture(scope="module", params=sorted(HARDWARE))
def deployment(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    dep = LocalDeployment(
        tmp_path_factory.mktemp(request.param),
        coordinator_port=free_port(),
        worker_port=free_port(),
        sandbox=SANDBOX,
        platform=request.param,
        reregister_seconds=2,
    )
    dep.start()
    yield dep
    dep.stop()


def _veil(deployment, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "VEIL_STATE_DIR": str(deployment.state_dir)}
    return subprocess.run([sys.executable, "-m", "veil", *args], env=env, capture_output=True, text=True, timeout=180)


def _audit(deployment, after: int = 0) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    """The audit log as `veil audit` reads it: signed by the deployment's admin key, chain checked."""
    key = admin.load_or_create_admin_key(deployment.state_dir / "admin.key")
    return admin.audit(ClientPolicy.load(deployment.policy_path), key, after)


def test_verify_names_the_azure_twin_and_its_maa_token(deployment) -> None:  # type: ignore[no-untyped-def]
    out = _veil(deployment, "verify", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == "accept" and report["simulated"] is True
    claims = report["claims"]
    assert claims["platform"] == deployment.platform
    assert claims["details"]["hardware_platform"] == HARDWARE[deployment.platform]
    assert claims["details"]["maa"]["issuer"].startswith("https://sim-azure.")
    steps = " | ".join(str(step) for step in report["checks"])
    for step in ("TPM quote", "HCL binding", "MAA token", "MAA policy"):
        assert step in steps, steps
    worker = report["workers"][0]
    assert worker["platform"] == deployment.platform and worker["azure"]["maa"]["issuers"]


def test_chat_answers_after_the_skr_policy_released_the_key(deployment) -> None:  # type: ignore[no-untyped-def]
    report = json.loads(_veil(deployment, "verify", "--json").stdout)
    policies = report["manifest"]["manifest"]["release_policies"]
    skr = next(iter(policies.values()))["skr"]  # the attested manifest carries the key's SKR policy
    assert skr["anyOf"][0]["authority"] == report["claims"]["details"]["maa"]["issuer"]
    chat = _veil(deployment, "chat", "--max-tokens", "8", "hello")
    assert chat.returncode == 0, chat.stderr  # the worker got the model key: its MAA claims met the SKR policy
    assert "SIMULATED" in chat.stdout + chat.stderr
    released = [r for r in _audit(deployment) if r["event"] == "secret.release"]
    assert released and all(r["decision"] == "released" and r["reason"] == "ok" for r in released)


def test_zz_a_worker_whose_cvm_no_longer_meets_the_skr_policy_gets_no_key(deployment) -> None:  # type: ignore[no-untyped-def]
    """Real processes: the admins require the other TEE kind; the worker keeps re-attesting."""
    url = deployment.coordinator_url
    head = SignedManifest.parse(httpx.get(f"{url}{wire.MANIFEST_PATH}", timeout=30).content)
    policies = copy.deepcopy(head.manifest.release_policies)
    other = next(t for t in MAA_TYPES.values() if t != MAA_TYPES[PLATFORMS[deployment.platform]])
    skr = copy.deepcopy(policies[DATA_KEY_ID].skr)
    skr["anyOf"][0]["allOf"][0]["equals"] = other
    policies[DATA_KEY_ID] = policies[DATA_KEY_ID].model_copy(update={"skr": skr})
    key = admin.load_or_create_admin_key(deployment.state_dir / "admin.key")
    manifest = head.manifest.model_copy(update={"release_policies": policies})
    after = max(r["seq"] for r in _audit(deployment))
    admin.publish_manifest(url, sign_manifest(manifest, [key], head.digest.hex()))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        refused = [r for r in _audit(deployment, after) if r["event"] == "secret.release" and r["decision"] == "refused"]
        if refused:
            break
        time.sleep(0.5)
    assert refused and refused[0]["reason"] == "release.skr_not_satisfied", _audit(deployment, after)
