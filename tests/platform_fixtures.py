"""A real coordinator process on a simulated platform, for the platform attack tests.

The attack tests play the untrusted host: it owns the simulated platform's directory (so it can
sign whatever a real chip would sign for the guest it launched), the collateral on disk, the launch
parameters and the network. The coordinator process, started here exactly as `veil up` starts it,
is what they attack; its refusals (HTTP body ``{"reason": ...}``) are what they assert.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil.manifest import Manifest, ModelEntry, ReferenceValues, public_key_hex, sign_manifest
from veil.testing import free_port


@dataclass
class CoordinatorProcess:
    url: str
    process: subprocess.Popen[bytes]
    sim_dir: Path
    admin: Ed25519PrivateKey
    log: Path
    workers: list[ReferenceValues] = field(default_factory=list)

    def set_manifest(self, workers: list[ReferenceValues], coordinator: list[ReferenceValues], roots: Iterable[str]) -> None:
        identity = httpx.get(f"{self.url}/v1/attestation", params={"nonce": "00" * 32}, timeout=30).json()["identity"]
        manifest = Manifest(
            coordinator=coordinator,
            workers=workers,
            models=[ModelEntry(name="m", sha256="00" * 32)],
            admin_keys=[public_key_hex(self.admin)],
            trusted_simulation_roots=list(roots),
            coordinator_identity=identity,
        )
        current = httpx.get(f"{self.url}/v1/manifest", timeout=30)
        previous = current.json() if current.status_code == 200 else None
        prev_digest = None
        if previous is not None:
            from veil.manifest import SignedManifest

            prev_digest = SignedManifest.parse(previous).digest.hex()
        signed = sign_manifest(manifest, [self.admin], prev_digest)
        resp = httpx.post(f"{self.url}/v1/manifest", content=signed.model_dump_json(), timeout=30)
        assert resp.status_code == 200, resp.text
        self.workers = workers

    def register(self, evidence_for: Any) -> httpx.Response:
        """Register as a worker: ``evidence_for(nonce, public_key) -> evidence dict`` (the host's forgery)."""
        nonce = bytes.fromhex(httpx.post(f"{self.url}/v1/workers/challenge", timeout=30).json()["nonce"])
        public_key = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        evidence = evidence_for(nonce, public_key)
        return httpx.post(
            f"{self.url}/v1/workers/register",
            json={
                "nonce": nonce.hex(),
                "public_key": public_key.hex(),
                "evidence": evidence,
            },
            timeout=60,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_coordinator(platform: str, sim_dir: Path, work: Path, *extra: str) -> CoordinatorProcess:
    """``veil coordinator --platform <platform> --sim-dir <sim_dir>`` on a free loopback port, launched
    with a fresh admin key as its bootstrap key (HOST_DATA) unless ``extra`` sets the launch data."""
    port = free_port()
    admin = Ed25519PrivateKey.generate()
    if "--sim-launch-data" not in extra:
        extra = (*extra, "--sim-launch-data", public_key_hex(admin))
    log = work / f"coordinator-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "veil",
                "coordinator",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--platform",
                platform,
                "--sim-dir",
                str(sim_dir),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"coordinator exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return CoordinatorProcess(url, process, sim_dir, admin, log)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("coordinator did not come up")


def reason(response: httpx.Response) -> str:
    """The reason code of a refusal (Veil's error body), or "ok"."""
    from veil.wire import error_of

    return "ok" if response.status_code == 200 else error_of(response)[0]
