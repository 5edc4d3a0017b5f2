"""Verify a coordinator before sending anything: evidence, binding, manifest, key configuration.

One attestation proves everything the client needs: the report_data binds the client's fresh
nonce, the coordinator's public key, the manifest digest and the OHTTP key configuration digest.
The client then judges what that manifest admits (``ClientPolicy.check``) and, with a manifest
log, that it extends the history this client has seen.

``check_attestation`` is the whole decision without I/O. ``verify_coordinator`` (sync) and
``averify_coordinator`` (asyncio, the checks off the event loop) fetch the attestation and the
manifest history with a size cap each, streamed, so a hostile coordinator cannot make the client
buffer more than the cap.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import os
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx

from veil import wire
from veil.attest.claims import Verdict
from veil.attest.evidence import appraise_evidence, trust_for
from veil.attest.registry import is_simulated
from veil.attestation import check_identity, expected_report_data
from veil.client.manifest_log import ManifestLog
from veil.client.policy import ClientPolicy, simulation_in
from veil.errors import ParseError, PolicyError, VerificationError
from veil.manifest import SignedManifest, valid_signers
from veil.ohttp.keyconfig import AEAD_NAMES, KDF_NAMES, KEM_NAMES, KeyConfig, SymmetricSuite, decode_key_config_list
from veil.ohttp.preference import ChosenSuite, choose_suite

MAX_ATTESTATION_BYTES = 2 << 20  # evidence and collateral (tens of KiB) plus one manifest (<= 1 MiB)
MAX_HISTORY_BYTES = 32 << 20  # every manifest the deployment ever had
TIMEOUT = 10.0


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every verification: building one (loading the CA bundle) costs far
    more than a whole verification, and re-verifying clients make a fresh HTTP client each time."""
    return httpx.create_ssl_context()


def preferred_config(configs: list[KeyConfig]) -> KeyConfig:
    """Which attested key configuration the client encrypts to: ``veil.ohttp.preference``'s choice,
    X-Wing when offered (its transport then uses the first suite the configuration lists)."""
    return choose_suite(configs).config


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
    admission: dict[str, Any] = field(default_factory=dict)  # the client policy's rules for the manifest
    verified_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    relay_url: str | None = None  # where encrypted requests go when not straight to the gateway
    identity: bytes = b""  # the attested state identity (the manifest's coordinator_identity)

    @property
    def simulated_parts(self) -> list[str]:
        """Everything simulated in this deployment, coordinator and manifest alike (empty: nothing)."""
        claims = self.verdict.claims
        parts = [f"coordinator runs on {claims.platform}"] if claims and claims.simulated else []
        return parts + (simulation_in(self.manifest.manifest) if self.manifest else [])

    @property
    def simulated(self) -> bool:
        return bool(self.simulated_parts)

    @property
    def key_config(self) -> KeyConfig:
        return preferred_config(self.key_configs)

    @property
    def suite(self) -> ChosenSuite:
        """The configuration and (KDF, AEAD) pair Veil's transport encrypts with (``veil verify`` shows it)."""
        return choose_suite(self.key_configs)

    def to_json(self) -> dict[str, Any]:
        m = self.manifest.manifest if self.manifest else None
        claims = self.verdict.claims
        return {
            "verdict": "accept",
            "reason": "ok",
            "simulated": self.simulated,
            "simulated_parts": self.simulated_parts,
            "verified_at": self.verified_at.isoformat(timespec="seconds"),
            "elapsed_ms": round(self.elapsed_ms, 2),
            "coordinator_url": self.coordinator_url,
            "gateway_url": self.gateway_url,
            "relay_url": self.relay_url,
            "platform": claims.platform if claims else None,
            "claims": claims.to_json() if claims else None,
            "manifest_digest": self.manifest.digest.hex() if self.manifest else None,
            "manifest": self.manifest.model_dump(mode="json") if self.manifest else None,
            "sandbox": m.sandbox.model_dump() if m else None,
            # what the attested coordinator demands of every worker before it releases keys
            "workers": [w.model_dump() for w in m.workers] if m else [],
            "models": [x.name for x in m.models] if m else [],
            "admission": self.admission,
            "key_ids": [c.key_id for c in self.key_configs],
            "key_configs": [_config_json(c) for c in self.key_configs],
            "ohttp_suite": self.suite.to_json(),
            "checks": [{"check": c, "result": r} for c, r in self.checks],
        }


def _config_json(config: KeyConfig) -> dict[str, Any]:
    return {
        "key_id": config.key_id,
        "kem_id": config.kem_id,
        "kem": KEM_NAMES.get(config.kem_id, f"unknown KEM 0x{config.kem_id:04x}"),
        "public_key": config.public_key.hex(),
        "suites": [{"kdf_id": s.kdf_id, "aead_id": s.aead_id, "name": _suite_name(s)} for s in config.suites],
    }


def _suite_name(suite: SymmetricSuite) -> str:
    kdf = KDF_NAMES.get(suite.kdf_id, f"unknown KDF 0x{suite.kdf_id:04x}")
    return f"{kdf} / {AEAD_NAMES.get(suite.aead_id, f'unknown AEAD 0x{suite.aead_id:04x}')}"


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
    client = http or httpx.Client(timeout=TIMEOUT, verify=_tls())
    try:
        body = _get(client, policy.coordinator_url + wire.ATTESTATION_PATH, {"nonce": nonce.hex()}, MAX_ATTESTATION_BYTES)
        attested = check_attestation(body, policy, nonce=nonce, as_of=as_of, started=start, require_manifest=require_manifest)
        if manifest_log is not None and attested.manifest is not None:
            if manifest_log.needs_history(policy.coordinator_url, attested.manifest):
                served = _get(client, policy.coordinator_url + wire.MANIFEST_HISTORY_PATH, None, MAX_HISTORY_BYTES)
                manifest_log.extend(policy.coordinator_url, attested.manifest, served)
            attested.checks.append(("manifest extends the history this client has seen", "ok"))
        return attested
    finally:
        if http is None:
            client.close()


async def averify_coordinator(
    policy: ClientPolicy,
    *,
    http: httpx.AsyncClient | None = None,
    nonce: bytes | None = None,
    as_of: datetime | None = None,
    manifest_log: ManifestLog | None = None,
) -> AttestedCoordinator:
    """:func:`verify_coordinator` for asyncio: network I/O awaited, the checks run in a thread."""
    start = time.perf_counter()
    nonce = nonce or os.urandom(32)
    client = http or httpx.AsyncClient(timeout=TIMEOUT, verify=_tls())
    try:
        url = policy.coordinator_url + wire.ATTESTATION_PATH
        body = await _aget(client, url, {"nonce": nonce.hex()}, MAX_ATTESTATION_BYTES)
        attested = await asyncio.to_thread(check_attestation, body, policy, nonce=nonce, as_of=as_of, started=start)
        if manifest_log is not None and attested.manifest is not None:
            if manifest_log.needs_history(policy.coordinator_url, attested.manifest):
                served = await _aget(client, policy.coordinator_url + wire.MANIFEST_HISTORY_PATH, None, MAX_HISTORY_BYTES)
                await asyncio.to_thread(manifest_log.extend, policy.coordinator_url, attested.manifest, served)
            attested.checks.append(("manifest extends the history this client has seen", "ok"))
        return attested
    finally:
        if http is None:
            await client.aclose()


def _get(client: httpx.Client, url: str, params: dict[str, str] | None, cap: int) -> Any:
    try:
        with client.stream("GET", url, params=params) as resp:
            _check_head(resp, url, cap)
            return _json(_take(resp.iter_bytes(), url, cap), url)
    except httpx.HTTPError as exc:
        raise VerificationError("coordinator.unreachable", f"{url}: {type(exc).__name__}: {exc}") from None


async def _aget(client: httpx.AsyncClient, url: str, params: dict[str, str] | None, cap: int) -> Any:
    try:
        async with client.stream("GET", url, params=params) as resp:
            _check_head(resp, url, cap)
            return _json(await _atake(resp.aiter_bytes(), url, cap), url)
    except httpx.HTTPError as exc:
        raise VerificationError("coordinator.unreachable", f"{url}: {type(exc).__name__}: {exc}") from None


def _check_head(resp: httpx.Response, url: str, cap: int) -> None:
    if resp.status_code != 200:
        raise VerificationError("coordinator.bad_response", f"{url} answered HTTP {resp.status_code}")
    declared = resp.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ParseError("coordinator.too_large", f"{url} announces {declared} bytes; the client reads at most {cap}")


def _too_large(url: str, cap: int) -> ParseError:
    return ParseError("coordinator.too_large", f"{url} sent more than the {cap} bytes the client reads")


def _take(pieces: Iterator[bytes], url: str, cap: int) -> bytes:
    buf = bytearray()
    for piece in pieces:
        buf += piece
        if len(buf) > cap:
            raise _too_large(url, cap)
    return bytes(buf)


async def _atake(pieces: AsyncIterator[bytes], url: str, cap: int) -> bytes:
    buf = bytearray()
    async for piece in pieces:
        buf += piece
        if len(buf) > cap:
            raise _too_large(url, cap)
    return bytes(buf)


def _json(body: bytes, url: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise VerificationError("coordinator.bad_response", f"{url} did not answer JSON") from None


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
        identity = bytes.fromhex(body.get("identity") or "")
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ParseError("attestation.malformed", "attestation answer is missing or has bad fields") from None
    if not isinstance(platform, str):
        raise ParseError("attestation.malformed", "attestation answer names no platform")
    if is_simulated(platform) and not policy.trust_simulated:
        raise VerificationError(
            "attestation.simulated_untrusted",
            "the coordinator runs on a SIMULATED TEE and this client does not trust simulation",
        )
    expected = expected_report_data(
        nonce, body.get("nonce_batch"), public_key, identity, manifest_digest, hashlib.sha256(configs_raw).digest()
    )
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
        _check_state_identity(identity, manifest)
        checks.append(("attested state identity is the one the manifest names", "ok"))
        policy.check(manifest.manifest)
        checks.append(("manifest admits only workers, debug settings and sandboxes this client accepts", "ok"))
    key_configs = decode_key_config_list(configs_raw)
    if not key_configs:
        raise ParseError("attestation.no_key_config", "the coordinator offers no OHTTP key configuration")
    checks.append(("OHTTP key configuration bound to the evidence", "ok"))
    chosen = choose_suite(key_configs)  # refuses a list with nothing this client implements
    checks.append(("OHTTP suite", chosen.name + (" (post-quantum)" if chosen.post_quantum else "")))
    return AttestedCoordinator(
        coordinator_url=policy.coordinator_url,
        gateway_url=policy.gateway_url,
        relay_url=policy.relay_url,
        identity=identity,
        verdict=verdict,
        manifest=manifest,
        key_configs=key_configs,
        public_key=public_key,
        elapsed_ms=(time.perf_counter() - started) * 1000,
        checks=checks,
        admission=policy.admission_rules(),
    )


# --- state identity (issue 9.1, helper "coord") --------------------------------------------------
def _check_state_identity(identity: bytes, manifest: SignedManifest) -> None:
    """What the coordinator attests (HPKE key, OHTTP keys, data keys) derives from one state seed;
    the admins name that state's identity in the signed manifest. A coordinator whose state the
    host swapped underneath attests another identity: refused (``attestation.identity_mismatch``)."""
    check_identity(identity, manifest.manifest)


# --- end state identity ---------------------------------------------------------------------------


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
