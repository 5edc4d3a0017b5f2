"""Attack: crafted X-Wing encapsulated keys sent to a worker's gateway.

The attacker controls the bytes of requests reaching the gateway (any client, any relay): it sends
X-Wing requests whose 1120-byte encapsulated key carries a low-order X25519 share (all zeros, on
which X25519 yields no shared secret), an all-zero ML-KEM ciphertext (ML-KEM's implicit rejection),
an encapsulated key cut short, or an X-Wing header aimed at the X25519 key id; plain and chunked
requests.
Each is refused in the clear with its reason (``ohttp.decrypt_failed``, or ``chunked.*`` where a
chunked request's first chunk does not authenticate, ``ohttp.truncated``,
``ohttp.unsupported_suite``), never an internal error, and the gateway goes on serving genuine
requests. The gateway is the real one under uvicorn on loopback, in front of a small engine.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from veil.client.transport import OhttpTransport
from veil.ohttp.chunked import ChunkedRequestSender
from veil.ohttp.keyconfig import KEM_XWING, KeyStore, new_generation
from veil.ohttp.ohttp import HEADER_LEN, encapsulate_request
from veil.ohttp.xwing import ENC_LEN
from veil.testing import ServerThread
from veil.wire import GATEWAY_PATH, MEDIA_TYPE_CHUNKED_REQUEST, MEDIA_TYPE_REQUEST
from veil.worker.gateway import create_gateway_app

MLKEM_CT_LEN = 1088


async def _engine(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, KeyStore]]:
    keys = KeyStore(new_generation(0))
    engine = Starlette(routes=[Route("/v1/models", _engine)])
    upstream = httpx.ASGITransport(app=engine)
    with ServerThread(create_gateway_app(keys, upstream)) as server:
        yield server.url, keys


def _xwing_request(keys: KeyStore, chunked: bool) -> bytes:
    (config,) = [c for c in keys.configs() if c.kem_id == KEM_XWING]
    if chunked:
        tx = ChunkedRequestSender(config)
        return tx.header + tx.seal_final(b"\x00" * 64)
    return encapsulate_request(config, b"\x00" * 64)[0]


def _with_enc(request: bytes, start: int, replacement: bytes) -> bytes:
    at = HEADER_LEN + start
    return request[:at] + replacement + request[at + len(replacement) :]


@pytest.mark.parametrize("chunked", [False, True], ids=["rfc9458", "chunked"])
def test_crafted_encapsulated_keys_are_refused_and_the_gateway_keeps_serving(
    gateway: tuple[str, KeyStore], chunked: bool
) -> None:
    url, keys = gateway
    media = MEDIA_TYPE_CHUNKED_REQUEST if chunked else MEDIA_TYPE_REQUEST
    genuine = _xwing_request(keys, chunked)
    x25519_key_id = next(c.key_id for c in keys.configs() if c.kem_id != KEM_XWING)
    # With a wrong shared secret a plain request fails as one AEAD; a chunked one at its first chunk.
    unauthenticated = {"chunked.final_mismatch", "chunked.decrypt_failed"} if chunked else {"ohttp.decrypt_failed"}
    attacks = {
        "low-order X25519 share": (_with_enc(genuine, MLKEM_CT_LEN, bytes(32)), {"ohttp.decrypt_failed"}),
        "all-zero ML-KEM ciphertext": (_with_enc(genuine, 0, bytes(MLKEM_CT_LEN)), unauthenticated),
        "encapsulated key cut short": (genuine[: HEADER_LEN + ENC_LEN - 100], {"ohttp.truncated"}),
        "X-Wing header, X25519 key id": (bytes([x25519_key_id]) + genuine[1:], {"ohttp.unsupported_suite"}),
    }
    with httpx.Client(base_url=url, timeout=30) as http:
        for name, (body, reason) in attacks.items():
            resp = http.post(GATEWAY_PATH, content=body, headers={"content-type": media})
            assert resp.status_code == 400, (name, resp.status_code, resp.text)
            assert resp.json()["error"]["reason"] in reason, (name, resp.json())
    # Still serving: a genuine X-Wing request right after gets its (encrypted) answer.
    transport = OhttpTransport(keys.encode_configs(), url, chunked=chunked)  # Veil's choice: X-Wing
    with httpx.Client(transport=transport, base_url=url) as client:
        assert client.get("/v1/models").json()["data"][0]["id"] == "m"
