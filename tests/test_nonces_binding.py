"""Challenges are single-use and expire; report_data binds every value, unambiguously."""

from __future__ import annotations

import pytest

from veil.attest.binding import bind, check_report_data, coordinator_report_data, worker_report_data
from veil.coordinator.nonces import NonceStore
from veil.errors import ProtocolError, VerificationError


def test_nonce_single_use() -> None:
    store = NonceStore()
    n = store.issue()
    store.consume(n)
    with pytest.raises(ProtocolError) as exc:
        store.consume(n)
    assert exc.value.reason == "nonce.unknown"


def test_nonce_expires() -> None:
    now = [0.0]
    store = NonceStore(ttl=10, clock=lambda: now[0])
    n = store.issue()
    now[0] = 11
    with pytest.raises(ProtocolError) as exc:
        store.consume(n)
    assert exc.value.reason == "nonce.expired"


def test_nonce_store_bounded_and_fair() -> None:
    """The pool never grows past its bound and never refuses: a source over its quota loses its own
    oldest challenge; a full pool loses the oldest challenge of its heaviest source."""
    store = NonceStore(max_outstanding=4, per_source=3)
    flood = [store.issue("10.0.0.1") for _ in range(10)]
    assert len(store) == 3
    for old in flood[:7]:
        with pytest.raises(ProtocolError):
            store.consume(old)
    others = [store.issue(f"10.0.1.{i}") for i in range(3)]  # the pool is full: the flooder pays
    assert len(store) == 4
    worker = store.issue("10.0.2.1")
    store.consume(worker)
    for n in others[1:]:
        store.consume(n)


def test_binding_is_length_prefixed_and_domain_separated() -> None:
    assert bind(b"c", b"ab", b"c") != bind(b"c", b"a", b"bc")
    assert coordinator_report_data(b"n", b"k", b"i", b"m", b"c") != worker_report_data(b"n", b"k", b"")
    assert coordinator_report_data(b"n", b"k", b"", b"m", b"c") != coordinator_report_data(b"n", b"k", b"m", b"", b"c")
    assert len(worker_report_data(b"n", b"k")) == 64
    check_report_data(worker_report_data(b"n", b"k"), worker_report_data(b"n", b"k"))
    with pytest.raises(VerificationError) as exc:
        check_report_data(worker_report_data(b"n", b"k"), worker_report_data(b"other", b"k"))
    assert exc.value.reason == "binding.report_data_mismatch"
