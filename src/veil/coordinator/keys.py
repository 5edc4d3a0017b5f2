"""OHTTP key rotation: generations of key pairs, released to workers before clients use them.

A new generation starts on every manifest change and when the newest one is older than the
rotation interval. It is *pending* at first: released to the workers the manifest admits at their
next registration, but not yet attested. After the promotion delay (longer than the workers'
re-registration interval) it becomes *current*: attested first, so clients encrypt to it, and by
then every admitted worker holds it. A worker the manifest no longer admits is refused at
re-registration and never receives it. The generation it replaces stays live (attested after the
current one, released, accepted by gateways) for a grace period, so requests already encrypted to
it still open, then it is dropped everywhere.

Every generation's pairs come from ``veil.ohttp.keyconfig.new_generation(number)`` (X25519 and
X-Wing, under ``key_ids_for(number)``). Generation numbers only grow; RFC 9458 key ids are one byte,
so they wrap around, and a new generation never takes an id a live one holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from veil import keyrelease
from veil.errors import PolicyError
from veil.ohttp.keyconfig import KeyPair, KeyStore, new_generation

DEFAULT_ROTATION_SECONDS = 24 * 3600.0
DEFAULT_PROMOTION_SECONDS = 90.0  # > workers' re-registration interval (60 s by default)
DEFAULT_GRACE_SECONDS = 900.0  # > clients' re-verification interval


@dataclass(frozen=True)
class Rotation:
    """How often keys rotate, how long a new generation waits for the workers, how long an old
    one is still accepted (seconds)."""

    every: float = DEFAULT_ROTATION_SECONDS
    promotion: float = DEFAULT_PROMOTION_SECONDS
    grace: float = DEFAULT_GRACE_SECONDS


@dataclass(frozen=True)
class Generation:
    number: int
    created_at: float
    pairs: tuple[KeyPair, ...]
    current_from: float  # when it becomes the one clients encrypt to

    @classmethod
    def create(cls, number: int, now: float, live_ids: set[int], promotion: float = 0.0) -> "Generation":
        pairs = tuple(new_generation(number))
        if any(p.key_id in live_ids for p in pairs):  # 256 generations inside one grace period
            raise PolicyError("keys.id_exhausted", "every OHTTP key id is held by a live generation")
        return cls(number, now, pairs, now + promotion)

    def to_record(self) -> dict[str, Any]:
        """JSON-ready, private keys included: only ever stored sealed."""
        return {
            "number": self.number,
            "created_at": self.created_at,
            "current_from": self.current_from,
            "pairs": keyrelease.export_ohttp_keys(KeyStore(self.pairs)),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Generation":
        store = keyrelease.import_ohttp_keys(record["pairs"])
        created = float(record["created_at"])
        return cls(
            int(record["number"]),
            created,
            tuple(store.get(c.key_id) for c in store.configs()),
            float(record.get("current_from", created)),
        )


class KeyRing:
    """The generations a coordinator holds, oldest first."""

    def __init__(self, generations: list[Generation], rotation: Rotation = Rotation()) -> None:
        if not generations:
            raise ValueError("a key ring holds at least one generation")
        self.generations = sorted(generations, key=lambda g: g.number)
        self.rotation = rotation

    def with_generations(self, generations: list[Generation]) -> "KeyRing":
        return KeyRing(generations, self.rotation)

    @property
    def newest(self) -> Generation:
        return self.generations[-1]

    def current(self, now: float) -> Generation:
        """The newest generation already promoted (the oldest one if none is yet)."""
        promoted = [g for g in self.generations if g.current_from <= now]
        return promoted[-1] if promoted else self.generations[0]

    def attested(self, now: float) -> list[Generation]:
        """What clients may encrypt to: the current generation first, then older ones in their grace."""
        current = self.current(now)
        out = [current]
        older = [g for g in self.generations if g.number < current.number]
        for g, successor in reversed(list(zip(older, self.generations[1:]))):
            if now < successor.current_from + self.rotation.grace:
                out.append(g)
        return out

    def released(self, now: float) -> list[Generation]:
        """What admitted workers hold: pending generations too (after the current one, which stays
        first for standard clients reading a worker's own key list), so they have them before clients."""
        attested = self.attested(now)
        pending = [g for g in self.generations if g.number > attested[0].number]
        return [attested[0], *pending, *attested[1:]]

    def expired(self, now: float) -> list[int]:
        live = {g.number for g in self.released(now)}
        return [g.number for g in self.generations if g.number not in live]

    def rotation_due(self, now: float) -> bool:
        return now >= self.newest.created_at + self.rotation.every

    def next_generation(self, now: float) -> Generation:
        live_ids = {p.key_id for g in self.released(now) for p in g.pairs}
        return Generation.create(self.newest.number + 1, now, live_ids, self.rotation.promotion)

    def key_store(self, now: float, *, for_workers: bool = False) -> KeyStore:
        """The attested key pairs, current first (standard clients take the first configuration);
        ``for_workers`` adds the pending generations."""
        chosen = self.released(now) if for_workers else self.attested(now)
        return KeyStore(p for g in chosen for p in g.pairs)
