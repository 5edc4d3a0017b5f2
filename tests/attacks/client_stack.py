"""A small live deployment for the client-side attack tests, every part a real server on loopback.

coordinator (real app, sim-snp attester, uvicorn) · gateway (real app, uvicorn) holding the
coordinator's OHTTP key store — the keys a worker would receive at registration — in front of a
tiny OpenAI-shaped engine (uvicorn) that counts the requests reaching it. An admin key signs the
manifests; ``update`` plays the operator (or whoever holds that key) changing the deployment.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from veil.attest.attester import SimSnpAttester
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.coordinator.app import create_app
from veil.coordinator.keys import Rotation
from veil.coordinator.state import CoordinatorState
from veil.manifest import (
    Manifest,
    ModelEntry,
    ReferenceValues,
    SignedManifest,
    TenantEntry,
    public_key_hex,
    sign_manifest,
)
from veil.ohttp.keyconfig import KeyStore
from veil.testing import ServerThread
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app

MODEL = "test-model"


@dataclass
class Engine:
    requests: int = 0
    prompts: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            self.requests += 1
            body = await request.json()
            text = "hello from the engine"
            if body.get("stream"):

                async def gen() -> AsyncIterator[bytes]:
                    for word in text.split():
                        event = {
                            "id": "c",
                            "object": "chat.completion.chunk",
                            "created": 1,
                            "model": MODEL,
                            "choices": [{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}],
                        }
                        yield f"data: {json.dumps(event)}\n\n".encode()
                        await asyncio.sleep(0.005)
                    yield b"data: [DONE]\n\n"

                return StreamingResponse(gen(), media_type="text/event-stream")
            return JSONResponse(
                {
                    "id": "c",
                    "object": "chat.completion",
                    "created": 1,
                    "model": MODEL,
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                    "auth": request.headers.get("authorization"),
                }
            )

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@dataclass
class Stack:
    coordinator_url: str
    gateway_url: str
    state: CoordinatorState
    attester: SimSnpAttester
    sim: SimPlatform
    admin: Ed25519PrivateKey
    engine: Engine
    head: SignedManifest
    gateway_keys: KeyStore = field(default_factory=KeyStore)  # what the gateway decrypts with

    def rotate(self) -> list[int]:
        """The coordinator starts a new key generation, attested at once here, and the gateway
        swaps to it as a worker re-registering does (the old keys gone from it); the new key ids."""
        old = [c.key_id for c in self.gateway_keys.configs()]
        self.state.rotate("test")
        new = self.state.keys.newest.pairs
        for pair in new:
            self.gateway_keys.add(pair)
        for key_id in old:
            self.gateway_keys.remove(key_id)
        return [p.key_id for p in new]

    def manifest(self, **changes: Any) -> Manifest:
        refs = [ReferenceValues(platform="sim-snp", measurements=[self.attester.measurement.hex()])]
        base: dict[str, Any] = dict(
            coordinator=refs,
            workers=refs,
            models=[ModelEntry(name=MODEL, sha256="00" * 32)],
            admin_keys=[public_key_hex(self.admin)],
            trusted_simulation_roots=[self.sim.root_fingerprint],
            coordinator_identity=self.state.identity,
        )
        base.update(changes)
        return Manifest(**base)

    def update(self, **changes: Any) -> SignedManifest:
        """The holder of the admin key signs and sets a changed manifest."""
        entry = sign_manifest(self.manifest(**changes), [self.admin], self.head.digest.hex())
        resp = httpx.post(f"{self.coordinator_url}/v1/manifest", content=entry.model_dump_json(), timeout=30)
        assert resp.status_code == 200, resp.text
        self.head = entry
        self.reregister()
        return entry

    def reregister(self) -> None:
        """The gateway takes the keys the coordinator releases to workers, as a worker re-registering
        does: a manifest change starts a new generation, attested at once here (promotion 0)."""
        held = {c.key_id for c in self.gateway_keys.configs()}
        for config in self.state.released_keys.configs():
            if config.key_id not in held:
                self.gateway_keys.add(self.state.released_keys.get(config.key_id))

    def policy(self, *, pinned: bool) -> ClientPolicy:
        """The development policy `veil up` would write: pinned to the current digest, or by admin key."""
        return ClientPolicy.local_development(
            coordinator=self.head.manifest.coordinator,
            simulation_roots=[self.sim.root_fingerprint],
            sandbox_profile="bubblewrap",
            coordinator_url=self.coordinator_url,
            gateway_url=self.gateway_url,
            manifest_digests=[self.head.digest.hex()] if pinned else [],
            admin_keys=[] if pinned else [public_key_hex(self.admin)],
        )


_SHARED_SIM: Path | None = None


def shared_sim_dir() -> Path:
    """One simulated platform for every client attack test in this run (making one takes seconds)."""
    global _SHARED_SIM
    if _SHARED_SIM is None:
        _SHARED_SIM = Path(tempfile.mkdtemp(prefix="veil-client-attacks-"))
        atexit.register(shutil.rmtree, _SHARED_SIM, True)
        SimPlatform.create(_SHARED_SIM)
    return _SHARED_SIM


@contextmanager
def client_stack(sim_dir: Path | None = None, *, tenants: list[TenantEntry] | None = None) -> Iterator[Stack]:
    """The stack; with ``tenants`` the gateway requires their API keys (as the manifest would say)."""
    sim_dir = sim_dir or shared_sim_dir()
    sim = SimPlatform.load_or_create(sim_dir)
    admin = Ed25519PrivateKey.generate()  # also the bootstrap key in the coordinator's launch data
    attester = SimSnpAttester(sim_dir, host_data=bytes.fromhex(public_key_hex(admin)))
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(admin), rotation=Rotation(promotion=0.0))
    engine = Engine()
    sock = Path(tempfile.mkdtemp(prefix="veil-engine-")) / "engine.sock"
    with ServerThread(create_app(state, attester)) as coordinator, ServerThread(engine.app(), uds=str(sock)):
        upstream = EngineLink(str(sock))
        keys = KeyStore(state.released_keys.get(c.key_id) for c in state.released_keys.configs())
        with ServerThread(create_gateway_app(keys, upstream, tenants=tenants or [])) as gateway:
            stack = Stack(
                coordinator.url,
                gateway.url,
                state,
                attester,
                sim,
                admin,
                engine,
                head=None,  # type: ignore[arg-type]
                gateway_keys=keys,
            )
            first = sign_manifest(stack.manifest(), [admin], None)
            resp = httpx.post(f"{coordinator.url}/v1/manifest", content=first.model_dump_json(), timeout=30)
            assert resp.status_code == 200, resp.text
            stack.head = first
            yield stack
