"""Attack: a chunked OHTTP request padded with chunks that decrypt to nothing.

The attacker is any client (or relay): the key configuration is public, so it can make request
chunks that authenticate. It sends non-final chunks with an empty plaintext — pointless work for
the gateway (one AEAD open each) that carries no request byte, the pattern draft-ietf-ohai-
chunked-ohttp-07+ forbids (a non-final chunk that decrypts to nothing is a decryption error) —
followed by a genuine final chunk holding a whole request, for both served KEMs. The gateway, the
real one under uvicorn on loopback in front of a small engine, refuses each such request in the
clear with ``chunked.empty_chunk`` at the first empty chunk; nothing reaches the engine, and the
gateway goes on serving. With the check reverted the padded request is forwarded and answered.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from veil.ohttp.bhttp import Request as BhttpRequest
from veil.ohttp.bhttp import encode_request, encode_varint
from veil.ohttp.chunked import ChunkedRequestSender
from veil.ohttp.keyconfig import KEM_X25519_SHA256, KEM_XWING, KeyConfig, KeyStore, new_generation
from veil.testing import ServerThread
from veil.wire import GATEWAY_PATH, MEDIA_TYPE_CHUNKED_REQUEST
from veil.worker.gateway import create_gateway_app

EMPTY_CHUNKS = 16  # within the chunk count every request gets for free (chunked.FREE_REQUEST_CHUNKS)


class Engine:
    """Counts what reaches it: the attack must forward nothing."""

    def __init__(self) -> None:
        self.requests = 0

    async def models(self, request: Request) -> JSONResponse:
        self.requests += 1
        return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[str, KeyStore, Engine]]:
    keys = KeyStore(new_generation(0))
    engine = Engine()
    app = Starlette(routes=[Route("/v1/models", engine.models)])
    upstream = httpx.ASGITransport(app=app)
    with ServerThread(create_gateway_app(keys, upstream)) as server:
        yield server.url, keys, engine


def _chunked_request(config: KeyConfig, empty_chunks: int) -> bytes:
    """A genuine request to /v1/models in the final chunk, after ``empty_chunks`` empty ones."""
    sender = ChunkedRequestSender(config)
    inner = encode_request(BhttpRequest("GET", authority="engine", path="/v1/models"), indeterminate=True)
    # ChunkedRequestSender never frames an empty chunk; the attacker seals them itself.
    empties = [sender._ctx.seal(b"", b"") for _ in range(empty_chunks)]
    return sender.header + b"".join(encode_varint(len(ct)) + ct for ct in empties) + sender.seal_final(inner)


@pytest.mark.parametrize("kem_id", [KEM_X25519_SHA256, KEM_XWING], ids=["x25519", "xwing"])
def test_empty_non_final_chunks_are_refused_before_anything_is_forwarded(
    gateway: tuple[str, KeyStore, Engine], kem_id: int
) -> None:
    url, keys, engine = gateway
    (config,) = [c for c in keys.configs() if c.kem_id == kem_id]
    headers = {"content-type": MEDIA_TYPE_CHUNKED_REQUEST}
    with httpx.Client(base_url=url, timeout=30) as http:
        before = engine.requests
        resp = http.post(GATEWAY_PATH, content=_chunked_request(config, EMPTY_CHUNKS), headers=headers)
        assert resp.status_code == 400, (resp.status_code, resp.headers.get("content-type"))
        assert resp.json()["error"]["reason"] == "chunked.empty_chunk", resp.json()
        assert engine.requests == before  # nothing reached the engine
        # The same request without the padding is answered: the gateway keeps serving.
        genuine = http.post(GATEWAY_PATH, content=_chunked_request(config, 0), headers=headers)
        assert genuine.status_code == 200, (genuine.status_code, genuine.text)
        assert engine.requests == before + 1
