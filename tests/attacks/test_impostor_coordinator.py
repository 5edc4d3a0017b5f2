"""Attack: a worker is pointed at a coordinator the host runs itself (issue 9.8).

The attacker controls the host and the network: it starts Veil's genuine coordinator code on the
same (simulated) chip, with a fresh state of its own and its own bootstrap key, sets a first
manifest that admits the worker, and points the worker at it — hoping the worker takes its keys,
manifest and sandbox settings. The worker authenticates the coordinator before registering: the
manifest history must be rooted in the bootstrap admin key of the *worker's* launch data. Refused
with ``manifest.not_bootstrap_signed``; the worker exits without registering or serving.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from attacks.coordproc import CoordinatorProcess, Deployment
from veil.manifest import public_key_hex, sign_manifest
from veil.testing import free_port


def test_worker_refuses_a_coordinator_not_rooted_in_its_launch_data(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    host_key = Ed25519PrivateKey.generate()
    with CoordinatorProcess(tmp_path, dep.sim_dir, host_key) as impostor:
        identity = impostor.attestation()["identity"]
        manifest = dep.manifest(identity).model_copy(update={"admin_keys": [public_key_hex(host_key)]})
        signed = sign_manifest(manifest, [host_key], None)
        httpx.post(f"{impostor.url}/v1/manifest", content=signed.model_dump_json()).raise_for_status()
        worker = subprocess.run(
            [
                sys.executable,
                "-m",
                "veil",
                "worker",
                "--coordinator",
                impostor.url,
                "--port",
                str(free_port()),
                "--sim-dir",
                str(dep.sim_dir),
                "--run-dir",
                str(tmp_path / "run"),
                "--sim-launch-data",
                public_key_hex(dep.admin),
            ],  # the worker's VM was launched for the admins
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert worker.returncode == 1, worker.stdout + worker.stderr
        assert "manifest.not_bootstrap_signed" in worker.stderr, worker.stderr
        metrics = httpx.get(f"{impostor.url}/metrics").text
        assert 'veil_worker_registrations_total{outcome="accepted"}' not in metrics  # it never registered
