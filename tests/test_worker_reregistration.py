"""The worker's re-attestation loop, in-process: it survives anything, counts failures, stops after
a bound (fail closed), stops at once on a verdict, and takes the keys each registration brings.

The same behaviour against real coordinator and worker processes: tests/attacks/test_worker_*.py.
"""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest

from veil import keyrelease
from veil.errors import VeilError
from veil.manifest import Manifest, ModelEntry, ReferenceValues, SandboxSettings, TenantEntry
from veil.sandbox.profile import SandboxError, SandboxProfile
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.worker import serve
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app
from veil.worker.registration import RegistrationRefused, ReleasedSecrets

ENTRY = ModelEntry(name="m", sha256="00" * 32)


REF = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
CURRENT = SimpleNamespace(manifest=Manifest(coordinator=REF, workers=REF, admin_keys=["00" * 32], models=[ENTRY]))


def _keeper(
    monkeypatch: pytest.MonkeyPatch, answers: list[object], engine: object = None
) -> tuple[serve.Reregistration, object, SimpleNamespace]:
    """A Reregistration whose registrations return or raise ``answers`` in turn."""
    app = create_gateway_app(KeyStore([KeyPair.generate(1)]), EngineLink("/nonexistent/engine.sock"))
    server = SimpleNamespace(should_exit=False)
    config = serve.WorkerConfig("http://coordinator.invalid", "127.0.0.1", 0, None, Path("/nonexistent"))
    first = ReleasedSecrets("w1", "d1", [], {}, None, None)  # type: ignore[arg-type]
    keeper = serve.Reregistration(config, None, app, server, first, ENTRY, engine)  # type: ignore[arg-type]

    def register(*args: object, **kwargs: object) -> tuple[ReleasedSecrets, object]:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer if isinstance(answer, tuple) else (answer, CURRENT)  # type: ignore[return-value]

    monkeypatch.setattr(serve, "register_under_current", register)
    return keeper, app, server


def _secrets(digest: str, *pairs: KeyPair) -> ReleasedSecrets:
    return ReleasedSecrets("w1", digest, keyrelease.export_ohttp_keys(KeyStore(pairs)), {}, None, None)  # type: ignore[arg-type]


def test_any_failure_counts_and_the_worker_stops_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    emfile = OSError(errno.EMFILE, "Too many open files")
    answers: list[object] = [
        emfile,
        _secrets("d1", KeyPair.generate(1)),  # a success resets the count
        KeyError("sealed_secrets"),
        ValueError("bad hex"),
        RegistrationRefused("state.locked"),
    ]
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
    tenants = [TenantEntry(id=t, key_sha256=c * 64, requests_per_minute=10) for t, c in (("a", "a"), ("b", "b"))]
    newer = SimpleNamespace(manifest=CURRENT.manifest.model_copy(update={"tenants": tenants[:1]}))
    keeper, app, _ = _keeper(monkeypatch, [(_secrets("d2", KeyPair.generate(3)), newer)])
    app.state.gateway.tenancy = app.state.gateway.tenancy.updated(tenants)
    keeper.tick()
    assert keeper.refused is None and keeper.digest == "d2"
    assert [t.id for t in app.state.gateway.tenancy.tenants] == ["a"]  # "b" is refused from now on
    assert [c.key_id for c in app.state.gateway.keys.configs()] == [3]


class _Engine:
    """Stands in for EngineProcess: records restarts, and what the gateway held at that moment."""

    def __init__(self, app_holder: list[object], fail: bool = False) -> None:
        self.profile = SandboxProfile(name="bubblewrap")
        self.app_holder, self.fail, self.restarts = app_holder, fail, []  # type: ignore[var-annotated]

    def restart(self, profile: SandboxProfile) -> None:
        if self.fail:
            raise SandboxError("sandbox.unavailable", "gvisor cannot run here")
        gateway = self.app_holder[0].state.gateway  # type: ignore[attr-defined]
        self.restarts.append((profile.name, [c.key_id for c in gateway.keys.configs()]))
        self.profile = profile


def test_a_sandbox_change_restarts_the_engine_before_the_manifest_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    gvisor = SimpleNamespace(manifest=CURRENT.manifest.model_copy(update={"sandbox": SandboxSettings(profile="gvisor")}))
    holder: list[object] = []
    engine = _Engine(holder)
    keeper, app, _ = _keeper(monkeypatch, [(_secrets("d2", KeyPair.generate(7)), gvisor)], engine)
    holder.append(app)
    keeper.tick()
    assert engine.restarts == [("gvisor", [1])]  # restarted while the old keys were still in place
    assert keeper.refused is None and [c.key_id for c in app.state.gateway.keys.configs()] == [7]


def test_a_sandbox_the_worker_cannot_enforce_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    gvisor = SimpleNamespace(manifest=CURRENT.manifest.model_copy(update={"sandbox": SandboxSettings(profile="gvisor")}))
    holder: list[object] = []
    keeper, app, server = _keeper(monkeypatch, [(_secrets("d2", KeyPair.generate(7)), gvisor)], _Engine(holder, fail=True))
    holder.append(app)
    keeper.tick()
    assert keeper.refused is not None and keeper.refused.reason == "sandbox.unavailable"
    assert server.should_exit and len(app.state.gateway.keys) == 0  # never serves on under the old profile


def test_the_evidence_binds_the_sandbox_the_manifest_names() -> None:
    """What register() binds for a profile is what the coordinator expects only for that profile."""
    from veil.attest.binding import worker_report_data
    from veil.manifest import sandbox_binding

    bound = {
        p: worker_report_data(b"n", b"k", sandbox=sandbox_binding(SandboxSettings(profile=p)))
        for p in ("bubblewrap", "gvisor", "none")
    }
    assert bound["bubblewrap"] == worker_report_data(b"n", b"k")  # the default keeps the old form
    assert len(set(bound.values())) == 3


def test_the_loop_thread_survives_what_it_cannot_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even an exception type nobody expected leaves the thread running and counting."""
    keeper, _, server = _keeper(monkeypatch, [RuntimeError("?"), MemoryError(), ZeroDivisionError()])
    keeper.config = serve.WorkerConfig("http://coordinator.invalid", "127.0.0.1", 0, None, Path("/x"), reregister_seconds=0.01)
    keeper.start()
    keeper._thread.join(timeout=10)
    assert keeper.refused is not None and keeper.refused.reason == "worker.reattestation_failed"
    assert isinstance(keeper.refused, VeilError) and server.should_exit


def test_a_manifest_changing_during_registration_is_a_race_not_a_verdict(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker binds the sandbox of the (verified) manifest it read; if the admins publish another
    one before the coordinator checks, the binding no longer matches: verify again, register again."""
    first = SimpleNamespace(manifest=CURRENT.manifest, digest=b"\x01" * 32)
    second = SimpleNamespace(
        manifest=CURRENT.manifest.model_copy(update={"sandbox": SandboxSettings(profile="gvisor")}), digest=b"\x02" * 32
    )
    reads = [first, second, second]
    bound: list[bytes] = []

    def register(*args: object, sandbox: bytes = b"", **kwargs: object) -> ReleasedSecrets:
        bound.append(sandbox)
        if len(bound) == 1:
            raise RegistrationRefused("binding.report_data_mismatch", "the manifest moved on")
        return ReleasedSecrets("w1", second.digest.hex(), [], {}, second, None)  # type: ignore[arg-type]

    monkeypatch.setattr(serve, "trust_anchor", lambda attester: "00" * 32)
    monkeypatch.setattr(
        serve, "authenticate_coordinator", lambda url, http, root, pinned=None: SimpleNamespace(manifest=reads.pop(0))
    )
    monkeypatch.setattr(serve, "register", register)
    config = serve.WorkerConfig("http://coordinator.invalid", "127.0.0.1", 0, None, Path("/x"))
    secrets, manifest = serve.register_under_current(config, None, None)  # type: ignore[arg-type]
    assert manifest is second and bound == [b"", b'{"allow_gpu":false,"profile":"gvisor"}']
