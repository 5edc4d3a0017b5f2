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


def test_nonce_store_bounded() -> None:
    store = NonceStore(max_outstanding=2)
    store.issue(), store.issue()
    with pytest.raises(ProtocolError):
        store.issue()


def test_binding_is_length_prefixed_and_domain_separated() -> None:
    assert bind(b"c", b"ab", b"c") != bind(b"c", b"a", b"bc")
    assert coordinator_report_data(b"n", b"k", b"m", b"c") != worker_report_data(b"n", b"k", b"")
    assert len(worker_report_data(b"n", b"k")) == 64
    check_report_data(worker_report_data(b"n", b"k"), worker_report_data(b"n", b"k"))
    with pytest.raises(VerificationError) as exc:
        check_report_data(worker_report_data(b"n", b"k"), worker_report_data(b"other", b"k"))
    assert exc.value.reason == "binding.report_data_mismatch"
