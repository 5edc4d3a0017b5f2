"""A real HAProxy in front of a real coordinator and real OHTTP gateways, on loopback.

The coordinator (sim-snp) and the gateways are the real ASGI apps under uvicorn; the engine behind
each gateway is a small OpenAI-shaped app answering from memory (the gateway's upstream), so that
these tests measure the balancer and the relay, not a model. Every gateway records what reached
its outer layer (headers, peer address), which is what a curious gateway operator would see.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from veil.balancer import BalancerError, haproxy_binary


def require_haproxy() -> str:
    try:
        return haproxy_binary()
    except BalancerError:
        if os.environ.get("VEIL_REQUIRE_HAPROXY") == "1":
            pytest.fail("VEIL_REQUIRE_HAPROXY=1 but haproxy is not installed (scripts/install-system-deps.sh)")
        pytest.skip("haproxy is not installed (scripts/install-system-deps.sh installs it)")


def _completion(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def _chunk(delta: dict[str, str], model: str, finish: str | None = None) -> bytes:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


async def _chat(request: Request) -> Response:
    """Echo the last user message back, whole or as one event per word."""
    body = await request.json()
    text = "echo: " + str(body["messages"][-1]["content"])
    model = body.get("model", "fake")
    if not body.get("stream"):
        return JSONResponse(_completion(text, model))

    async def events() -> AsyncIterator[bytes]:
        yield _chunk({"role": "assistant"}, model)
        for word in text.split(" "):
            yield _chunk({"content": word + " "}, model)
        yield _chunk({}, model, "stop")
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


ECHO_ENGINE = Starlette(routes=[Route("/v1/chat/completions", _chat, methods=["POST"])])


@dataclass
class SeenByGateway:
    """The outer requests one gateway received: (peer host, lower-cased headers)."""

    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def middleware(self, app: Any) -> Any:
        async def recorded(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["method"] == "POST":
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
                self.requests.append((scope["client"][0] if scope.get("client") else "", headers))
            await app(scope, receive, send)

        return recorded


@dataclass
class Stack:
    """A coordinator and gateways in this process, plus the client policy that trusts them."""

    coordinator_url: str
    gateway_urls: list[str]
    seen: list[SeenByGateway]
    policy_dir: Path
    servers: list[Any]

    def policy(self, **changes: Any):  # -> ClientPolicy
        from veil.client.policy import ClientPolicy

        base = ClientPolicy.load(self.policy_dir / "client-policy.json")
        return base.model_copy(update=changes)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def start_stack(tmp: Path, gateways: int = 1) -> Stack:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from deployment_fixtures import launched_attester, make_manifest
    from veil.attest.sim import SimPlatform
    from veil.client.policy import ClientPolicy
    from veil.coordinator.app import create_app
    from veil.coordinator.state import CoordinatorState
    from veil.manifest import public_key_hex, sign_manifest
    from veil.testing import ServerThread
    from veil.worker.gateway import create_gateway_app

    sim_dir = tmp / "sim"
    SimPlatform.create(sim_dir)
    admin = Ed25519PrivateKey.generate()
    attester = launched_attester(sim_dir, admin)
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(admin))
    manifest = make_manifest(sim_dir, admin, attester.measurement.hex(), coordinator_identity=state.identity)
    signed = sign_manifest(manifest, [admin], None)
    state.append_manifest(signed)
    servers: list[Any] = [ServerThread(create_app(state, attester))]
    seen, urls = [], []
    for _ in range(gateways):
        rec = SeenByGateway()
        upstream = httpx.ASGITransport(ECHO_ENGINE)
        server = ServerThread(rec.middleware(create_gateway_app(state.ohttp_keys, upstream)))
        servers.append(server)
        seen.append(rec)
        urls.append(server.url)
    ClientPolicy(
        coordinator_url=servers[0].url,
        gateway_url=urls[0],
        coordinator=signed.manifest.coordinator,
        manifest_digests=[signed.digest.hex()],
        trust_simulated=True,
        simulation_roots=signed.manifest.trusted_simulation_roots,
    ).save(tmp / "client-policy.json")
    return Stack(servers[0].url, urls, seen, tmp, servers)
