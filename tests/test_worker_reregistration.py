"""A running worker re-attests on an interval: a newer manifest (a tenant added) takes effect
without a restart, and a manifest that no longer admits the worker makes it stop serving."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.attest.attester import SimSnpAttester
from veil.attest.sim import SimPlatform
from veil.client.transport import OhttpTransport
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.engines.models import default_model_path, sha256_file
from veil.manifest import Manifest, ModelEntry, ReferenceValues, SandboxSettings, public_key_hex, sign_manifest
from veil.ohttp.keyconfig import decode_key_config_list
from veil.testing import ServerThread, free_port
from veil.admin import add_tenant

pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_manifest_changes_reach_a_running_worker(tmp_path) -> None:
    sim = SimPlatform.create(tmp_path / "sim")
    attester = SimSnpAttester(sim.directory)
    admin = Ed25519PrivateKey.generate()
    refs = [ReferenceValues(platform="sim-snp", measurements=[attester.measurement.hex()])]
    model = default_model_path()
    manifest = Manifest(
        coordinator=refs, workers=refs, admin_keys=[public_key_hex(admin)],
        models=[ModelEntry(name="smollm2-135m-instruct", sha256=sha256_file(model))],
        sandbox=SandboxSettings(profile="bubblewrap"), trusted_simulation_roots=[sim.root_fingerprint],
    )
    first = sign_manifest(manifest, [admin], None)
    with ServerThread(create_app(CoordinatorState.generate(), attester)) as coord:
        httpx.post(f"{coord.url}/v1/manifest", content=first.model_dump_json()).raise_for_status()
        port = free_port()
        gateway = f"http://127.0.0.1:{port}"
        worker = subprocess.Popen(
            [sys.executable, "-m", "veil", "worker", "--coordinator", coord.url, "--port", str(port),
             "--sim-dir", str(sim.directory), "--run-dir", str(tmp_path / "run"), "--model", str(model),
             "--reregister-seconds", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            def up() -> bool:
                assert worker.poll() is None, worker.stdout.read().decode(errors="replace")
                try:
                    return httpx.get(f"{gateway}/.well-known/ohttp-gateway", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            _wait(up, 120, "the worker")
            config = decode_key_config_list(httpx.get(f"{gateway}/.well-known/ohttp-gateway").content)[0]
            http = httpx.Client(transport=OhttpTransport(config, gateway), base_url=gateway)
            assert http.get("/v1/models").status_code == 200  # no tenants: no key needed
            assert len(httpx.get(f"{coord.url}/v1/workers").json()) == 1

            api_key, _, with_tenant = add_tenant(manifest, "acme", 60)
            second = sign_manifest(with_tenant, [admin], first.digest.hex())
            httpx.post(f"{coord.url}/v1/manifest", content=second.model_dump_json()).raise_for_status()
            _wait(lambda: http.get("/v1/models").status_code == 401, 20, "the tenant to be enforced")
            ok = http.get("/v1/models", headers={"Authorization": f"Bearer {api_key}"})
            assert ok.status_code == 200
            workers = httpx.get(f"{coord.url}/v1/workers").json()
            assert len(workers) == 1 and workers[0]["last_seen"] > workers[0]["registered_at"]  # same record

            # the admins stop admitting this code: the worker stops serving (fail closed)
            other = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
            third = sign_manifest(with_tenant.model_copy(update={"workers": other}), [admin], second.digest.hex())
            httpx.post(f"{coord.url}/v1/manifest", content=third.model_dump_json()).raise_for_status()
            worker.wait(timeout=30)
            out = worker.stdout.read().decode(errors="replace")
            assert "snp.measurement_mismatch" in out
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
