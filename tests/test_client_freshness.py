"""Reverifier / AsyncReverifier against the real coordinator app: interval, refusal, retry, status.

The clock is injected, so no test sleeps to let an interval pass.
"""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from deployment_fixtures import start_coordinator
from veil.attest.sim import SimPlatform
from veil.client.freshness import RETRY_SECONDS, AsyncReverifier, Reverifier
from veil.client.policy import ClientPolicy
from veil.client.sdk import AsyncClient
from veil.client.transport import GatewayRefused
from veil.coordinator.keys import Rotation
from veil.errors import VeilError
from veil.manifest import sign_manifest
from veil.ohttp.keyconfig import KEM_XWING
from veil.testing import free_port

URL = "http://testserver"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    SimPlatform.create(d)
    return d


@pytest.fixture(scope="module")
def coord(sim_dir):
    """Shared by the tests that leave the coordinator as it was."""
    return start_coordinator(sim_dir)


@pytest.fixture()
def own_coord(sim_dir):
    """For a test that changes the manifest or the keys (new keys are attested at once)."""
    return start_coordinator(sim_dir, rotation=Rotation(promotion=0.0))


def pinned(coord) -> ClientPolicy:
    m = coord.signed.manifest
    return ClientPolicy.local_development(
        coordinator=m.coordinator,
        simulation_roots=m.trusted_simulation_roots,
        sandbox_profile="bubblewrap",
        coordinator_url=URL,
        gateway_url="http://gw",
        manifest_digests=[coord.signed.digest.hex()],
    )


def change_manifest(coord, sim_dir, **kw) -> None:
    nxt = coord.manifest(sim_dir, **kw)
    entry = sign_manifest(nxt, [coord.admin], coord.signed.digest.hex())
    assert coord.http.post("/v1/manifest", content=entry.model_dump_json()).status_code == 200


def test_reverifies_only_when_the_interval_has_passed(coord) -> None:
    clock = Clock()
    v = Reverifier(pinned(coord), http=coord.http, interval=30, clock=clock)
    first = v.current()
    assert v.current() is first and v.verifications == 1
    clock.now += 29
    v.current()
    assert v.verifications == 1
    clock.now += 2
    assert v.current() is not first and v.verifications == 2


def test_a_changed_manifest_is_refused_at_the_next_check_and_stays_refused(own_coord, sim_dir) -> None:
    coord = own_coord
    clock = Clock()
    v = Reverifier(pinned(coord), http=coord.http, interval=30, clock=clock)
    v.current()
    change_manifest(coord, sim_dir, settings={"changed": True})
    assert v.status()["status"] == "verified"  # not due yet
    clock.now += 31
    with pytest.raises(VeilError) as info:
        v.config()
    assert info.value.reason == "manifest.not_trusted"
    status = v.status()
    assert status["status"] == "refused" and status["verification"] is None
    assert status["refusal"]["reason"] == "manifest.not_trusted" and status["checked_at"]
    with pytest.raises(VeilError):  # remembered, without asking the coordinator again
        v.current()
    assert v.verifications == 2
    clock.now += RETRY_SECONDS
    with pytest.raises(VeilError):
        v.current()
    assert v.verifications == 3


def test_a_gateway_refusal_reverifies_at_once_and_retries_only_a_new_key(own_coord) -> None:
    coord = own_coord
    clock = Clock()
    v = Reverifier(pinned(coord), http=coord.http, interval=3600, clock=clock)
    old = v.config()
    unknown = GatewayRefused("ohttp.unknown_key_id", "")
    assert v.refused(old, unknown) is None  # same key attested again: nothing to retry with
    assert v.verifications == 2
    coord.state.rotate("test")  # the coordinator rotated its keys
    new = v.refused(old, unknown)
    assert new is not None and new.key_id in {p.key_id for p in coord.state.keys.newest.pairs}
    assert new.kem_id == KEM_XWING  # still X-Wing
    assert v.refused(new, GatewayRefused("ohttp.decrypt_failed", "")) is None


def test_status_is_complete_json(coord) -> None:
    v = Reverifier(pinned(coord), http=coord.http)
    v.current()
    status = v.status()
    assert status["status"] == "verified" and status["interval_seconds"] == 60
    ver = status["verification"]
    for key in (
        "platform",
        "simulated",
        "simulated_parts",
        "checks",
        "claims",
        "manifest",
        "admission",
        "key_configs",
        "verified_at",
        "workers",
        "sandbox",
    ):
        assert key in ver, key
    assert ver["simulated"] is True and ver["claims"]["measurement"]
    assert ver["admission"]["trust_simulated"] is True


def test_async_verification_does_not_block_the_event_loop(coord) -> None:
    """The coordinator answers slowly; a ticker on the same loop keeps running meanwhile."""
    app = coord.http.app

    async def slow(scope, receive, send):
        if scope["type"] == "http":
            await asyncio.sleep(0.3)
        await app(scope, receive, send)

    async def go() -> int:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(slow)) as http:
            v = AsyncReverifier(pinned(coord), http=http)
            task = asyncio.create_task(ticker())
            attested = await v.current()
            done.set()
            await task
        assert attested.simulated
        return ticks

    assert asyncio.run(go()) >= 15


def test_async_client_constructor_does_no_io(coord, monkeypatch) -> None:
    policy = pinned(coord).model_copy(update={"coordinator_url": f"http://127.0.0.1:{free_port()}"})
    network: list[object] = []  # every connect or name lookup the constructor would make
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: network.append(addr) or real_connect(self, addr))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: network.append(a) or real_lookup(*a, **k))
    client = AsyncClient(policy)
    monkeypatch.undo()
    assert network == []
    with pytest.raises(VeilError) as info:
        _ = client.attestation
    assert info.value.reason == "client.not_verified"

    async def go() -> None:
        with pytest.raises(VeilError) as info:
            await client.verify()
        assert info.value.reason == "coordinator.unreachable"
        await client.close()

    asyncio.run(go())
