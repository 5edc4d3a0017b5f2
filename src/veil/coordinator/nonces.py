"""Single-use, short-lived challenges (replay and staleness protection), fair under a flood.

Each source (an IPv4 address, an IPv6 /64) holds at most ``per_source`` open challenges; asking
for more drops its own oldest. When the whole pool is full, the oldest challenge of the source
holding the most goes. So no flood, from one source or many, can leave a legitimate worker without
a challenge it can use: at worst it asks again, and its fresh challenge stands.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from veil.errors import ProtocolError

NONCE_BYTES = 32


class NonceStore:
    """Issues random nonces and accepts each exactly once within ``ttl`` seconds."""

    def __init__(
        self, ttl: float = 60.0, max_outstanding: int = 10_000, per_source: int = 16, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_outstanding < 1 or per_source < 1:
            raise ValueError("the pool and the per-source quota hold at least one challenge")
        self.ttl = ttl
        self._max = max_outstanding
        self._per_source = per_source
        self._clock = clock
        self._issued: OrderedDict[bytes, tuple[float, str]] = OrderedDict()  # issue order = deadline order
        self._by_source: dict[str, OrderedDict[bytes, None]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, source: str = "") -> bytes:
        with self._lock:
            self._expire()
            mine = self._by_source.get(source)
            if mine is not None and len(mine) >= self._per_source:
                self._drop(next(iter(mine)))
            elif len(self._issued) >= self._max:
                heaviest = max(self._by_source.values(), key=len)
                self._drop(next(iter(heaviest)))
            nonce = os.urandom(NONCE_BYTES)
            self._issued[nonce] = (self._clock() + self.ttl, source)
            self._by_source.setdefault(source, OrderedDict())[nonce] = None
            return nonce

    def consume(self, nonce: bytes) -> None:
        """Accept a nonce once; unknown, reused or expired nonces are refused."""
        with self._lock:
            entry = self._issued.get(nonce)
            if entry is None:
                raise ProtocolError("nonce.unknown", "challenge unknown or already used (replay?)")
            self._drop(nonce)
            if self._clock() > entry[0]:
                raise ProtocolError("nonce.expired", "challenge expired; request a new one")

    def _drop(self, nonce: bytes) -> None:
        _, source = self._issued.pop(nonce)
        mine = self._by_source[source]
        del mine[nonce]
        if not mine:
            del self._by_source[source]

    def _expire(self) -> None:
        now = self._clock()
        while self._issued:
            nonce, (deadline, _) = next(iter(self._issued.items()))
            if deadline >= now:
                return
            self._drop(nonce)
