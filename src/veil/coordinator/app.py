"""The coordinator's HTTP API: attestation for clients, manifests for admins, key release for workers."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from pydantic import BaseModel, Field

from veil import keyrelease, wire
from veil.attest.attester import Attester
from veil.attest.evidence import appraise_worker_evidence, trust_for
from veil.coordinator import release
from veil.coordinator.batching import AttestationBatcher, Bound
from veil.coordinator.nonces import NonceStore
from veil.coordinator.state import CoordinatorState, WorkerRecord
from veil.errors import ParseError, VeilError, VerificationError
from veil.httputil import BodyLimitMiddleware, error_response, veil_error_handler
from veil.manifest import SignedManifest, sandbox_binding

MAX_BODY = 1 << 20  # 1 MiB: manifests and evidence are small


class SecretUpload(BaseModel):
    key_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    sealed: str = Field(max_length=65536)  # base64: HPKE to the attested coordinator key
    admin_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")


class RecoverRequest(BaseModel):
    sealed_state_key: str = Field(max_length=4096)  # base64: HPKE to this coordinator's attested key


class RegisterRequest(BaseModel):
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")  # X25519, raw hex
    evidence: dict[str, Any]
    worker_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")  # a re-registration keeps its id


def _b64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ParseError("request.bad_base64", "a field is not valid base64") from None


def _hex_nonce(nonce: str) -> bytes:
    try:
        raw = bytes.fromhex(nonce)
    except ValueError:
        raise ParseError("nonce.malformed", "nonce must be hex") from None
    if not 16 <= len(raw) <= 64:
        raise ParseError("nonce.malformed", "nonce must be 16 to 64 bytes")
    return raw


def create_app(state: CoordinatorState, attester: Attester, nonces: NonceStore | None = None,
               *, attestation_batching: bool = True) -> FastAPI:
    """``attestation_batching``: one report for all clients that ask while one is being made
    (coordinator/batching.py); False makes one report per client (the bench's baseline)."""
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

    @app.get(wire.HEALTH_PATH)
    def health() -> dict[str, Any]:
        return {"status": "ok", "manifest": state.manifest is not None, "workers": len(state.workers)}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(wire.GATEWAY_PATH)
    def ohttp_keys() -> Response:
        return Response(key_configs(), media_type=wire.MEDIA_TYPE_KEYS)

    def bound_now() -> Bound:
        """What the next report binds; runs in the report's thread (refresh reads the database)."""
        state.refresh()  # HA: a peer coordinator on the same database may have set a newer manifest
        return Bound(keyrelease.public_bytes(state.hpke_key), state.manifest, key_configs())

    batcher = AttestationBatcher(attester, bound_now, batching=attestation_batching)

    @app.get(wire.ATTESTATION_PATH)
    async def attestation(nonce: str = Query(max_length=128)) -> Response:
        """Fresh evidence whose report_data binds the client's nonce (directly, or as a leaf of the
        batch's nonce tree with the client's inclusion path), our key, manifest and key config."""
        got = await batcher.attest(_hex_nonce(nonce))
        attestations.inc()
        # the evidence, key and manifest were encoded once for the whole batch
        return Response(got.body(locked=state.locked), media_type="application/json")

    @app.post(wire.SECRETS_PATH)
    def put_secret(body: SecretUpload) -> dict[str, Any]:
        """Store a secret an admin of the current manifest sealed to our attested key."""
        manifest = state.require_manifest()
        if body.admin_key not in manifest.manifest.admin_keys:
            raise VerificationError("secret.not_admin", "the uploading key is not an admin of the current manifest")
        sealed = _b64(body.sealed)
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(body.admin_key)).verify(
                bytes.fromhex(body.signature), keyrelease.secret_upload_message(body.key_id, sealed)
            )
        except InvalidSignature:
            raise VerificationError("secret.bad_signature", "the admin signature over the upload does not verify") from None
        value = keyrelease.open_sealed(state.hpke_key, sealed, wire.ADMIN_SECRET_INFO, aad=body.key_id.encode())
        state.put_secret(body.key_id, value, body.admin_key)
        return {"key_id": body.key_id, "stored": True}

    @app.get(wire.SECRETS_PATH)
    def list_secrets() -> dict[str, Any]:
        state.require_unlocked()
        state.refresh()
        return {"key_ids": sorted(state.secrets)}

    @app.get(wire.AUDIT_PATH)
    def get_audit(after: int = Query(0, ge=0), limit: int = Query(1000, ge=1, le=10000)) -> list[dict[str, Any]]:
        if state.store is None:
            return []
        return [r.to_json() for r in state.store.audit_records(limit=limit, after_id=after)]

    @app.get(wire.RECOVERY_PATH)
    def recovery() -> dict[str, Any]:
        """The state key sealed to each admin recovery key, for `veil recover`."""
        return {"locked": state.locked, "records": state.recovery_blob()}

    @app.post(wire.RECOVER_PATH)
    def recover(body: RecoverRequest) -> dict[str, Any]:
        state.restore(_b64(body.sealed_state_key))
        return {"restored": True, "manifests": len(state.history), "secrets": len(state.secrets)}

    @app.get(wire.MANIFEST_PATH)
    def get_manifest() -> dict[str, Any]:
        state.refresh()
        return state.require_manifest().model_dump(mode="json")

    @app.get(wire.MANIFEST_HISTORY_PATH)
    def get_history() -> list[dict[str, Any]]:
        state.refresh()
        return [entry.model_dump(mode="json") for entry in state.history]

    @app.post(wire.MANIFEST_PATH)
    async def set_manifest(request: Request) -> dict[str, Any]:
        entry = SignedManifest.parse(await request.body())
        index = state.append_manifest(entry)
        return {"index": index, "digest": entry.digest.hex()}

    @app.post(wire.WORKERS_CHALLENGE_PATH)
    def challenge() -> dict[str, Any]:
        return {"nonce": nonces.issue().hex(), "ttl_seconds": 60}

    @app.post(wire.WORKERS_REGISTER_PATH)
    def register(body: RegisterRequest) -> JSONResponse:
        """Verify a worker's evidence against the manifest; only then release the OHTTP keys."""
        try:
            state.refresh()  # a peer coordinator on the same database may have moved on
            manifest = state.require_manifest()
            nonce = bytes.fromhex(body.nonce)
            nonces.consume(nonce)
            public_key = bytes.fromhex(body.public_key)
            verified = appraise_worker_evidence(
                body.evidence,
                manifest.manifest.workers,
                challenge=nonce,
                public_key=public_key,
                trust=trust_for(manifest.manifest.trusted_simulation_roots),
                sandbox=sandbox_binding(manifest.manifest.sandbox),  # it enforces what the manifest says
            )
        except VeilError as err:
            registrations.labels("refused").inc()
            state.audit("worker.register", body.public_key[:16], "refused", err.reason)
            return error_response(err)
        claims = verified.claims
        secrets = {
            "manifest_digest": manifest.digest.hex(),
            "ohttp_keys": keyrelease.export_ohttp_keys(state.ohttp_keys),
            "data_keys": _release_data_keys(manifest, claims, body.public_key[:16]),
        }
        sealed = keyrelease.seal(
            public_key, json.dumps(secrets).encode(), wire.WORKER_SECRETS_INFO, aad=nonce
        )
        known = state.workers.get(body.worker_id or "")
        worker_id = known.worker_id if known else uuid.uuid4().hex
        now = time.time()
        state.audit("worker.register", worker_id, "accepted", "ok",
                    {"platform": claims.platform, "measurement": claims.measurement, "simulated": claims.simulated})
        state.add_worker(WorkerRecord(
            worker_id, claims.platform, claims.measurement, claims.simulated,
            known.registered_at if known else now, now,
        ))
        registrations.labels("accepted").inc()
        return JSONResponse(
            {
                "worker_id": worker_id,
                "manifest_digest": manifest.digest.hex(),
                "sealed_secrets": base64.b64encode(sealed).decode(),
            }
        )

    def _release_data_keys(manifest: SignedManifest, claims: Any, subject: str) -> dict[str, str]:
        """Data keys whose release policy these claims satisfy; every decision is audited."""
        released: dict[str, str] = {}
        for model in manifest.manifest.models:
            if model.key_id is None:
                continue
            ok, reason = release.evaluate(manifest.manifest.release_policies.get(model.key_id), claims)
            if ok and model.key_id not in state.secrets:
                ok, reason = False, "release.secret_missing"
            state.audit("secret.release", model.key_id, "released" if ok else "refused", reason, {"worker": subject})
            if ok:
                released[model.key_id] = state.secrets[model.key_id].hex()
        return released

    @app.get(wire.WORKERS_PATH)
    def workers() -> list[dict[str, Any]]:
        return [vars(w) for w in state.workers.values()]

    return app
