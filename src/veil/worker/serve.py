"""Run a worker: attest and register, fetch the manifest it was admitted under, start the
sandboxed engine on a Unix socket, and serve the OHTTP gateway in front of it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from veil.attest.attester import Attester
from veil.errors import PolicyError, VerificationError
from veil.manifest import ModelEntry, SignedManifest
from veil import keyrelease
from veil.worker.registration import register

log = logging.getLogger("veil.worker")


@dataclass(frozen=True)
class WorkerConfig:
    coordinator_url: str
    host: str
    port: int
    model_path: Path
    run_dir: Path  # holds the engine's Unix socket
    allow_unsandboxed: bool = False  # dev only: permits a manifest whose sandbox profile is "none"


def fetch_manifest(http: httpx.Client, coordinator_url: str, digest: str) -> SignedManifest:
    """The manifest we were admitted under; its digest came sealed with our secrets."""
    resp = http.get(f"{coordinator_url}/v1/manifest")
    resp.raise_for_status()
    manifest = SignedManifest.parse(resp.content)
    if manifest.digest.hex() != digest:
        raise VerificationError("manifest.digest_mismatch", "coordinator's manifest changed during registration")
    return manifest


def model_entry_for(manifest: SignedManifest, model_path: Path) -> ModelEntry:
    """The manifest entry whose digest matches our weights; serving anything else is refused."""
    from veil.engines.models import sha256_file

    digest = sha256_file(model_path)
    for entry in manifest.manifest.models:
        if entry.sha256 == digest:
            return entry
    raise PolicyError("model.not_in_manifest", f"model {model_path.name} (sha256 {digest[:16]}…) is not in the manifest")


def sandbox_wrapper(manifest: SignedManifest, config: WorkerConfig) -> list[str]:
    """The argv prefix that enforces the manifest's sandbox profile, or a refusal.

    There is no fallback: a profile this machine cannot enforce stops the worker
    (``sandbox.unavailable``), and "none" needs the worker's explicit development flag.
    """
    from veil.sandbox import SandboxProfile, sandbox_prefix

    settings = manifest.manifest.sandbox
    if settings.profile == "none" and not config.allow_unsandboxed:
        raise PolicyError(
            "sandbox.unsandboxed_refused",
            "the manifest asks for no sandbox; start the worker with --allow-unsandboxed (development only)",
        )
    profile = SandboxProfile(
        name=settings.profile, allow_gpu=settings.allow_gpu, dev_unsandboxed=settings.profile == "none"
    )
    return sandbox_prefix(profile, socket_dir=str(config.run_dir), ro_binds=[str(config.model_path)])


def run_worker(config: WorkerConfig, attester: Attester) -> None:
    from veil.engines.launcher import EngineProcess, engine_transport
    from veil.worker.gateway import create_gateway_app

    with httpx.Client(timeout=30) as http:
        secrets = register(config.coordinator_url, attester, http)
        manifest = fetch_manifest(http, config.coordinator_url, secrets.manifest_digest)
    entry = model_entry_for(manifest, config.model_path)
    keys = keyrelease.import_ohttp_keys(secrets.ohttp_keys)
    config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    wrapper = sandbox_wrapper(manifest, config)
    log.warning(
        "worker %s admitted; starting engine for %s (sandbox: %s)",
        secrets.worker_id, entry.name, manifest.manifest.sandbox.profile,
    )
    engine = EngineProcess(
        config.run_dir / "engine.sock", config.model_path, wrapper=wrapper, model_id=entry.name,
        log_path=config.run_dir / "engine.log",
    )
    with engine:
        upstream = httpx.AsyncClient(
            transport=engine_transport(engine.socket_path), base_url="http://engine",
            timeout=httpx.Timeout(300.0, connect=5.0),
        )
        app = create_gateway_app(keys, upstream)
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
