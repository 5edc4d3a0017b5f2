"""`veil up --sim-gpu` end to end: every worker's CPU report binds a SIMULATED H100 (SPDM report,
chain, signed RIMs, OCSP statuses); the coordinator verifies it against the manifest's GPU
reference values before it releases the model key, and `veil verify` / `veil chat` work on top."""

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


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):  # type: ignore[no-untyped-def]
    dep = LocalDeployment(
        tmp_path_factory.mktemp("veil-sim-gpu"),
        coordinator_port=free_port(),
        worker_port=free_port(),
        sandbox=SANDBOX,
        sim_gpu=True,
    )
    dep.start()
    yield dep
    dep.stop()


def test_verify_and_chat_with_a_simulated_gpu(deployment) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "VEIL_STATE_DIR": str(deployment.state_dir)}
    out = subprocess.run([sys.executable, "-m", "veil", "verify", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["verdict"] == "accept" and report["simulated"] is True
    worker = report["workers"][0]
    assert worker["require_gpu"] is True and len(worker["gpu"]["allowed_rim_digests"]) == 2
    chat = subprocess.run(
        [sys.executable, "-m", "veil", "chat", "--max-tokens", "8", "hello"], env=env, capture_output=True, text=True, timeout=120
    )
    assert chat.returncode == 0, chat.stderr  # the model key was released: the GPU verified
