"""Single-use, short-lived challenges for worker attestation (replay and staleness protection)."""

from __future__ import annotations

import os
import threading
import time

from veil.errors import ProtocolError

NONCE_BYTES = 32


class NonceStore:
    """Issues random nonces and accepts each exactly once within ``ttl`` seconds."""

    def __init__(self, ttl: float = 60.0, max_outstanding: int = 10_000, clock=time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_outstanding
        self._clock = clock
        self._issued: dict[bytes, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> bytes:
        with self._lock:
            self._expire()
            if len(self._issued) >= self._max:
                raise ProtocolError("nonce.too_many_outstanding", "too many open challenges; retry later")
            nonce = os.urandom(NONCE_BYTES)
            self._issued[nonce] = self._clock() + self._ttl
            return nonce

    def consume(self, nonce: bytes) -> None:
        """Accept a nonce once; unknown, reused or expired nonces are refused."""
        with self._lock:
            deadline = self._issued.pop(nonce, None)
            if deadline is None:
                raise ProtocolError("nonce.unknown", "challenge unknown or already used (replay?)")
            if self._clock() > deadline:
                raise ProtocolError("nonce.expired", "challenge expired; request a new one")

    def _expire(self) -> None:
        now = self._clock()
        for n in [n for n, d in self._issued.items() if d < now]:
            del self._issued[n]
