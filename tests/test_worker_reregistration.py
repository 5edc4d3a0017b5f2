"""The worker's re-attestation loop, in-process: it survives anything, counts failures, stops after
a bound (fail closed), stops at once on a verdict, and takes the keys each registration brings.

The same behaviour against real coordinator and worker processes: tests/attacks/test_worker_*.py.
"""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from veil import keyrelease
from veil.errors import VeilError
from veil.manifest import Manifest, ModelEntry, ReferenceValues, TenantEntry
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.worker import serve
from veil.worker.gateway import create_gateway_app
from veil.worker.registration import RegistrationRefused, ReleasedSecrets

ENTRY = ModelEntry(name="m", sha256="00" * 32)


def _keeper(monkeypatch: pytest.MonkeyPatch, answers: list[object]) -> tuple[serve.Reregistration, object, SimpleNamespace]:
    """A Reregistration whose registrations return or raise ``answers`` in turn."""
    app = create_gateway_app(KeyStore([KeyPair.generate(1)]), httpx.AsyncClient(base_url="http://engine"))
    server = SimpleNamespace(should_exit=False)
    config = serve.WorkerConfig("http://coordinator.invalid", "127.0.0.1", 0, None, Path("/nonexistent"))
    first = ReleasedSecrets("w1", "d1", [], {})
    keeper = serve.Reregistration(config, None, app, server, first, ENTRY)  # type: ignore[arg-type]

    def register(*args: object, **kwargs: object) -> ReleasedSecrets:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[return-value]

    monkeypatch.setattr(serve, "register", register)
    return keeper, app, server


def _secrets(digest: str, *pairs: KeyPair) -> ReleasedSecrets:
    return ReleasedSecrets("w1", digest, keyrelease.export_ohttp_keys(KeyStore(pairs)), {})


def test_any_failure_counts_and_the_worker_stops_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    emfile = OSError(errno.EMFILE, "Too many open files")
    answers: list[object] = [emfile, _secrets("d1", KeyPair.generate(1)),  # a success resets the count
                             KeyError("sealed_secrets"), ValueError("bad hex"), RegistrationRefused("state.locked")]
    keeper, app, server = _keeper(monkeypatch, answers)
    for _ in range(4):
        keeper.tick()  # nothing escapes: the loop cannot die
        assert keeper.refused is None and not server.should_exit
    keeper.tick()  # the third failure in a row (a deferral counts: never deferred for ever)
    assert keeper.refused is not None and keeper.refused.reason == "worker.reattestation_failed"
    assert server.should_exit and len(app.state.gateway.keys) == 0  # keys forgotten at once
    assert app.state.gateway.stopped == "worker.reattestation_failed"


def test_a_verdict_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    keeper, app, server = _keeper(monkeypatch, [RegistrationRefused("snp.measurement_mismatch", "no longer admitted")])
    keeper.tick()
    assert keeper.refused is not None and keeper.refused.reason == "snp.measurement_mismatch"
    assert server.should_exit and len(app.state.gateway.keys) == 0


def test_keys_from_each_registration_replace_the_old_set(monkeypatch: pytest.MonkeyPatch) -> None:
    rotated = KeyPair.generate(2)
    keeper, app, _ = _keeper(monkeypatch, [_secrets("d1", rotated)])  # same manifest, rotated keys
    keeper.tick()
    assert [c.key_id for c in app.state.gateway.keys.configs()] == [2]


def test_a_newer_manifest_applies_and_a_removed_tenant_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
    tenants = [TenantEntry(id=t, key_sha256=c * 64, requests_per_minute=10) for t, c in (("a", "a"), ("b", "b"))]
    newer = Manifest(coordinator=ref, workers=ref, admin_keys=["00" * 32], models=[ENTRY], tenants=tenants[:1])
    keeper, app, _ = _keeper(monkeypatch, [_secrets("d2", KeyPair.generate(3))])
    app.state.gateway.tenancy = app.state.gateway.tenancy.updated(tenants)
    monkeypatch.setattr(serve, "fetch_manifest", lambda http, url, digest: SimpleNamespace(manifest=newer))
    keeper.tick()
    assert keeper.refused is None and keeper.digest == "d2"
    assert [t.id for t in app.state.gateway.tenancy.tenants] == ["a"]  # "b" is refused from now on
    assert [c.key_id for c in app.state.gateway.keys.configs()] == [3]


def test_the_loop_thread_survives_what_it_cannot_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even an exception type nobody expected leaves the thread running and counting."""
    keeper, _, server = _keeper(monkeypatch, [RuntimeError("?"), MemoryError(), ZeroDivisionError()])
    keeper.config = serve.WorkerConfig("http://coordinator.invalid", "127.0.0.1", 0, None, Path("/x"), reregister_seconds=0.01)
    keeper.start()
    keeper._thread.join(timeout=10)
    assert keeper.refused is not None and keeper.refused.reason == "worker.reattestation_failed"
    assert isinstance(keeper.refused, VeilError) and server.should_exit
