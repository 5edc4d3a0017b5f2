"""Staying fresh: re-verify the deployment on an interval and whenever the gateway objects.

A verification is a snapshot. The manifest can change under a running client (a new worker
platform, another sandbox, a rotated OHTTP key), so ``veil.Client``, ``veil.AsyncClient`` and
``veil proxy`` hold a verifier instead of a verdict:

* it re-verifies when the last verification is older than ``interval`` seconds, and at once when
  the gateway refuses a request in the clear (an unknown key id, a failed decryption);
* once a verification fails, nothing is forwarded: every request raises that refusal (with its
  reason code) until a later verification succeeds (retried after ``RETRY_SECONDS``);
* it hands the transport only key configurations of its *current* attestation, and a request the
  gateway refused for an unknown key id is re-sent once, to the newly attested key;
* :meth:`status` is the latest verification with its time, or the refusal with its reason
  (what ``GET /veil/verification`` serves).

``Reverifier`` (threads) and ``AsyncReverifier`` (asyncio) are the transports' key sources
(``veil.client.transport.KeySource``); they share the bookkeeping in ``_Freshness``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx

from veil.client.manifest_log import ManifestLog
from veil.client.policy import ClientPolicy
from veil.client.transport import GatewayRefused
from veil.client.verify import AttestedCoordinator, averify_coordinator, verify_coordinator
from veil.errors import VeilError, VerificationError
from veil.ohttp.keyconfig import KeyConfig

DEFAULT_INTERVAL = 60.0  # seconds between re-verifications (the workers re-attest every 60 s too)
RETRY_SECONDS = 5.0  # after a refusal, how soon the next request may try again


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Freshness:
    """The latest outcome and when it is due again; no I/O."""

    def __init__(
        self,
        policy: ClientPolicy,
        manifest_log: ManifestLog | None,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("the re-verification interval must be positive")
        self.policy = policy
        self.manifest_log = manifest_log
        self.interval = interval
        self._clock = clock
        self.latest: AttestedCoordinator | None = None
        self.refusal: VeilError | None = None
        self.checked_at: datetime | None = None
        self._checked: float | None = None
        self.verifications = 0

    def seconds_until_due(self) -> float:
        if self._checked is None:
            return 0.0
        wait = self.interval if self.refusal is None else min(self.interval, RETRY_SECONDS)
        return max(0.0, self._checked + wait - self._clock())

    def _record(self, attested: AttestedCoordinator | None, refusal: VeilError | None) -> None:
        self._checked, self.checked_at = self._clock(), _now()
        self.verifications += 1
        self.latest, self.refusal = (attested, None) if attested is not None else (None, refusal)

    def _refuse(self, exc: Exception) -> VeilError:
        """Remember a failed verification; anything unexpected is a refusal too (fail closed)."""
        err = (
            exc
            if isinstance(exc, VeilError)
            else VerificationError("client.verification_error", f"verification failed unexpectedly: {type(exc).__name__}")
        )
        self._record(None, err)
        return err

    def _usable(self) -> AttestedCoordinator:
        if self.refusal is not None:
            raise self.refusal
        assert self.latest is not None
        return self.latest

    def _retry_config(self, sent: KeyConfig, err: GatewayRefused) -> KeyConfig | None:
        fresh = self._usable().key_config
        return fresh if err.reason == "ohttp.unknown_key_id" and fresh != sent else None

    def status(self) -> dict[str, Any]:
        """The latest verification with its time, or the refusal with its reason (JSON)."""
        due = self.seconds_until_due()
        return {
            "status": "verified" if self.latest is not None else ("refused" if self.refusal else "pending"),
            "checked_at": self.checked_at.isoformat(timespec="seconds") if self.checked_at else None,
            "next_check_at": (_now() + timedelta(seconds=due)).isoformat(timespec="seconds"),
            "interval_seconds": self.interval,
            "verifications": self.verifications,
            "verification": self.latest.to_json() if self.latest is not None else None,
            "refusal": self.refusal.to_json() if self.refusal is not None else None,
            "admission": self.policy.admission_rules(),
            # what the coordinator's evidence is judged against: this client's pinned reference values
            "pinned_coordinator": [r.model_dump(mode="json", exclude_none=True) for r in self.policy.coordinator],
            # the manifest digests this client has accepted, oldest first (each extends the one before)
            "manifest_history": self.manifest_log.seen(self.policy.coordinator_url) if self.manifest_log else None,
        }


class Reverifier(_Freshness):
    """Keeps a deployment verified for synchronous callers (thread-safe); a ``KeySource``."""

    def __init__(
        self,
        policy: ClientPolicy,
        *,
        manifest_log: ManifestLog | None = None,
        interval: float = DEFAULT_INTERVAL,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(policy, manifest_log, interval, clock)
        self._http = http
        self._lock = threading.Lock()

    def verify(self) -> AttestedCoordinator:
        """Verify now; raises the refusal (and remembers it) when the deployment does not verify."""
        with self._lock:
            return self._verify()

    def _verify(self) -> AttestedCoordinator:
        try:
            attested = verify_coordinator(self.policy, http=self._http, manifest_log=self.manifest_log)
        except Exception as exc:
            raise self._refuse(exc) from None
        self._record(attested, None)
        return attested

    def current(self) -> AttestedCoordinator:
        """The latest verification, re-verified first when due; raises once verification failed."""
        with self._lock:
            if self.seconds_until_due() <= 0:
                try:
                    self._verify()
                except VeilError:
                    pass  # remembered; raised below
            return self._usable()

    def config(self) -> KeyConfig:
        return self.current().key_config

    def refused(self, config: KeyConfig, err: GatewayRefused) -> KeyConfig | None:
        with self._lock:
            self._verify()
            return self._retry_config(config, err)


class AsyncReverifier(_Freshness):
    """Keeps a deployment verified for asyncio callers without blocking the loop; an ``AsyncKeySource``.

    ``run()`` re-verifies on schedule in the background (the proxy runs it), so a deployment that
    stops verifying is refused within one interval even when no request arrives.
    """

    def __init__(
        self,
        policy: ClientPolicy,
        *,
        manifest_log: ManifestLog | None = None,
        interval: float = DEFAULT_INTERVAL,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(policy, manifest_log, interval, clock)
        self._http = http
        self._lock = asyncio.Lock()

    async def verify(self) -> AttestedCoordinator:
        async with self._lock:
            return await self._verify()

    async def _verify(self) -> AttestedCoordinator:
        try:
            attested = await averify_coordinator(self.policy, http=self._http, manifest_log=self.manifest_log)
        except Exception as exc:
            raise self._refuse(exc) from None
        self._record(attested, None)
        return attested

    async def current(self) -> AttestedCoordinator:
        async with self._lock:
            if self.seconds_until_due() <= 0:
                try:
                    await self._verify()
                except VeilError:
                    pass  # remembered; raised below
            return self._usable()

    async def config(self) -> KeyConfig:
        return (await self.current()).key_config

    async def refused(self, config: KeyConfig, err: GatewayRefused) -> KeyConfig | None:
        async with self._lock:
            await self._verify()
            return self._retry_config(config, err)

    async def run(self) -> None:
        """Re-verify whenever due, forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.seconds_until_due())
            try:
                await self.current()
            except VeilError:
                pass  # status() and every request now show the refusal
