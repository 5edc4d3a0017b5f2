"""Attack: steer a client to an OHTTP key the coordinator's attestation does not vouch for.

The attacker controls the network and the gateway side: it puts a gateway of its own in front of
the deployment, holding a key pair it made (key id 7), advertises that key at
``/.well-known/ohttp-gateway``, and answers every request with ``ohttp.unknown_key_id`` hoping the
client falls back to a key it is offered. Separately, the coordinator rotates its key (as it does
on every manifest change), which legitimately makes the client's cached key unknown.

Refused with: the client encrypts only to key ids in its current attestation; on
``ohttp.unknown_key_id`` it re-verifies the coordinator and retries once with the newly attested
key, and when the attestation still names the refused key it raises ``ohttp.unknown_key_id``
without ever encrypting to the attacker's key.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from attacks.client_stack import MODEL, Stack, client_stack
from veil.client.sdk import Client
from veil.client.transport import GatewayRefused
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.testing import ServerThread
from veil.wire import MEDIA_TYPE_KEYS

pytestmark = pytest.mark.slow  # live servers and processes on loopback

MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with client_stack() as s:
        yield s


def test_a_rotated_key_is_fetched_from_a_fresh_attestation(stack: Stack) -> None:
    with Client(stack.policy(pinned=False)) as client:
        old = [c.key_id for c in client.attestation.key_configs]
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices  # type: ignore[arg-type]
        new = stack.rotate()  # the coordinator rotated: the gateway no longer knows the old keys
        before = client.verifier.verifications
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices  # type: ignore[arg-type]
        assert client.verifier.verifications == before + 1
        assert [c.key_id for c in client.attestation.key_configs] == new + old  # current first, old in its grace


def test_a_hostile_gateway_cannot_offer_its_own_key(stack: Stack) -> None:
    own = KeyPair.generate(7)
    seen_key_ids: list[int] = []

    async def gateway(request: Request) -> Response:
        body = await request.body()
        seen_key_ids.append(body[0])
        return JSONResponse({"error": {"reason": "ohttp.unknown_key_id", "message": "try key 7"}}, status_code=400)

    async def keys(_: Request) -> Response:
        return Response(KeyStore([own]).encode_configs(), media_type=MEDIA_TYPE_KEYS)

    hostile = Starlette(
        routes=[
            Route("/.well-known/ohttp-gateway", gateway, methods=["POST"]),
            Route("/.well-known/ohttp-gateway", keys, methods=["GET"]),
        ]
    )
    with ServerThread(hostile) as evil:
        policy = stack.policy(pinned=False).model_copy(update={"gateway_url": evil.url})
        with Client(policy) as client:
            attested = {c.key_id for c in client.attestation.key_configs}
            with pytest.raises(GatewayRefused) as info:
                client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.reason == "ohttp.unknown_key_id"
    assert seen_key_ids and set(seen_key_ids) <= attested and own.config.key_id not in seen_key_ids
