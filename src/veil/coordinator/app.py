"""The coordinator's HTTP API: attestation for clients, manifests for admins, key release for workers."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from pydantic import BaseModel, Field

from veil import keyrelease, wire
from veil.attest.attester import Attester
from veil.attest.claims import Claims
from veil.attest.evidence import appraise_worker_evidence, trust_for
from veil.attestation import (
    ADMIN_ANSWER_CONTEXT,
    ADMIN_ANSWER_INFO,
    ADMIN_KEY_HEADER,
    ADMIN_NONCE_HEADER,
    ADMIN_READ_CONTEXT,
    ADMIN_RESPONSE_KEY_HEADER,
    ADMIN_SIGNATURE_HEADER,
    REGISTRATION_CONTEXT,
    admin_answer_statement,
    admin_read_statement,
    registration_statement,
    sign_statement,
    verify_statement,
    worker_proof,
)
from veil.coordinator import release
from veil.coordinator.batching import AttestationBatcher, Bound
from veil.coordinator.limits import RateLimited, SourceLimiter, source_of
from veil.coordinator.nonces import NonceStore
from veil.coordinator.state import CoordinatorState, WorkerRecord
from veil.errors import ParseError, PolicyError, VeilError, VerificationError
from veil.httputil import BodyLimitMiddleware, error_response, veil_error_handler
from veil.manifest import SignedManifest, sandbox_binding

MAX_BODY = 1 << 20  # 1 MiB: manifests and evidence are small


@dataclass(frozen=True)
class Limits:
    """What unauthenticated callers may ask of the coordinator, per source (see limits.py)."""

    attestations_per_second: float = 20.0
    attestation_burst: float = 50.0
    challenges_per_second: float = 5.0
    challenge_burst: float = 20.0
    challenge_pool: int = 10_000
    challenges_per_source: int = 16


class SecretUpload(BaseModel):
    key_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    sealed: str = Field(max_length=65536)  # base64: HPKE to the attested coordinator key
    admin_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")


class RecoverRequest(BaseModel):
    sealed_state_key: str = Field(max_length=4096)  # base64: HPKE to this coordinator's attested key
    admin_key: str = Field(pattern=r"^[0-9a-f]{64}$")  # an admin of the restored head manifest
    signature: str = Field(pattern=r"^[0-9a-f]{128}$")  # over veil.attestation.restore_statement


class RegisterRequest(BaseModel):
    nonce: str = Field(pattern=r"^[0-9a-f]{64}$")
    public_key: str = Field(pattern=r"^[0-9a-f]{64}$")  # X25519, raw hex
    evidence: dict[str, Any]
    worker_id: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")  # a re-registration keeps its id...
    worker_proof: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # ...if it proves it holds its secret


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


def create_app(
    state: CoordinatorState,
    attester: Attester,
    nonces: NonceStore | None = None,
    limits: Limits = Limits(),
    *,
    attestation_batching: bool = True,
) -> FastAPI:
    """``attestation_batching``: one report for all clients that ask while one is being made
    (coordinator/batching.py); False makes one report per client (the bench's baseline)."""
    nonces = nonces or NonceStore(max_outstanding=limits.challenge_pool, per_source=limits.challenges_per_source)
    admin_nonces = NonceStore(ttl=60, max_outstanding=1024, per_source=8)
    attest_limit = SourceLimiter("attestation.rate_limited", limits.attestations_per_second, limits.attestation_burst)
    challenge_limit = SourceLimiter("challenge.rate_limited", limits.challenges_per_second, limits.challenge_burst)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_maintain_forever(state))
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(title="Veil coordinator", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(BodyLimitMiddleware, limit=MAX_BODY)
    app.add_exception_handler(VeilError, veil_error_handler)
    app.add_exception_handler(RateLimited, _rate_limited)
    registry = CollectorRegistry()
    attestations = Counter("veil_attestations", "Evidence served to clients", registry=registry)
    registrations = Counter("veil_worker_registrations", "Worker registrations", ["outcome"], registry=registry)
    limited = Counter("veil_rate_limited", "Requests refused by a per-source limit", ["reason"], registry=registry)
    app.state.coordinator = state

    def bound_now() -> Bound:
        """What the next report binds; runs in the report's thread (it may read the database)."""
        state.maintain()  # HA: a peer on the same database may have set a newer manifest or rotated keys
        current = state.manifest
        return Bound(
            keyrelease.public_bytes(state.hpke_key), bytes.fromhex(state.identity), current, state.ohttp_keys.encode_configs()
        )

    batcher = AttestationBatcher(attester, bound_now, batching=attestation_batching)
    Gauge("veil_attestation_reports", "Hardware reports made for clients", registry=registry).set_function(
        lambda: batcher.reports
    )

    def limit(limiter: SourceLimiter, request: Request) -> None:
        try:
            limiter.check(source_of(request))
        except RateLimited as err:
            limited.labels(err.reason).inc()
            raise

    @app.get(wire.HEALTH_PATH)
    def health() -> dict[str, Any]:
        return {"status": "ok", "manifest": state.manifest is not None, "locked": state.locked}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(wire.GATEWAY_PATH)
    def ohttp_keys() -> Response:
        return Response(state.ohttp_keys.encode_configs(), media_type=wire.MEDIA_TYPE_KEYS)

    @app.get(wire.ATTESTATION_PATH)
    async def attestation(request: Request, nonce: str = Query(max_length=128)) -> Response:
        """Fresh evidence whose report_data binds the client's nonce (directly, or as a leaf of the
        batch's nonce tree with the client's inclusion path), our HPKE key and state identity, the
        manifest entry and the live OHTTP key configurations. Each source is held to its rate; one
        report is in flight at a time, whatever the number of clients."""
        raw_nonce = _hex_nonce(nonce)
        limit(attest_limit, request)
        got = await batcher.attest(raw_nonce)
        attestations.inc()
        # the evidence, key and manifest were encoded once for the whole batch
        return Response(got.body(locked=state.locked), media_type="application/json")

    # admin ---------------------------------------------------------------------------------------
    @app.post(wire.ADMIN_CHALLENGE_PATH)
    def admin_challenge(request: Request) -> dict[str, Any]:
        """A single-use nonce an admin signs into one read of audit, workers or secrets."""
        limit(challenge_limit, request)
        return {"nonce": admin_nonces.issue(source_of(request)).hex(), "ttl_seconds": int(admin_nonces.ttl)}

    def admin_read(request: Request, payload: Any) -> JSONResponse:
        """Answer a read only to a fresh signature by an admin of the current manifest, sealed to
        the key the admin named and signed by our state identity."""
        nonce, response_key = _authorise_admin(request, state, admin_nonces)
        sealed = keyrelease.seal(
            response_key, json.dumps(payload() if callable(payload) else payload).encode(), ADMIN_ANSWER_INFO, aad=nonce
        )
        signature = sign_statement(state.seed.identity_key, ADMIN_ANSWER_CONTEXT, *admin_answer_statement(nonce, sealed))
        return JSONResponse({"sealed": base64.b64encode(sealed).decode(), "signature": signature})

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
    def list_secrets(request: Request) -> JSONResponse:
        def key_ids() -> dict[str, Any]:
            state.refresh()
            return {"key_ids": sorted(state.secrets)}

        return admin_read(request, key_ids)

    @app.get(wire.WORKERS_PATH)
    def workers(request: Request) -> JSONResponse:
        return admin_read(request, lambda: {"workers": [w.to_json() for w in state.workers.values()]})

    @app.get(wire.AUDIT_PATH)
    def get_audit(
        request: Request, after: int = Query(0, ge=0), limit_: int = Query(1000, ge=1, le=10000, alias="limit")
    ) -> JSONResponse:
        def page() -> dict[str, Any]:
            found = state.read_audit(after, limit_)
            return {
                "records": found.records,
                "anchor": found.anchor.hex(),
                "head": {"seq": found.head_seq, "hash": found.head_hash.hex()},
            }

        return admin_read(request, page)

    @app.get(wire.RECOVERY_PATH)
    def recovery() -> dict[str, Any]:
        """The state key sealed to each admin recovery key, for `veil recover`."""
        return {"locked": state.locked, "records": state.recovery_blob()}

    @app.post(wire.RECOVER_PATH)
    def recover(body: RecoverRequest) -> dict[str, Any]:
        state.restore(_b64(body.sealed_state_key), body.admin_key, body.signature)
        return {"restored": True, "manifests": len(state.history), "secrets": len(state.secrets)}

    # manifests -----------------------------------------------------------------------------------
    @app.get(wire.MANIFEST_PATH)
    def get_manifest() -> dict[str, Any]:
        state.refresh()
        return state.require_manifest().model_dump(mode="json")

    @app.get(wire.MANIFEST_HISTORY_PATH)
    def get_history() -> list[dict[str, Any]]:
        state.refresh()
        return [entry.model_dump(mode="json") for entry in state.public_history()]

    @app.post(wire.MANIFEST_PATH)
    async def set_manifest(request: Request) -> dict[str, Any]:
        entry = SignedManifest.parse(await request.body())
        index = await asyncio.to_thread(state.append_manifest, entry)
        return {"index": index, "digest": entry.digest.hex()}

    # workers -------------------------------------------------------------------------------------
    @app.post(wire.WORKERS_CHALLENGE_PATH)
    def challenge(request: Request) -> dict[str, Any]:
        limit(challenge_limit, request)
        return {"nonce": nonces.issue(source_of(request)).hex(), "ttl_seconds": int(nonces.ttl)}

    @app.post(wire.WORKERS_REGISTER_PATH)
    def register(body: RegisterRequest) -> JSONResponse:
        """Verify a worker's evidence against the manifest; only then release the OHTTP keys.

        Nothing is written for a request whose nonce we never issued; refused evidence is counted
        and summarised in the audit log, never written row by row.
        """
        nonce = bytes.fromhex(body.nonce)
        try:
            nonces.consume(nonce)
            state.maintain()  # a peer coordinator on the same database may have moved on
            manifest = state.require_manifest()
        except VeilError as err:
            registrations.labels("refused").inc()
            return error_response(err)
        public_key = bytes.fromhex(body.public_key)
        try:
            claims = _admit(manifest, body.evidence, nonce, public_key)
        except VeilError as err:
            registrations.labels("refused").inc()
            state.refused("worker.register", err.reason)
            return error_response(err)
        known = state.workers.get(body.worker_id or "")
        if known is not None and not (
            body.worker_proof and hmac.compare_digest(body.worker_proof, worker_proof(known.secret, nonce, public_key))
        ):
            registrations.labels("refused").inc()
            mismatch = VerificationError(
                "register.not_this_worker", "the worker id belongs to another worker (no proof of its secret)"
            )
            state.audit("worker.register", body.worker_id or "", "refused", mismatch.reason, {"platform": claims.platform})
            return error_response(mismatch)
        worker_id = known.worker_id if known else uuid.uuid4().hex
        secret = known.secret if known else os.urandom(32)
        keys = state.released_keys  # pending generations too: held before clients are told to use them
        secrets = {
            "manifest_digest": manifest.digest.hex(),
            "ohttp_keys": keyrelease.export_ohttp_keys(keys),
            "data_keys": _release_data_keys(manifest, claims, worker_id),
            "worker_secret": secret.hex(),
        }
        sealed = keyrelease.seal(public_key, json.dumps(secrets).encode(), wire.WORKER_SECRETS_INFO, aad=nonce)
        now = time.time()
        state.audit(
            "worker.register",
            worker_id,
            "accepted",
            "ok",
            {
                "platform": claims.platform,
                "measurement": claims.measurement,
                "simulated": claims.simulated,
                "key_ids": [c.key_id for c in keys.configs()],
            },
        )
        state.add_worker(
            WorkerRecord(
                worker_id,
                claims.platform,
                claims.measurement,
                claims.simulated,
                known.registered_at if known else now,
                now,
                secret,
            )
        )
        registrations.labels("accepted").inc()
        signature = sign_statement(
            state.seed.identity_key,
            REGISTRATION_CONTEXT,
            *registration_statement(nonce, public_key, worker_id, manifest.digest, sealed),
        )
        return JSONResponse(
            {
                "worker_id": worker_id,
                "manifest_digest": manifest.digest.hex(),
                "sealed_secrets": base64.b64encode(sealed).decode(),
                "signature": signature,
            }
        )

    def _release_data_keys(manifest: SignedManifest, claims: Claims, subject: str) -> dict[str, str]:
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

    return app


def _admit(manifest: SignedManifest, evidence: dict[str, Any], nonce: bytes, public_key: bytes) -> Claims:
    """Verified claims of a worker the manifest admits, or a typed refusal.

    Simulated or debug claims are admitted only when the manifest says so in the fields clients
    check (``trusted_simulation_roots``, ``ReferenceValues.allow_debug``), whatever the verifier did.
    """
    m = manifest.manifest
    claims = appraise_worker_evidence(
        evidence,
        m.workers,
        challenge=nonce,
        public_key=public_key,
        trust=trust_for(m.trusted_simulation_roots),
        sandbox=sandbox_binding(m.sandbox),  # the worker enforces what the manifest says
    ).claims
    if claims.simulated and not m.trusted_simulation_roots:
        raise PolicyError("register.simulated_refused", "the manifest admits no simulated worker")
    if claims.debug and not any(r.allow_debug for r in m.workers if r.platform == claims.platform):
        raise PolicyError("register.debug_refused", "the manifest admits no debug worker on this platform")
    return claims


def _authorise_admin(request: Request, state: CoordinatorState, nonces: NonceStore) -> tuple[bytes, bytes]:
    """(nonce, response key) of a read signed by an admin of the current manifest, or a refusal."""
    manifest = state.require_manifest()
    headers = request.headers
    try:
        key = headers[ADMIN_KEY_HEADER]
        nonce = bytes.fromhex(headers[ADMIN_NONCE_HEADER])
        response_key = bytes.fromhex(headers[ADMIN_RESPONSE_KEY_HEADER])
        signature = headers[ADMIN_SIGNATURE_HEADER]
    except (KeyError, ValueError):
        raise VerificationError(
            "admin.unauthenticated", "this read needs a fresh admin signature (veil-admin-* headers)"
        ) from None
    if key not in manifest.manifest.admin_keys:
        raise VerificationError("admin.not_admin", "the signing key is not an admin of the current manifest")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    verify_statement(
        key,
        signature,
        ADMIN_READ_CONTEXT,
        *admin_read_statement(request.method, target, nonce, response_key),
        reason="admin.bad_signature",
    )
    nonces.consume(nonce)  # after the signature: a stranger cannot burn an admin's challenge
    if len(response_key) != 32:
        raise ParseError("admin.bad_response_key", "the response key is a raw X25519 public key")
    return nonce, response_key


async def _rate_limited(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RateLimited)
    resp = error_response(exc, 429)
    resp.headers["Retry-After"] = str(exc.retry_after)
    return resp


async def _maintain_forever(state: CoordinatorState, every: float = 30.0) -> None:
    """Rotate keys on their timer and drop expired ones even when nobody asks."""
    while True:
        rotation = state.keys.rotation
        await asyncio.sleep(min(every, rotation.grace / 4, rotation.every / 4, max(rotation.promotion / 4, 0.05)))
        try:
            await asyncio.to_thread(state.maintain)
        except VeilError:
            pass  # the next request surfaces the reason (e.g. state.conflict, state.history_mismatch)
