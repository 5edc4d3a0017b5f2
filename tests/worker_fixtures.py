"""A real worker process (the bundled model, sandboxed) registered with a real coordinator, with a
relay in between that the test — playing the host — can turn hostile. For the worker lifecycle
attack tests (tests/attacks/test_worker_*.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.responses import Response

from veil.attest.attester import SimSnpAttester
from veil.attest.sim import SimPlatform
from veil.client.transport import OhttpTransport
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.engines.models import default_model_path, sha256_file
from veil.manifest import Manifest, ModelEntry, ReferenceValues, SandboxSettings, SignedManifest, public_key_hex, sign_manifest
from veil.ohttp.keyconfig import decode_key_config_list
from veil.testing import ServerThread, free_port

MODEL_NAME = "smollm2-135m-instruct"


class HostileRelay:
    """Forwards to the coordinator until ``mode`` says otherwise: "garbage" answers 200 with JSON
    the worker cannot use, "down" answers 502 — what a host owning the network can do."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.mode = "pass"
        self.seen = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        self.seen += 1
        if self.mode == "garbage":
            body = b'{"nonce": "not hex", "worker_id": 7, "sealed_secrets": "!!"}'
            response = Response(body, media_type="application/json")
        elif self.mode == "down":
            response = Response(b"", status_code=502)
        else:
            async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as http:
                r = await http.request(
                    request.method,
                    request.url.path,
                    params=request.query_params,
                    content=await request.body(),
                    headers={"content-type": request.headers.get("content-type", "")},
                )
            response = Response(r.content, status_code=r.status_code, media_type=r.headers.get("content-type"))
        await response(scope, receive, send)


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class WorkerStack:
    """Coordinator (in-process, real HTTP), hostile relay, and one ``veil worker`` process."""

    def __init__(self, tmp: Path, *, interval: float = 1.0, gateway_processes: int = 1, **manifest_fields: Any) -> None:
        self.sim = SimPlatform.create(tmp / "sim")
        self.admin = Ed25519PrivateKey.generate()  # also the bootstrap key both VMs are launched with
        self.attester = SimSnpAttester(self.sim.directory, host_data=bytes.fromhex(public_key_hex(self.admin)))
        state = CoordinatorState.generate(bootstrap_key=public_key_hex(self.admin))
        refs = [ReferenceValues(platform="sim-snp", measurements=[self.attester.measurement.hex()])]
        model = default_model_path()
        self.manifest = Manifest(
            coordinator=refs,
            workers=refs,
            admin_keys=[public_key_hex(self.admin)],
            coordinator_identity=state.identity,
            models=[ModelEntry(name=MODEL_NAME, sha256=sha256_file(model))],
            sandbox=SandboxSettings(profile="bubblewrap"),
            trusted_simulation_roots=[self.sim.root_fingerprint],
            **manifest_fields,
        )
        self.coordinator = ServerThread(create_app(state, self.attester))
        self.signed: SignedManifest | None = None
        self.publish(self.manifest)
        self.relay = HostileRelay(self.coordinator.url)
        self.relay_server = ServerThread(self.relay)
        self.port = free_port()
        self.gateway = f"http://127.0.0.1:{self.port}"
        self.interval = interval
        self.log_path = tmp / "worker.log"
        self._log = open(self.log_path, "wb")
        self.worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veil",
                "worker",
                "--coordinator",
                self.relay_server.url,
                "--port",
                str(self.port),
                "--sim-dir",
                str(self.sim.directory),
                "--run-dir",
                str(tmp / "run"),
                "--model",
                str(model),
                "--reregister-seconds",
                str(interval),
                "--gateway-processes",
                str(gateway_processes),
                "--sim-launch-data",
                public_key_hex(self.admin),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self._up, 180, "the worker to serve")

    def _up(self) -> bool:
        assert self.worker.poll() is None, self.output()
        try:
            return httpx.get(f"{self.gateway}/.well-known/ohttp-gateway", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def publish(self, manifest: Manifest) -> None:
        """Sign ``manifest`` as the next entry of the history and set it on the coordinator."""
        self.signed = sign_manifest(manifest, [self.admin], self.signed.digest.hex() if self.signed else None)
        self.manifest = manifest
        httpx.post(f"{self.coordinator.url}/v1/manifest", content=self.signed.model_dump_json()).raise_for_status()

    def client(self) -> httpx.Client:
        """Veil's transport to the worker, with the key configuration it serves now."""
        config = decode_key_config_list(httpx.get(f"{self.gateway}/.well-known/ohttp-gateway").content)[0]
        return httpx.Client(transport=OhttpTransport(config, self.gateway), base_url=self.gateway, timeout=60)

    def stop(self) -> None:
        if self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self._log.close()
        self.relay_server.stop()
        self.coordinator.stop()
