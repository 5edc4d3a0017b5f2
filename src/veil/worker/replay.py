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

The cache and its floor live in the worker's :class:`~veil.worker.shared_state.SharedState`, so
every gateway process of a worker refuses a replay that another one answered. The cache is
set-associative (8 entries per bucket), so "the oldest entry" evicted is the oldest of its bucket;
buckets are chosen by a hash keyed with a secret of the worker, so nobody can aim requests at the
bucket of a request they captured to evict it early. A chunked request's key is claimed when its
header arrives and confirmed (with its ``Date``) when its body is complete; every claim carries a
random tag of the request that made it, so if a flood evicts the claim in between and a copy
claims the same key meanwhile, the confirmation finds another request's tag and the original is
refused (``ohttp.replayed``, encrypted): exactly one of the two is answered, as if the host had
dropped the other — which it can always do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple
from email.utils import formatdate, parsedate_tz, mktime_tz

from veil.errors import ProtocolError
from veil.ohttp import bhttp
from veil.worker.refusals import Refusal
from veil.worker.shared_state import SharedState

DEFAULT_WINDOW = 60.0
DEFAULT_CAPACITY = 1 << 17  # ~1,000 requests/s sustained for 2 × 60 s; about 25 MiB at most


class Claim(NamedTuple):
    """A request's entry in the replay cache: the table key of its ``enc`` and its random tag."""

    key: bytes  # 16 bytes, keyed by the worker's secret (SharedState.digest)
    owner: int  # 64 random bits: tells this request's claim from a copy's


class ReplayGuard:
    """Seen encapsulated keys and the ``Date`` window, over the worker's shared table (``shared``;
    by default a table of its own, of ``capacity`` entries)."""

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        capacity: int = DEFAULT_CAPACITY,
        *,
        shared: SharedState | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.shared = shared if shared is not None else SharedState.create(capacity)
        self._clock = clock
        self._monotonic = monotonic

    def __len__(self) -> int:
        return self.shared.live(self._monotonic())

    def claim(self, enc: bytes) -> Claim:
        """Record ``enc`` or refuse it as a replay (``ohttp.replayed``); returns the claim."""
        now = self._monotonic()
        claim = Claim(self.shared.digest(enc), int.from_bytes(os.urandom(8), "little"))  # X-Wing's enc is 1,120 bytes: keep 16
        if not self.shared.claim(claim.key, claim.owner, now, now + 2 * self.window):
            raise ProtocolError("ohttp.replayed", "this encapsulated request was seen before")
        return claim

    def release(self, claim: Claim) -> None:
        """The claimed request did not authenticate: forget it (garbage never fills the cache)."""
        self.shared.release(claim.key, claim.owner)

    def check_date(self, claim: Claim, headers: bhttp.Fields) -> None:
        """Confirm the claim now that the request is whole, and refuse (encrypted) an inner
        request whose ``Date`` lies outside the window or whose claim a copy took meanwhile."""
        values = [v for n, v in headers if n == "date"]
        date: float | None = None
        now = self._clock()
        if values:
            parsed = parsedate_tz(values[0]) if len(values) == 1 else None
            if parsed is None:
                raise Refusal(400, "ohttp.bad_date", "The Date header is not an HTTP date.", code="bad_date")
            date = float(mktime_tz(parsed))
            if abs(now - date) > self.window:
                raise self._out_of_window(now)
        mono = self._monotonic()
        verdict = self.shared.confirm(claim.key, claim.owner, date, mono, mono + 2 * self.window)
        if verdict == "taken":
            raise Refusal(
                400, "ohttp.replayed", "A copy of this request claimed it while its body was arriving.", code="replayed"
            )
        if verdict == "floor":
            raise self._out_of_window(now)

    def _out_of_window(self, now: float) -> Refusal:
        return Refusal(
            400,
            "ohttp.date_out_of_window",
            f"The request's Date is not within {self.window:.0f} s of the gateway's clock; "
            "resend with the time from this answer's Date header.",
            code="date_out_of_window",
            headers=[("date", formatdate(now, usegmt=True))],
        )
