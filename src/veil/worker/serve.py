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


def run_worker(config: WorkerConfig, attester: Attester) -> None:
    from veil.engines.launcher import EngineProcess, engine_client
    from veil.sandbox import sandbox_wrapper
    from veil.worker.gateway import create_gateway_app

    with httpx.Client(timeout=30) as http:
        secrets = register(config.coordinator_url, attester, http)
        manifest = fetch_manifest(http, config.coordinator_url, secrets.manifest_digest)
    entry = model_entry_for(manifest, config.model_path)
    keys = keyrelease.import_ohttp_keys(secrets.ohttp_keys)
    profile = manifest.manifest.sandbox
    config.run_dir.mkdir(parents=True, exist_ok=True)
    wrapper = sandbox_wrapper(
        profile.profile,
        allow_gpu=profile.allow_gpu,
        socket_dir=config.run_dir,
        ro_paths=[config.model_path.parent],
        allow_none=config.allow_unsandboxed,
    )
    log.warning("worker %s admitted; starting engine for %s (sandbox: %s)", secrets.worker_id, entry.name, profile.profile)
    with EngineProcess(config.model_path, socket_dir=config.run_dir, wrapper=wrapper, model_name=entry.name) as engine:
        upstream = engine_client(engine.socket_path)
        app = create_gateway_app(keys, upstream)
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
