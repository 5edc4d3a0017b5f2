"""Tenants: API keys checked inside the encryption, per-tenant rate limits, prefix-cache salts.

The manifest (public and attested) lists each tenant as ``{id, key_sha256, requests_per_minute,
tokens_per_minute?}``. Keys are ``secrets.token_urlsafe(32)`` strings — 256 bits from the OS
CSPRNG — so their SHA-256 is safe to publish: nobody can search a 2**256 space, and a slow
password hash would only add cost to every request (see docs/tenants-and-padding.md).

Keys are made and published by the admin library (``veil.admin.create_tenant``). Everything here
runs on the *decrypted* inner request in the worker's gateway. The outer POST
carries no key, so relays and load balancers never see which tenant is speaking.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from veil.manifest import TenantEntry
from veil.ohttp import bhttp
from veil.worker.refusals import Refusal
from veil.worker.shared_state import SharedState

SALT_CONTEXT = b"veil/cache-salt/v1\x00"
#: Every path that reaches a model's prompt cache: OpenAI's chat and text completions and Responses
#: API, Anthropic's Messages API, llama.cpp's code-completion /infill.
SALTED_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/infill"})
# Engines whose OpenAI server takes a `cache_salt` request field: vLLM scopes its prefix cache by
# it, Veil's llama.cpp engine forgets its cached prefix whenever the salt changes (docs/engines.md),
# the transformers engine keeps no state between requests. One tenant cannot time another's prefix.
SALT_ENGINES = frozenset({"vllm", "llama.cpp", "transformers"})


# -- rate limits ------------------------------------------------------------------------------


class TokenBucket:
    """``per_minute`` tokens of capacity, refilled continuously; may go into debt on settlement.

    Its level lives in the worker's shared table (``veil.worker.shared_state``) under ``key``, so
    every gateway process of the worker draws from the same bucket (by default a table of its own).
    """

    def __init__(
        self, per_minute: int, clock: Callable[[], float], *, shared: SharedState | None = None, key: bytes | None = None
    ) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._shared = shared if shared is not None else SharedState.create(1, bucket_slots=1)
        self._at = self._shared.bucket_slot(key or os.urandom(16), self.capacity, clock())

    @property
    def level(self) -> float:
        return self._shared.read_bucket(self._at)[0]

    def _refilled(self) -> tuple[float, float]:
        level, stamp = self._shared.read_bucket(self._at)
        now = self._clock()
        return min(self.capacity, level + max(0.0, now - stamp) * self.rate), now

    def take(self, cost: float) -> float:
        """Take ``cost`` and return 0.0, or take nothing and return the seconds to wait."""
        need = min(cost, self.capacity)  # a request bigger than the bucket waits for a full one
        with self._shared.locked():
            level, now = self._refilled()
            if level >= need:
                self._shared.write_bucket(self._at, level - cost, now)
                return 0.0
            self._shared.write_bucket(self._at, level, now)
        return (need - level) / self.rate

    def settle(self, delta: float) -> None:
        """Charge (positive) or refund (negative) the difference between estimate and usage."""
        with self._shared.locked():
            level, now = self._refilled()
            self._shared.write_bucket(self._at, min(self.capacity, level - delta), now)


def bucket_key(tenant_id: str, kind: str, per_minute: int) -> bytes:
    """Where a tenant's bucket lives in the shared table: the same tenant, kind and limit map to
    the same bucket in every process and across manifest updates (a manifest update is no way
    to reset a rate limit); a changed limit starts a fresh, full bucket."""
    return hashlib.blake2b(f"{kind}\x00{per_minute}\x00{tenant_id}".encode(), digest_size=16).digest()


# -- admission --------------------------------------------------------------------------------


@dataclass
class Usage:
    """What an answer cost, as far as the gateway saw it: the engine's own ``usage.total_tokens``
    when it reported one (a JSON answer, or a stream's final usage event), else the SSE events."""

    total_tokens: int | None = None
    stream_events: int | None = None


@dataclass
class Admission:
    """An admitted request: what to forward, and how to settle its token estimate afterwards."""

    request: bhttp.Request
    tenant: str | None = None
    _bucket: TokenBucket | None = None
    _estimate: int = 0
    _prompt_estimate: int = 0
    _settled: bool = field(default=False, repr=False)

    def settle(self, usage: Usage) -> None:
        """Replace the admission estimate by the usage the engine reported (or that we counted).

        Called exactly once per admitted request, by the gateway, whatever became of the answer.
        """
        if self._bucket is None or self._settled:
            return
        self._settled = True
        if usage.total_tokens is not None:
            actual = usage.total_tokens
        elif usage.stream_events is not None:
            actual = self._prompt_estimate + max(0, usage.stream_events - 1)  # one event ~ one token, minus [DONE]
        else:
            return  # nothing known about the answer: the estimate stands
        self._bucket.settle(actual - self._estimate)


#: Where each API the engines serve puts its output limit: OpenAI chat/completions,
#: Anthropic's Messages (``max_tokens``), OpenAI's Responses, llama.cpp's ``/infill``.
_OUTPUT_LIMITS = ("max_completion_tokens", "max_tokens", "max_output_tokens", "n_predict")


def _output_limit(doc: dict[str, Any]) -> int:
    """The most output tokens the request allows, in whichever API's field it gave (0: unknown)."""
    for name in _OUTPUT_LIMITS:
        limit = doc.get(name)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            return limit
    return 0


class Tenancy:
    """The gateway's view of the manifest's tenants (one instance per worker process)."""

    def __init__(
        self,
        tenants: list[TenantEntry],
        *,
        salt_secret: bytes | None = None,
        engine: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedState | None = None,
    ) -> None:
        self.tenants = list(tenants)
        self._clock = clock
        self._digests = [bytes.fromhex(t.key_sha256) for t in self.tenants]
        # Per-worker secret made at start (shared by the worker's gateway processes); salts never
        # leave the worker and nothing a client sends can choose or predict them.
        self._salt_secret = salt_secret if salt_secret is not None else os.urandom(32)
        self.salts_cache = engine in SALT_ENGINES
        # The buckets live in the worker's shared table: every gateway process draws from them.
        self._shared = shared if shared is not None else SharedState.create(1)
        self._rpm = {t.id: self._bucket(t.id, "requests", t.requests_per_minute) for t in self.tenants}
        self._tpm = {t.id: self._bucket(t.id, "tokens", t.tokens_per_minute) for t in self.tenants if t.tokens_per_minute}

    def _bucket(self, tenant_id: str, kind: str, per_minute: int) -> TokenBucket:
        return TokenBucket(per_minute, self._clock, shared=self._shared, key=bucket_key(tenant_id, kind, per_minute))

    @property
    def enabled(self) -> bool:
        return bool(self.tenants)

    def updated(self, tenants: list[TenantEntry]) -> "Tenancy":
        """The tenancy of a newer manifest: same worker salt secret and shared table, so a tenant
        whose limits did not change keeps its running buckets (see :func:`bucket_key`)."""
        new = Tenancy(tenants, salt_secret=self._salt_secret, clock=self._clock, shared=self._shared)
        new.salts_cache = self.salts_cache
        return new

    def cache_salt(self, tenant_id: str) -> str:
        return hmac.new(self._salt_secret, SALT_CONTEXT + tenant_id.encode(), hashlib.sha256).hexdigest()

    def authenticate(self, headers: bhttp.Fields) -> TenantEntry | None:
        """The tenant whose key is in the single ``Authorization: Bearer`` header, or None.

        The presented key is hashed and compared with *every* tenant's digest by
        ``hmac.compare_digest``, without stopping at a match, so the time taken does not depend on
        which entry (if any) matched or on how many leading bytes agreed.
        """
        values = [v for n, v in headers if n.lower() == "authorization"]
        if len(values) != 1:
            return None
        scheme, _, token = values[0].strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = -1
        for i, digest in enumerate(self._digests):
            match = hmac.compare_digest(presented, digest)
            found = i if match else found
        return self.tenants[found] if found >= 0 else None

    def admit(self, req: bhttp.Request) -> Admission:
        """Authenticate, rate-limit and rewrite one decoded inner request; refusals raise."""
        tenant: TenantEntry | None = None
        if self.enabled:
            tenant = self.authenticate(req.headers)
            if tenant is None:
                raise Refusal(
                    401,
                    "tenant.unauthorized",
                    "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>' inside the encrypted request.",
                    code="invalid_api_key",
                    headers=[("www-authenticate", 'Bearer realm="veil"')],
                )
        tpm = self._tpm.get(tenant.id) if tenant else None
        salt = tenant is not None and self.salts_cache and _path(req.path) in SALTED_PATHS
        # A client-sent cache_salt must go, however it is spelt (a \u escape can hide the name).
        maybe_salted = b"cache_salt" in req.content or b"\\u" in req.content
        if tenant is None and not maybe_salted:
            return Admission(req)  # the common single-tenant case: nothing to parse or rewrite
        body, doc = _json_body(req) if (tpm or salt or maybe_salted) else (req.content, None)
        if doc is None and (salt or maybe_salted) and req.content.strip():
            # Never forward a body we could not read: the engine's parser might see a salt in it.
            raise Refusal(400, "gateway.invalid_body", "The request body must be a JSON object.", code="invalid_body")
        estimate = prompt_estimate = 0
        if tpm is not None:
            prompt_estimate = math.ceil(len(req.content) / 4)
            estimate = prompt_estimate + (_output_limit(doc) if doc is not None else 0)
        if tenant is not None:
            wait = self._rpm[tenant.id].take(1)
            if wait:
                raise _rate_limited(wait, "requests", tenant.requests_per_minute)
            if tpm is not None:
                wait = tpm.take(estimate)
                if wait:
                    self._rpm[tenant.id].settle(-1)  # refused: give the request back
                    raise _rate_limited(wait, "tokens", tenant.tokens_per_minute or 0)
        if doc is not None:
            changed = "cache_salt" in doc  # a client never picks its salt
            doc.pop("cache_salt", None)
            if salt:
                doc["cache_salt"] = self.cache_salt(tenant.id)  # type: ignore[union-attr]
                changed = True
            if changed:
                body = json.dumps(doc, separators=(",", ":")).encode()
        out = bhttp.Request(req.method, req.scheme, req.authority, req.path, req.headers, body, req.trailers)
        return Admission(out, tenant.id if tenant else None, tpm, estimate, prompt_estimate)


def _path(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/") or "/"


def _json_body(req: bhttp.Request) -> tuple[bytes, dict | None]:  # type: ignore[type-arg]
    """The body, and its JSON object when it is one (None for anything else)."""
    content = req.content
    if not content or content.lstrip()[:1] != b"{":
        return content, None
    try:
        doc = json.loads(content)
    except (ValueError, RecursionError):
        return content, None  # the engine answers malformed JSON itself
    return content, doc if isinstance(doc, dict) else None


def _rate_limited(wait: float, kind: str, limit: int) -> Refusal:
    seconds = max(1, math.ceil(wait))
    return Refusal(
        429,
        "tenant.rate_limited",
        f"Rate limit reached for {kind} per minute (limit {limit}); retry in {seconds} s.",
        code="rate_limit_exceeded",
        type_=kind,
        headers=[("retry-after", str(seconds)), ("retry-after-ms", str(math.ceil(wait * 1000)))],
    )
