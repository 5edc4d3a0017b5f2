"""Refuse replayed OHTTP requests within a window (RFC 9458 §6.5, "Replay Attacks").

Two checks, as the RFC suggests:

* **A bounded cache of seen encapsulated keys.** Every client makes a fresh HPKE ephemeral key per
  request, so an ``enc`` seen twice is a replay. The key is *claimed* when the request header
  arrives (before any plaintext exists, so a replay costs no decryption), *kept* once the request
  authenticates, and *released* if it does not — so garbage cannot fill the cache, only requests
  that decrypt. Entries live ``2 × window`` seconds; the cache holds at most ``capacity`` of them.
* **A time inside the encryption.** The inner request's ``Date`` header (Veil's clients always send
  one; an on-path attacker cannot change it) must lie within ``window`` seconds of the worker's
  clock, else the answer is an encrypted 400 ``ohttp.date_out_of_window`` carrying the worker's
  own ``Date``, as RFC 9458 §6.5.1 describes, so a client with a skewed clock can correct it.
  A dated request is therefore refused everywhere once ``window`` has passed.

When a flood of valid requests fills the cache, the oldest entry is evicted early and its date
becomes a floor: no dated request at or before it is accepted again, so a dated request is never
replayable here. Standard clients that send no ``Date`` (ohttpy, most RFC 9458 clients) keep
working; their requests are protected by the cache alone — for ``2 × window`` seconds, or less
while the cache is under such a flood. See docs/threat-model.md for replays across workers.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from email.utils import formatdate, parsedate_tz, mktime_tz

from veil.errors import ProtocolError
from veil.ohttp import bhttp
from veil.worker.refusals import Refusal

DEFAULT_WINDOW = 60.0
DEFAULT_CAPACITY = 1 << 17  # ~1,000 requests/s sustained for 2 × 60 s; about 25 MiB at most


def _key(enc: bytes) -> bytes:
    return hashlib.blake2b(enc, digest_size=16).digest()  # X-Wing's enc is 1,120 bytes: keep 16


class ReplayGuard:
    """Seen encapsulated keys and the ``Date`` window; one per gateway process."""

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        capacity: int = DEFAULT_CAPACITY,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.capacity = capacity
        self._clock = clock
        self._monotonic = monotonic
        # key -> [expiry (monotonic), Date of the request (wall clock) or None]
        self._seen: OrderedDict[bytes, list[float | None]] = OrderedDict()
        self._floor = float("-inf")  # dated requests at or before this are refused (after evictions)

    def __len__(self) -> int:
        return len(self._seen)

    def claim(self, enc: bytes) -> bytes:
        """Record ``enc`` or refuse it as a replay (``ohttp.replayed``); returns the claim's key."""
        now = self._monotonic()
        self._expire(now)
        key = _key(enc)
        if key in self._seen:
            raise ProtocolError("ohttp.replayed", "this encapsulated request was seen before")
        while len(self._seen) >= self.capacity:
            _, (_, date) = self._seen.popitem(last=False)  # evicted early: its date becomes the floor
            if date is not None:
                self._floor = max(self._floor, date)
        self._seen[key] = [now + 2 * self.window, None]
        return key

    def release(self, key: bytes) -> None:
        """The claimed request did not authenticate: forget it (garbage never fills the cache)."""
        self._seen.pop(key, None)

    def check_date(self, key: bytes, headers: bhttp.Fields) -> None:
        """Refuse (encrypted) an inner request whose ``Date`` lies outside the window."""
        values = [v for n, v in headers if n == "date"]
        if not values:
            return
        parsed = parsedate_tz(values[0]) if len(values) == 1 else None
        if parsed is None:
            raise Refusal(400, "ohttp.bad_date", "The Date header is not an HTTP date.", code="bad_date")
        date = float(mktime_tz(parsed))
        now = self._clock()
        if abs(now - date) > self.window or date <= self._floor:
            raise Refusal(
                400,
                "ohttp.date_out_of_window",
                f"The request's Date is not within {self.window:.0f} s of the gateway's clock; "
                "resend with the time from this answer's Date header.",
                code="date_out_of_window",
                headers=[("date", formatdate(now, usegmt=True))],
            )
        entry = self._seen.get(key)
        if entry is not None:
            entry[1] = date

    def _expire(self, now: float) -> None:
        while self._seen:
            key, (expiry, _) = next(iter(self._seen.items()))
            if expiry is not None and expiry > now:
                return
            del self._seen[key]
