"""OHTTP key rotation: generations released to workers before clients use them, the grace period,
one-byte key ids wrapping around, rotation persisted in the sealed state and agreed between
coordinators sharing a database."""

from __future__ import annotations

import os

import pytest

from veil.coordinator.keys import Generation, KeyRing, Rotation
from veil.coordinator.state import CoordinatorState
from veil.coordinator.store import Store
from veil.errors import PolicyError
from veil.ohttp.keyconfig import key_ids_for

DAY, PROMOTION, GRACE = 86400.0, 90.0, 900.0
ROTATION = Rotation(every=DAY, promotion=PROMOTION, grace=GRACE)


def _ids(generations: list[Generation]) -> list[int]:
    return [g.number for g in generations]


def test_a_new_generation_reaches_workers_first_then_clients_then_the_old_one_goes() -> None:
    ring = KeyRing([Generation.create(1, 0.0, set())], ROTATION)
    assert not ring.rotation_due(DAY - 1) and ring.rotation_due(DAY)
    ring = ring.with_generations([*ring.generations, ring.next_generation(DAY)])
    assert _ids(ring.attested(DAY + 1)) == [1]  # pending: clients keep the current key...
    assert _ids(ring.released(DAY + 1)) == [1, 2]  # ...while workers already receive the new one
    assert [c.key_id for c in ring.key_store(DAY + 1, for_workers=True).configs()] == [2, 3, 4, 5]  # current first
    promoted = DAY + PROMOTION
    assert _ids(ring.attested(promoted)) == [2, 1]  # current first, the old one in its grace
    assert ring.expired(promoted + GRACE - 1) == [] and ring.expired(promoted + GRACE) == [1]
    assert _ids(ring.released(promoted + GRACE)) == [2]


def test_key_ids_wrap_around_and_never_collide_with_a_live_one() -> None:
    assert [key_ids_for(n) for n in (1, 127, 128, 129)] == [(2, 3), (254, 255), (0, 1), (2, 3)]
    ring = KeyRing([Generation.create(n, 0.0, set()) for n in range(128)], ROTATION)  # all in their grace
    with pytest.raises(PolicyError) as exc:
        ring.next_generation(1.0)
    assert exc.value.reason == "keys.id_exhausted"
    old = KeyRing([Generation.create(n, float(n), set()) for n in range(126, 128)], ROTATION)
    assert old.next_generation(2000.0).pairs[0].key_id == 0


def test_state_rotates_on_its_timer_and_drops_after_the_grace() -> None:
    state = CoordinatorState.generate(rotation=Rotation(every=100.0, promotion=5.0, grace=10.0))
    first = state.keys.newest.created_at
    state.maintain(now=first + 50)
    assert state.keys.newest.number == 0
    state.maintain(now=first + 100)
    assert _ids(state.keys.released(first + 101)) == [0, 1] and _ids(state.keys.attested(first + 101)) == [0]
    assert _ids(state.keys.attested(first + 106)) == [1, 0]
    state.maintain(now=first + 116)
    assert _ids(state.keys.generations) == [1]


def test_rotation_is_sealed_persisted_and_shared(tmp_path) -> None:
    url, platform_key = f"sqlite:///{tmp_path / 'c.db'}", os.urandom(32)
    rotation = Rotation(every=100.0, promotion=0.0, grace=1e6)
    one = CoordinatorState.open(Store.from_url(url), platform_key, rotation=rotation)
    two = CoordinatorState.open(Store.from_url(url), platform_key, rotation=rotation)
    start = one.keys.newest.created_at
    one.maintain(now=start + 100)
    assert one.keys.newest.number == 1
    fresh = two.refresh

    def stale_once() -> None:  # two does not see one's rotation before it decides: it rotates too,
        two.refresh = fresh  # loses the race for generation 1 (a unique row) and adopts one's

    two.refresh = stale_once
    two.maintain(now=start + 100.5)
    assert two.keys.newest.number == 1
    assert two.released_keys.encode_configs() == one.released_keys.encode_configs()
    again = CoordinatorState.open(Store.from_url(url), platform_key, rotation=rotation)
    assert _ids(again.keys.generations) == [0, 1]
    assert again.keys.newest.pairs[0].private_bytes() == one.keys.newest.pairs[0].private_bytes()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("c.db*"))
    assert one.keys.newest.pairs[0].private_bytes() not in raw  # sealed at rest
