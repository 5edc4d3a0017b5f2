"""What the gateway processes of one worker share: the replay cache and the tenants' token buckets.

Several gateway processes serve one port (``veil.worker.pool``). A replayed request must be
refused whichever process it reaches, and a tenant's limits must hold across all of them, so both
live in one table in shared memory rather than in each process: an anonymous ``memfd`` (it has
no name, so no other process can open it, and it is never on disk) that every gateway process of
the worker maps, sealed against resizing, under one lock. The lock is a POSIX record lock on the
memfd, which the kernel releases if its holder dies (a killed process cannot wedge the others),
taken under a thread lock, since record locks exclude processes, not threads. Every gateway has
such a table; with one process nobody else maps it.

Written by hand: the standard library's ``multiprocessing.shared_memory`` makes *named*
segments (in ``/dev/shm``, openable by any process of the user) and offers no lock that survives
a killed holder; no maintained library offers a fixed-size cross-process hash table.

Layout (little-endian): a 64-byte header (magic, table sizes, the replay floor, the secret key of
the table's hash), then the replay
table — ``buckets × ways`` entries of ``key[16] expiry:f64 date:f64 owner:u64`` (``expiry`` on the
monotonic clock, 0 = free; ``date`` NaN = none; ``owner`` a random tag of the request that made
the claim) — then the token buckets, ``slots`` entries of
``key[16] level:f64 stamp:f64`` (key zero = free). All times are CLOCK_MONOTONIC / wall seconds,
the same in every process.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from veil.errors import PolicyError, ProtocolError

_MAGIC = b"VEILSHM1"
_HEADER = struct.Struct("<8sIIId16s")  # magic, replay buckets, replay ways, bucket slots, floor, hash key
_HEADER_SIZE = 64
_FLOOR_AT = 20  # offset of the floor within the header
_ENTRY = struct.Struct("<16sdd")  # bucket: key, level, stamp
_CLAIM = struct.Struct("<16sddQ")  # replay: key, expiry, date, owner
_FLOOR = struct.Struct("<d")
_DOUBLE = struct.Struct("<d")
_EMPTY_KEY = bytes(16)
_WAYS = 8
DEFAULT_BUCKET_SLOTS = 1 << 14


class SharedState:
    """One worker's shared table; :meth:`create` it in the first process, :meth:`attach` in others."""

    def __init__(self, fd: int, mapping: mmap.mmap) -> None:
        self.fd = fd
        self._mm = mapping
        magic, buckets, ways, slots, _, self._hash_key = _HEADER.unpack_from(mapping, 0)
        self.replay_buckets: int = buckets
        self.replay_ways: int = ways
        self.bucket_slots: int = slots
        if magic != _MAGIC:
            raise ProtocolError("gateway.shared_state_malformed", "the shared gateway table is not one")
        self._buckets_at: int = _HEADER_SIZE + self.replay_buckets * self.replay_ways * _CLAIM.size
        self._thread_lock = threading.Lock()
        weakref.finalize(self, _release, mapping, fd)  # a gateway made and dropped (tests) leaks nothing

    @classmethod
    def create(cls, replay_capacity: int, bucket_slots: int = DEFAULT_BUCKET_SLOTS) -> "SharedState":
        ways = max(1, min(_WAYS, replay_capacity))
        buckets = max(1, replay_capacity // ways)
        size = _HEADER_SIZE + buckets * ways * _CLAIM.size + bucket_slots * _ENTRY.size
        fd = os.memfd_create("veil-gateway-shared", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        mapping = mmap.mmap(fd, size)
        _HEADER.pack_into(mapping, 0, _MAGIC, buckets, ways, bucket_slots, float("-inf"), os.urandom(16))
        return cls(fd, mapping)

    @classmethod
    def attach(cls, fd: int) -> "SharedState":
        """Map the table another gateway process created (its memfd, inherited; ``fd`` is
        duplicated, so the caller keeps its own)."""
        own = os.dup(fd)
        return cls(own, mmap.mmap(own, os.fstat(own).st_size))

    def digest(self, data: bytes) -> bytes:
        """The table key for ``data``: keyed by a secret of this worker, so nobody outside can
        aim many requests at one bucket to evict a chosen entry early."""
        return hashlib.blake2b(data, key=self._hash_key, digest_size=16).digest()

    @property
    def replay_capacity(self) -> int:
        return self.replay_buckets * self.replay_ways

    @contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN)

    # -- the replay cache (veil.worker.replay decides; this stores) -----------------------------

    def _ways(self, key: bytes) -> range:
        start = _HEADER_SIZE + (int.from_bytes(key[:8], "little") % self.replay_buckets) * self.replay_ways * _CLAIM.size
        return range(start, start + self.replay_ways * _CLAIM.size, _CLAIM.size)

    def claim(self, key: bytes, owner: int, now: float, expiry: float) -> bool:
        """Record ``key`` for request ``owner`` (live until ``expiry``); False if it is already
        live. When its bucket is full, the oldest entry there is evicted early and its date (if
        any) raises the floor."""
        with self.locked():
            return self._claim(key, owner, now, expiry) >= 0

    def _claim(self, key: bytes, owner: int, now: float, expiry: float) -> int:
        """The entry now holding ``owner``'s claim of ``key``, or -1 if ``key`` is live (locked)."""
        mm = self._mm
        free = oldest = -1
        oldest_expiry = math.inf
        oldest_date = math.nan
        for at in self._ways(key):
            seen, until, date, _ = _CLAIM.unpack_from(mm, at)
            if until <= now:
                if free < 0:
                    free = at
            elif seen == key:
                return -1
            elif until < oldest_expiry:
                oldest, oldest_expiry, oldest_date = at, until, date
        if free < 0:
            free = oldest
            if not math.isnan(oldest_date):
                self._raise_floor(oldest_date)
        _CLAIM.pack_into(mm, free, key, expiry, math.nan, owner)
        return free

    def release(self, key: bytes, owner: int) -> None:
        """Forget ``owner``'s claim of ``key`` (never another request's claim of the same key)."""
        with self.locked():
            for at in self._ways(key):
                seen, _, _, holder = _CLAIM.unpack_from(self._mm, at)
                if seen == key and holder == owner:
                    _CLAIM.pack_into(self._mm, at, _EMPTY_KEY, 0.0, math.nan, 0)

    def confirm(self, key: bytes, owner: int, date: float | None, now: float, expiry: float) -> str:
        """Confirm, once the request is whole, that ``owner`` still holds its claim of ``key``,
        recording its inner ``Date`` (None: it sent none). Returns ``"ok"``, ``"floor"`` (the date
        lies at or before the floor) or ``"taken"``: a flood evicted the claim while the body was
        arriving and another request with the same key claimed it meanwhile — a copy, so exactly
        one of the two is answered. A claim evicted and not taken is made again (its date is kept)."""
        mm = self._mm
        with self.locked():
            if date is not None and date <= self.floor():
                return "floor"
            for at in self._ways(key):
                seen, until, _, holder = _CLAIM.unpack_from(mm, at)
                if seen == key and until > now:
                    if holder != owner:
                        return "taken"
                    if date is not None:
                        _DOUBLE.pack_into(mm, at + 24, date)
                    return "ok"
            at = self._claim(key, owner, now, expiry)  # evicted and not taken: claimed again (no live key)
            if date is not None:
                _DOUBLE.pack_into(mm, at + 24, date)
            return "ok"

    def floor(self) -> float:
        """Dated requests at or before this are refused (raised by early evictions)."""
        value: float = _FLOOR.unpack_from(self._mm, _FLOOR_AT)[0]
        return value

    def _raise_floor(self, date: float) -> None:
        if date > self.floor():
            _FLOOR.pack_into(self._mm, _FLOOR_AT, date)

    def live(self, now: float) -> int:
        """How many replay entries are live (for tests and metrics; scans the whole table)."""
        end = _HEADER_SIZE + self.replay_capacity * _CLAIM.size
        with self.locked():
            return sum(1 for at in range(_HEADER_SIZE, end, _CLAIM.size) if _DOUBLE.unpack_from(self._mm, at + 16)[0] > now)

    # -- token buckets (veil.worker.tenants decides; this stores) -------------------------------

    def bucket_slot(self, key: bytes, level: float, stamp: float) -> int:
        """The slot of bucket ``key``, made with ``level`` and ``stamp`` if it is new (open
        addressing; a full table refuses, so no tenant's limit is ever silently reset)."""
        mm = self._mm
        start = int.from_bytes(key[:8], "little") % self.bucket_slots
        with self.locked():
            for probe in range(self.bucket_slots):
                at = self._buckets_at + ((start + probe) % self.bucket_slots) * _ENTRY.size
                seen = mm[at : at + 16]
                if seen == key:
                    return at
                if seen == _EMPTY_KEY:
                    _ENTRY.pack_into(mm, at, key, level, stamp)
                    return at
        raise PolicyError("tenant.too_many_limits", "the gateway's table of tenant limits is full")

    def read_bucket(self, at: int) -> tuple[float, float]:
        _, level, stamp = _ENTRY.unpack_from(self._mm, at)
        return level, stamp

    def write_bucket(self, at: int, level: float, stamp: float) -> None:
        _DOUBLE.pack_into(self._mm, at + 16, level)
        _DOUBLE.pack_into(self._mm, at + 24, stamp)


def _release(mapping: mmap.mmap, fd: int) -> None:
    mapping.close()
    os.close(fd)
