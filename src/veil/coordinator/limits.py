"""Per-source rate limits for what unauthenticated callers can make the coordinator do.

An attestation costs work (and, unbatched, a hardware report); a challenge holds memory. Each
source (an IPv4 address, an IPv6 /64) gets a token bucket per endpoint, so a flood from some
sources cannot starve other callers; reports themselves are made one at a time, for every waiting
client at once (``batching.py``). Refusals are HTTP 429 with a reason code and Retry-After.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.requests import Request

from veil.errors import ProtocolError

MAX_SOURCES = 65_536


class RateLimited(ProtocolError):
    """Too many requests from one source (HTTP 429); ``retry_after`` in whole seconds."""

    def __init__(self, reason: str, message: str, retry_after: int = 1) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after


def source_of(request: Request) -> str:
    """The caller's address as the coordinator sees it; IPv6 grouped by /64 (one host's range)."""
    host = request.client.host if request.client else ""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class SourceLimiter:
    """A token bucket per source (``rate`` per second, ``burst`` deep), at most ``max_sources`` kept."""

    def __init__(
        self, reason: str, rate: float, burst: float, max_sources: int = MAX_SOURCES, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.reason, self.rate, self.burst = reason, rate, burst
        self._max, self._clock = max_sources, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, source: str) -> None:
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(source, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1:
                self._buckets[source] = (tokens, now)
                wait = max(1, math.ceil((1 - tokens) / self.rate))
                raise RateLimited(self.reason, "too many requests from this source; retry later", wait)
            self._buckets[source] = (tokens - 1, now)
            while len(self._buckets) > self._max:
                self._buckets.popitem(last=False)
