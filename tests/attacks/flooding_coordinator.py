"""A coordinator whose host floods clients, run as its own process.

    python flooding_coordinator.py --sim-dir DIR --port PORT --policy OUT.json

A real coordinator app (sim-snp, a signed manifest; the client policy that trusts it is written
to ``--policy``) behind a host that rewrites one answer into 1 GiB, as set by
``POST /flood {"flood": ...}``: ``attestation`` (streamed without a length), ``history`` (the
manifest history, streamed without a length) or ``declared`` (an attestation that announces 1 GiB
in its Content-Length).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from veil.attest.attester import SimSnpAttester
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.manifest import Manifest, ReferenceValues, public_key_hex, sign_manifest

GIB = 1 << 30
PIECE = 1 << 16


async def _flood() -> AsyncIterator[bytes]:
    piece = b"[" + b" " * (PIECE - 1)
    for _ in range(GIB // PIECE):
        yield piece


FLOOD = {"flood": "attestation"}


def flooding(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/flood":
            FLOOD.update(json.loads((await receive())["body"]))
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        path = "/v1/manifest/history" if FLOOD["flood"] == "history" else "/v1/attestation"
        if scope["type"] != "http" or scope["path"] != path:
            await app(scope, receive, send)
            return
        declared = FLOOD["flood"] == "declared"
        headers = [(b"content-type", b"application/json")]
        if declared:
            headers.append((b"content-length", str(GIB).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for piece in _flood():
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sim-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--policy", type=Path, required=True)
    args = parser.parse_args()
    sim = SimPlatform.load_or_create(args.sim_dir)
    admin = Ed25519PrivateKey.generate()  # also the bootstrap key in the coordinator's launch data
    attester = SimSnpAttester(args.sim_dir, host_data=bytes.fromhex(public_key_hex(admin)))
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(admin))
    refs = [ReferenceValues(platform="sim-snp", measurements=[attester.measurement.hex()])]
    manifest = Manifest(
        coordinator=refs,
        workers=refs,
        admin_keys=[public_key_hex(admin)],
        trusted_simulation_roots=[sim.root_fingerprint],
        coordinator_identity=state.identity,
    )
    real = create_app(state, attester)
    with TestClient(real) as setup:
        resp = setup.post("/v1/manifest", content=sign_manifest(manifest, [admin], None).model_dump_json())
        assert resp.status_code == 200, resp.text
    url = f"http://127.0.0.1:{args.port}"
    ClientPolicy.local_development(
        coordinator=refs,
        simulation_roots=[sim.root_fingerprint],
        sandbox_profile="bubblewrap",
        coordinator_url=url,
        gateway_url=url,
        admin_keys=[public_key_hex(admin)],
    ).save(args.policy)
    uvicorn.run(flooding(real), host="127.0.0.1", port=args.port, log_level="critical")


if __name__ == "__main__":
    main()
