"""`veil up --platform sim-azure-snp|sim-azure-tdx` end to end: coordinator and worker run in
SIMULATED Azure confidential VMs (vTPM, HCL report, the SEV-SNP report or TD quote under the
paravisor, a token from a simulated MAA); the client verifies the coordinator's through the
verifier of real Azure CVMs, and the coordinator releases the model key to the worker only
after its evidence and MAA token verified and the key's Azure Key Vault SKR policy held."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from veil.localdeploy import LocalDeployment
from veil.testing import free_port

pytestmark = pytest.mark.slow
SANDBOX = os.environ.get("VEIL_TEST_SANDBOX", "bubblewrap")
HARDWARE = {"sim-azure-snp": "sim-snp", "sim-azure-tdx": "sim-tdx"}


@pytest.fixture(scope="module", params=sorted(HARDWARE))
def deployment(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    dep = LocalDeployment(tmp_path_factory.mktemp(request.param), coordinator_port=free_port(),
                          worker_port=free_port(), sandbox=SANDBOX, platform=request.param)
    dep.start()
    yield dep
    dep.stop()


def _veil(deployment, *args: str) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    env = {**os.environ, "VEIL_STATE_DIR": str(deployment.state_dir)}
    return subprocess.run([sys.executable, "-m", "veil", *args], env=env, capture_output=True, text=True, timeout=180)


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
