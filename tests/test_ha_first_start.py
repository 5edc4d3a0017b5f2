"""HA coordinators starting together on one empty PostgreSQL database end up with one state.

Three coordinators (threads here, each with its own connection pool, as three processes would
have) open the same fresh database at the same moment. Before the fix each created its own keys
and the last upsert won, leaving the others serving keys the database no longer holds; the
schema creation itself also collided in PostgreSQL's catalog. Now schema creation is serialised
by an advisory lock and the first state is inserted, never overwritten: the losers load it.
"""

from __future__ import annotations

import threading

from test_coordinator_postgres import attester, db_url, pg, sim_dir  # noqa: F401 - fixtures
from veil.coordinator.state import CoordinatorState
from veil.coordinator.store import Store


def test_coordinators_starting_together_share_one_state(db_url, attester) -> None:  # noqa: F811
    n = 3
    barrier = threading.Barrier(n)
    states: list[CoordinatorState] = []
    errors: list[BaseException] = []
    key = attester.sealing_key()

    def start() -> None:
        try:
            barrier.wait(timeout=30)
            states.append(CoordinatorState.open(Store.from_url(db_url), key))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(states) == n and not any(s.locked for s in states)
    assert len({s.hpke_key.private_bytes_raw() for s in states}) == 1
    assert len({s.ohttp_keys.encode_configs() for s in states}) == 1
    reopened = CoordinatorState.open(Store.from_url(db_url), key)
    assert reopened.hpke_key.private_bytes_raw() == states[0].hpke_key.private_bytes_raw()
    for s in [*states, reopened]:
        assert s.store is not None
        s.store.engine.dispose()
