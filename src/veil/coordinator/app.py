"""The coordinator's HTTP API: attestation for clients, manifests for admins, key release for workers."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, Field

from veil import keyrelease
from veil.attest.attester import Attester
from veil.attest.binding import coordinator_report_data, worker_report_data
from veil.attest.evidence import verify_evidence
from veil.coordinator.nonces import NonceStore
from veil.coordinator.state import CoordinatorState, WorkerRecord
from veil.errors import ParseError, PolicyError, VeilError
from veil.httputil import BodyLimitMiddleware, error_response, veil_error_handler
from veil.manifest import SignedManifest

MAX_BODY = 1 << 20  # 1 MiB: manifests and evidence are small
OHTTP_KEYS_MEDIA_TYPE = "application/ohttp-keys"


class RegisterRequest(BaseModel):
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")  # X25519, raw hex
    evidence: dict[str, Any]


def _hex_nonce(nonce: str) -> bytes:
    try:
        raw = bytes.fromhex(nonce)
    except ValueError:
        raise ParseError("nonce.malformed", "nonce must be hex") from None
    if not 16 <= len(raw) <= 64:
        raise ParseError("nonce.malformed", "nonce must be 16 to 64 bytes")
    return raw


def create_app(state: CoordinatorState, attester: Attester, nonces: NonceStore | None = None) -> FastAPI:
    nonces = nonces or NonceStore()
    app = FastAPI(title="Veil coordinator", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY)
    app.add_exception_handler(VeilError, veil_error_handler)
    registry = CollectorRegistry()
    attestations = Counter("veil_attestations", "Evidence served to clients", registry=registry)
    registrations = Counter(
        "veil_worker_registrations", "Worker registrations", ["outcome"], registry=registry
    )

    def key_configs() -> bytes:
        return state.ohttp_keys.encode_configs()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "manifest": state.manifest is not None, "workers": len(state.workers)}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/.well-known/ohttp-gateway")
    def ohttp_keys() -> Response:
        return Response(key_configs(), media_type=OHTTP_KEYS_MEDIA_TYPE)

    @app.get("/v1/attestation")
    def attestation(nonce: str = Query(max_length=128)) -> dict[str, Any]:
        """Fresh evidence whose report_data binds the client's nonce, our key, manifest and key config."""
        raw_nonce = _hex_nonce(nonce)
        current = state.manifest
        manifest_digest = current.digest if current else b""
        configs = key_configs()
        public = keyrelease.public_bytes(state.hpke_key)
        report_data = coordinator_report_data(
            raw_nonce, public, manifest_digest, hashlib.sha256(configs).digest()
        )
        attestations.inc()
        return {
            "platform": attester.platform,
            "evidence": attester.evidence(report_data),
            "public_key": public.hex(),
            "key_configs": base64.b64encode(configs).decode(),
            "manifest": current.model_dump(mode="json") if current else None,
            "manifest_digest": manifest_digest.hex(),
        }

    @app.get("/v1/manifest")
    def get_manifest() -> dict[str, Any]:
        return state.require_manifest().model_dump(mode="json")

    @app.get("/v1/manifest/history")
    def get_history() -> list[dict[str, Any]]:
        return [entry.model_dump(mode="json") for entry in state.history]

    @app.post("/v1/manifest")
    async def set_manifest(request: Request) -> dict[str, Any]:
        entry = SignedManifest.parse(await request.body())
        index = state.append_manifest(entry)
        return {"index": index, "digest": entry.digest.hex()}

    @app.post("/v1/workers/challenge")
    def challenge() -> dict[str, Any]:
        return {"nonce": nonces.issue().hex(), "ttl_seconds": 60}

    @app.post("/v1/workers/register")
    def register(body: RegisterRequest) -> JSONResponse:
        """Verify a worker's evidence against the manifest; only then release the OHTTP keys."""
        try:
            manifest = state.require_manifest()
            nonce = bytes.fromhex(body.nonce)
            nonces.consume(nonce)
            public_key = bytes.fromhex(body.public_key)
            verdict = verify_evidence(
                body.evidence,
                manifest.manifest.workers,
                expected_report_data=worker_report_data(nonce, public_key),
                simulation_roots=manifest.manifest.trusted_simulation_roots,
            )
            if not verdict.accepted or verdict.claims is None:
                raise PolicyError(verdict.reason, f"worker refused: {verdict.message}")
        except VeilError as err:
            registrations.labels("refused").inc()
            return error_response(err)
        secrets = {
            "manifest_digest": manifest.digest.hex(),
            "ohttp_keys": keyrelease.export_ohttp_keys(state.ohttp_keys),
        }
        sealed = keyrelease.seal(
            public_key, json.dumps(secrets).encode(), keyrelease.WORKER_SECRETS_INFO, aad=nonce
        )
        worker_id = uuid.uuid4().hex
        claims = verdict.claims
        state.add_worker(
            WorkerRecord(worker_id, claims.platform, claims.measurement, claims.simulated, time.time())
        )
        registrations.labels("accepted").inc()
        return JSONResponse(
            {
                "worker_id": worker_id,
                "manifest_digest": manifest.digest.hex(),
                "sealed_secrets": base64.b64encode(sealed).decode(),
            }
        )

    @app.get("/v1/workers")
    def workers() -> list[dict[str, Any]]:
        return [vars(w) for w in state.workers.values()]

    return app
