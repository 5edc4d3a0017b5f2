"""The replay guard: seen encapsulated keys, the Date window, bounded memory, and its floor."""

from __future__ import annotations

from email.utils import formatdate, parsedate_tz, mktime_tz

import pytest

from veil.errors import ProtocolError
from veil.worker.refusals import Refusal
from veil.worker.replay import ReplayGuard


class _Clocks:
    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 100.0

    def guard(self, **kw: object) -> ReplayGuard:
        return ReplayGuard(clock=lambda: self.wall, monotonic=lambda: self.mono, **kw)  # type: ignore[arg-type]

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def _date(t: float) -> list[tuple[str, str]]:
    return [("date", formatdate(t, usegmt=True))]


def test_seen_keys_are_refused_until_they_expire() -> None:
    c = _Clocks()
    g = c.guard(window=60)
    g.claim(b"A" * 32)
    with pytest.raises(ProtocolError) as e:
        g.claim(b"A" * 32)
    assert e.value.reason == "ohttp.replayed"
    c.advance(119)
    with pytest.raises(ProtocolError):
        g.claim(b"A" * 32)  # kept 2 x window: a dated request is refused by its Date after that
    c.advance(2)
    g.claim(b"A" * 32)
    assert len(g) == 1


def test_released_claims_do_not_stay() -> None:
    g = _Clocks().guard()
    key = g.claim(b"B" * 32)
    g.release(key)  # it did not authenticate
    g.claim(b"B" * 32)


def test_date_window() -> None:
    c = _Clocks()
    g = c.guard(window=60)
    key = g.claim(b"C" * 32)
    g.check_date(key, [])  # no Date (standard clients): the cache alone protects it
    g.check_date(key, _date(c.wall - 59))
    for skew in (-61, 61):
        with pytest.raises(Refusal) as e:
            g.check_date(key, _date(c.wall + skew))
        assert e.value.status == 400 and e.value.reason == "ohttp.date_out_of_window"
        served = dict(e.value.headers)["date"]  # RFC 9458 §6.5.1: the gateway's time, to correct a skew
        assert abs(mktime_tz(parsedate_tz(served)) - c.wall) <= 1  # type: ignore[arg-type]
    for bad in ([("date", "yesterday")], _date(c.wall) * 2):
        with pytest.raises(Refusal) as e:
            g.check_date(key, bad)
        assert e.value.reason == "ohttp.bad_date"


def test_capacity_is_bounded_and_evictions_raise_a_floor() -> None:
    c = _Clocks()
    g = c.guard(window=60, capacity=4)
    first = g.claim(b"0" * 32)
    g.check_date(first, _date(c.wall))
    for i in range(1, 6):
        c.advance(1)
        g.check_date(g.claim(bytes([i]) * 32), _date(c.wall))
    assert len(g) == 4  # the oldest were evicted early ...
    key = g.claim(b"0" * 32)  # ... so the first request's key is no longer known,
    with pytest.raises(Refusal) as e:  # but its Date is at or before the floor: still refused
        g.check_date(key, _date(c.wall - 5))
    assert e.value.reason == "ohttp.date_out_of_window"
    g.check_date(key, _date(c.wall))  # a fresh request is unaffected


def _flood(g: ReplayGuard, date: float) -> None:
    """Four valid requests: with a cache of 4 they evict every earlier claim."""
    for i in range(4):
        g.check_date(g.claim(bytes([i]) * 32), _date(date))


@pytest.mark.parametrize("dated", [True, False])
def test_a_copy_of_a_request_evicted_mid_body_is_answered_at_most_once(dated: bool) -> None:
    """The attacker floods the cache while a captured chunked request's body is still arriving,
    evicting its claim, and sends a copy: only one of the two may be answered."""
    c = _Clocks()
    g = c.guard(window=60, capacity=4)  # one bucket of 4: every key collides
    original = g.claim(b"O" * 32)  # the header arrived; the body is still coming
    _flood(g, c.wall - 10)  # valid requests, dated earlier (the floor stays below), evict its claim
    copy = g.claim(b"O" * 32)  # the copy's header: the key is free again, so it is claimed
    headers = _date(c.wall) if dated else []
    g.check_date(copy, headers)  # the copy's body completes first: answered
    with pytest.raises(Refusal) as e:  # the original finds its claim taken by the copy
        g.check_date(original, headers)
    assert e.value.reason == "ohttp.replayed"


def test_an_evicted_claim_not_taken_is_made_again_and_a_copy_is_refused() -> None:
    c = _Clocks()
    g = c.guard(window=60, capacity=4)
    original = g.claim(b"O" * 32)
    _flood(g, c.wall)
    g.check_date(original, [])  # the body completes: its claim is made again ...
    with pytest.raises(ProtocolError) as e:  # ... so a copy arriving now is refused at its header
        g.claim(b"O" * 32)
    assert e.value.reason == "ohttp.replayed"


def test_a_request_that_fails_cannot_release_a_copys_claim() -> None:
    c = _Clocks()
    g = c.guard(window=60, capacity=4)
    original = g.claim(b"O" * 32)
    _flood(g, c.wall)
    g.claim(b"O" * 32)  # a copy holds the key now
    g.release(original)  # the original then fails to authenticate: the copy's claim stays
    with pytest.raises(ProtocolError):
        g.claim(b"O" * 32)
