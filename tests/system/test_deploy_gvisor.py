"""A whole deployment with the gVisor profile: sealed weights reach the engine inside runsc
(as its stdin memfd) and an encrypted chat works end to end."""

from __future__ import annotations

import pytest

from veil.client.sdk import Client
from veil.errors import VeilError
from veil.localdeploy import LocalDeployment
from veil.sandbox import SandboxProfile, check_enforceable
from veil.testing import free_port

pytestmark = pytest.mark.slow


def test_gvisor_deployment_serves_sealed_model(tmp_path) -> None:
    try:
        check_enforceable(SandboxProfile(name="gvisor"))
    except VeilError as err:
        pytest.skip(f"gVisor unavailable here: {err.message}")
    dep = LocalDeployment(tmp_path / "state", coordinator_port=free_port(), worker_port=free_port(), sandbox="gvisor")
    dep.start()
    try:
        with Client(dep.policy_path) as client:
            assert client.attestation.manifest.manifest.sandbox.profile == "gvisor"
            resp = client.chat.completions.create(
                model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hi"}], max_tokens=8
            )
            assert resp.choices[0].message.content
    finally:
        dep.stop()
