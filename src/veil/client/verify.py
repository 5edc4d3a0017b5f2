"""Verify a coordinator before sending anything: evidence, binding, manifest, key configuration.

One attestation proves everything the client needs: the report_data binds the client's fresh
nonce, the coordinator's public key, the manifest digest and the OHTTP key configuration digest.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from veil import wire
from veil.attest.binding import coordinator_batch_report_data, coordinator_report_data
from veil.attest.nonce_tree import InclusionProof, root_from_proof
from veil.attest.claims import Verdict
from veil.attest.evidence import appraise_evidence, trust_for
from veil.attest.registry import is_simulated
from veil.client.manifest_log import ManifestLog
from veil.client.policy import ClientPolicy
from veil.errors import ParseError, PolicyError, VerificationError
from veil.manifest import SignedManifest, valid_signers
from veil.ohttp.keyconfig import KeyConfig, decode_key_config_list

MAX_ATTESTATION_BYTES = 1 << 20


@dataclass(frozen=True)
class AttestedCoordinator:
    """The outcome of a successful verification: what the client may now encrypt to."""

    coordinator_url: str
    gateway_url: str
    verdict: Verdict
    manifest: SignedManifest | None  # None only when verified with require_manifest=False
    key_configs: list[KeyConfig]
    public_key: bytes
    elapsed_ms: float
    checks: list[tuple[str, str]] = field(default_factory=list)
    relay_url: str | None = None  # where encrypted requests go when not straight to the gateway

    @property
    def send_url(self) -> str:
        """Where the client POSTs its encapsulated requests: the relay if it has one, else the gateway."""
        return self.relay_url or self.gateway_url

    @property
    def simulated(self) -> bool:
        return bool(self.verdict.claims and self.verdict.claims.simulated)

    def to_json(self) -> dict[str, Any]:
        m = self.manifest.manifest if self.manifest else None
        return {
            "verdict": "accept",
            "reason": "ok",
            "simulated": self.simulated,
            "coordinator_url": self.coordinator_url,
            "gateway_url": self.gateway_url,
            "relay_url": self.relay_url,
            "claims": self.verdict.claims.to_json() if self.verdict.claims else None,
            "manifest_digest": self.manifest.digest.hex() if self.manifest else None,
            "sandbox": m.sandbox.model_dump() if m else None,
            # what the attested coordinator demands of every worker before it releases keys
            "workers": [w.model_dump() for w in m.workers] if m else [],
            "models": [x.name for x in m.models] if m else [],
            "key_ids": [c.key_id for c in self.key_configs],
            "checks": [{"check": c, "result": r} for c, r in self.checks],
            "elapsed_ms": round(self.elapsed_ms, 2),
        }


def verify_coordinator(
    policy: ClientPolicy,
    *,
    http: httpx.Client | None = None,
    nonce: bytes | None = None,
    as_of: datetime | None = None,
    require_manifest: bool = True,
    manifest_log: ManifestLog | None = None,
) -> AttestedCoordinator:
    """Fetch and verify the coordinator's attestation; raises a VeilError with a reason code.

    ``require_manifest=False`` is for restoring a locked coordinator, which has none yet. With a
    ``manifest_log``, the attested manifest must also extend the history this client has seen.
    """
    start = time.perf_counter()
    nonce = nonce or os.urandom(32)
    own = http is None
    http = http or httpx.Client(timeout=10)
    try:
        try:
            resp = http.get(f"{policy.coordinator_url}{wire.ATTESTATION_PATH}", params={"nonce": nonce.hex()})
        except httpx.HTTPError as exc:
            raise VerificationError("coordinator.unreachable", f"{policy.coordinator_url}: {exc}") from None
        if resp.status_code != 200 or len(resp.content) > MAX_ATTESTATION_BYTES:
            raise VerificationError("coordinator.bad_response", f"attestation answered HTTP {resp.status_code}")
        attested = check_attestation(
            resp.json(), policy, nonce=nonce, as_of=as_of, started=start, require_manifest=require_manifest
        )
        if manifest_log is not None and attested.manifest is not None:
            manifest_log.advance(policy.coordinator_url, attested.manifest, http)
            attested.checks.append(("manifest extends the history this client has seen", "ok"))
        return attested
    finally:
        if own:
            http.close()


def check_attestation(
    body: dict[str, Any],
    policy: ClientPolicy,
    *,
    nonce: bytes,
    as_of: datetime | None = None,
    started: float | None = None,
    require_manifest: bool = True,
) -> AttestedCoordinator:
    """Verify an attestation answer (already fetched) against ``policy`` for ``nonce``."""
    started = started if started is not None else time.perf_counter()
    checks: list[tuple[str, str]] = []
    try:
        platform = body["platform"]
        configs_raw = base64.b64decode(body["key_configs"], validate=True)
        public_key = bytes.fromhex(body["public_key"])
        manifest_digest = bytes.fromhex(body["manifest_digest"])
        evidence = body["evidence"]
    except (KeyError, TypeError, ValueError):
        raise ParseError("attestation.malformed", "attestation answer is missing or has bad fields") from None
    if is_simulated(platform) and not policy.trust_simulated:
        raise VerificationError(
            "attestation.simulated_untrusted",
            "the coordinator runs on a SIMULATED TEE and this client does not trust simulation",
        )
    expected = expected_report_data(body, nonce, public_key, manifest_digest, hashlib.sha256(configs_raw).digest())
    if "nonce_batch" in body:
        checks.append(("this client's fresh nonce is a leaf of the attested nonce batch (Merkle path)", "ok"))
    # --- attestation (veil.attest): the checks shown are those the verifier performed ---
    verified = appraise_evidence(
        evidence,
        policy.coordinator,
        expected_report_data=expected,
        trust=trust_for(policy.simulation_roots if policy.trust_simulated else []),
        as_of=as_of,
    )
    verdict = Verdict.accept(verified.claims, "coordinator evidence verified", verified.checks)
    checks.extend((c.name, c.result) for c in verified.checks)
    # --- end attestation ---
    manifest: SignedManifest | None = None
    if require_manifest or body.get("manifest") is not None:
        manifest = _check_manifest(body.get("manifest"), manifest_digest, policy)
        checks.append(("manifest digest pinned or signed by a trusted admin", "ok"))
    key_configs = decode_key_config_list(configs_raw)
    if not key_configs:
        raise ParseError("attestation.no_key_config", "the coordinator offers no OHTTP key configuration")
    checks.append(("OHTTP key configuration bound to the evidence", "ok"))
    return AttestedCoordinator(
        coordinator_url=policy.coordinator_url,
        gateway_url=policy.gateway_url,
        relay_url=policy.relay_url,
        verdict=verdict,
        manifest=manifest,
        key_configs=key_configs,
        public_key=public_key,
        elapsed_ms=(time.perf_counter() - started) * 1000,
        checks=checks,
    )


def expected_report_data(body: dict[str, Any], nonce: bytes, public_key: bytes, manifest_digest: bytes,
                         key_config_digest: bytes) -> bytes:
    """What the coordinator's report_data must be for *our* nonce.

    A batched answer (``nonce_batch``: one report for many clients, coordinator/batching.py)
    carries our inclusion path; the root is recomputed here from our own nonce, never taken from
    the answer, so evidence made for other clients' nonces cannot match.
    """
    if "nonce_batch" not in body:
        return coordinator_report_data(nonce, public_key, manifest_digest, key_config_digest)
    root = root_from_proof(nonce, InclusionProof.from_json(body["nonce_batch"]))
    if root is None:
        raise VerificationError("binding.bad_nonce_proof", "the nonce batch path is not a valid path for its index and size")
    return coordinator_batch_report_data(root, public_key, manifest_digest, key_config_digest)


def _check_manifest(raw: Any, digest: bytes, policy: ClientPolicy) -> SignedManifest:
    if raw is None:
        raise PolicyError("manifest.missing", "the coordinator has no manifest yet")
    manifest = SignedManifest.parse(raw)
    if manifest.digest != digest:
        raise VerificationError("manifest.digest_mismatch", "manifest does not match the attested digest")
    if digest.hex() in policy.manifest_digests:
        return manifest
    if policy.admin_keys and valid_signers(manifest, policy.admin_keys):
        return manifest
    raise PolicyError(
        "manifest.not_trusted",
        "the attested manifest is neither pinned by digest nor signed by a trusted admin key",
    )
