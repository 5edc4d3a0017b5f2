"""Veil's client against an independent X-Wing OHTTP gateway: the Node peer (@hpke/core with
@hpke/hybridkem-x-wing) opens exactly what ``OhttpTransport`` sends, plain RFC 9458 and chunked
draft -08, and its encrypted answers come back through the official ``openai`` SDK.

The other direction (the Node peer as a client of a real ``veil up`` gateway) is in
tests/system/test_gateway_interop.py, beside ohttpy.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.node_peer import require_node, run_peer
from veil.client.transport import OhttpTransport
from veil.ohttp.keyconfig import encode_key_config_list, new_generation


class NodeGateway(httpx.BaseTransport):
    """An outer transport whose 'gateway' is the Node peer holding the X-Wing seed."""

    def __init__(self, seed: bytes, key_id: int) -> None:
        self.seed, self.key_id = seed, key_id
        self.seen: list[dict[str, object]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        got = run_peer(
            "gateway",
            {
                "seed": self.seed.hex(),
                "key_id": self.key_id,
                "media": request.headers["content-type"],
                "body": request.read().hex(),
                "reply": {
                    "status": 200,
                    "headers": [["content-type", "application/json"]],
                    "body": json.dumps(
                        {
                            "id": "node-1",
                            "object": "chat.completion",
                            "created": 0,
                            "model": "node-peer",
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "node read the prompt"},
                                }
                            ],
                        }
                    ),
                },
            },
        )
        self.seen.append(got["request"])  # what the peer decrypted
        return httpx.Response(200, headers={"content-type": got["media"]}, stream=httpx.ByteStream(bytes.fromhex(got["body"])))


@pytest.mark.parametrize("chunked", [False, True], ids=["rfc9458", "chunked-08"])
def test_node_gateway_opens_what_veil_sends_and_veil_opens_its_answer(chunked: bool) -> None:
    require_node()
    classical, pq = new_generation(4)
    # Veil's client is given both configurations as a deployment serves them (X25519 first) and
    # picks X-Wing; the Node gateway refuses anything but its X-Wing key.
    gateway = NodeGateway(pq.private_bytes(), pq.key_id)
    served = encode_key_config_list([classical.config, pq.config])
    transport = OhttpTransport(served, "http://node-gateway", chunked=chunked, transport=gateway)
    client = openai.OpenAI(
        base_url="http://node-gateway/v1", api_key="tenant-secret", http_client=httpx.Client(transport=transport), max_retries=0
    )
    done = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "PQ-PROMPT"}])
    assert done.choices[0].message.content == "node read the prompt" and done.model == "node-peer"

    (seen,) = gateway.seen
    assert seen["method"] == "POST" and seen["path"] == "/v1/chat/completions"  # type: ignore[index]
    assert json.loads(seen["body"])["messages"] == [{"role": "user", "content": "PQ-PROMPT"}]  # type: ignore[index, arg-type]
    assert ["authorization", "Bearer tenant-secret"] in seen["headers"]  # type: ignore[operator]
