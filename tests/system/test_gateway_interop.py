"""Other OHTTP implementations against a real ``veil up`` deployment, with exactly what it serves.

``LocalDeployment`` starts the coordinator and a worker (the real model, sandboxed) as ``veil up``
does. Then, with the worker's ``application/ohttp-keys`` body as is:

* ``ohttpy`` (Microsoft's ohttp library, the stack behind Azure confidential inferencing) gets a
  plain and a streamed answer through the official ``openai`` SDK: it takes the first listed
  configuration, X25519 with AES-128-GCM;
* the Node peer (``@hpke/core`` with ``@hpke/hybridkem-x-wing``, tests/interop/node) encrypts to the
  X-Wing configuration, RFC 9458 and chunked draft -08, and decrypts the answers;
* Veil's own SDK and transport choose X-Wing, and ``veil verify`` says so.

ohttpy's blocking call holds the GIL; the deployment runs in other processes, so that is harmless.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.node_peer import run_peer
from veil.client.policy import ClientPolicy
from veil.client.sdk import Client
from veil.client.transport import OhttpTransport
from veil.client.verify import AttestedCoordinator, verify_coordinator
from veil.localdeploy import DEFAULT_MODEL_NAME, LocalDeployment
from veil.ohttp.keyconfig import AES_128_GCM, KEM_X25519_SHA256, KEM_XWING, decode_key_config_list
from veil.testing import free_port
from veil.wire import GATEWAY_PATH, MEDIA_TYPE_KEYS

pytestmark = pytest.mark.slow

SANDBOX = os.environ.get("VEIL_TEST_SANDBOX", "bubblewrap")
MESSAGES = [{"role": "user", "content": "Say hello."}]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeployment]:
    dep = LocalDeployment(
        tmp_path_factory.mktemp("veil-up"), coordinator_port=free_port(), worker_port=free_port(), sandbox=SANDBOX
    )
    dep.start()
    yield dep
    dep.stop()


@pytest.fixture(scope="module")
def attested(deployment: LocalDeployment) -> AttestedCoordinator:
    return verify_coordinator(ClientPolicy.load(deployment.policy_path))


@pytest.fixture(scope="module")
def served_keys(deployment: LocalDeployment) -> bytes:
    resp = httpx.get(deployment.gateway_url + GATEWAY_PATH, timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"] == MEDIA_TYPE_KEYS
    return resp.content


def _openai(url: str, transport: httpx.BaseTransport) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{url}/v1", api_key="x", http_client=httpx.Client(transport=transport, timeout=300), max_retries=0
    )


def _streamed(client: openai.OpenAI) -> list[str]:
    stream = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=MESSAGES, max_tokens=12, stream=True)  # type: ignore[arg-type]
    return [ev.choices[0].delta.content for ev in stream if ev.choices and ev.choices[0].delta.content]


def test_served_keys_are_the_attested_ones_x25519_first(served_keys: bytes, attested: AttestedCoordinator) -> None:
    configs = decode_key_config_list(served_keys)
    assert configs == attested.key_configs  # the worker serves what the coordinator's evidence binds
    assert [c.kem_id for c in configs] == [KEM_X25519_SHA256, KEM_XWING]
    assert configs[0].suites[0] == AES_128_GCM  # what a standard client takes: RFC 9458's example suite
    assert len(configs[1].public_key) == 1216


def test_ohttpy_with_the_served_keys_unchanged(deployment: LocalDeployment, served_keys: bytes) -> None:
    ohttpy = pytest.importorskip("ohttpy")
    client = _openai(deployment.gateway_url, ohttpy.Transport(key_config=served_keys))
    done = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
    assert done.choices[0].message.content
    pieces = _streamed(client)
    assert len(pieces) > 1 and "".join(pieces).strip()  # separate events, as the engine made them


@pytest.mark.parametrize("chunked", [False, True], ids=["rfc9458", "chunked-08"])
def test_node_peer_with_the_served_xwing_key(deployment: LocalDeployment, served_keys: bytes, chunked: bool) -> None:
    host = deployment.gateway_url.split("://", 1)[1]
    body = {"model": DEFAULT_MODEL_NAME, "messages": MESSAGES, "max_tokens": 8, "stream": chunked}
    got = run_peer(
        "client",
        {
            "gateway": deployment.gateway_url + GATEWAY_PATH,
            "keys": served_keys.hex(),
            "chunked": chunked,
            "request": {
                "method": "POST",
                "scheme": "http",
                "authority": host,
                "path": "/v1/chat/completions",
                "headers": [["content-type", "application/json"]],
                "body": json.dumps(body),
            },
        },
        timeout=300,
    )
    assert got.get("status") == 200, got
    if not chunked:
        assert got["media"] == "message/ohttp-res"
        assert json.loads(got["body"])["choices"][0]["message"]["content"]
    else:
        assert got["media"] == "message/ohttp-chunked-res"  # a chunked request gets a chunked response
        events = [line for line in got["body"].splitlines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) > 3
        assert got["chunks"] > 2  # head and tokens sealed as they came, not one final lump


def test_veil_clients_use_xwing(deployment: LocalDeployment, attested: AttestedCoordinator) -> None:
    with Client(deployment.policy_path) as client:
        assert client.attestation.suite.post_quantum
        assert client.attestation.suite.config.kem_id == KEM_XWING
        assert "".join(_streamed(client._openai)).strip()  # type: ignore[arg-type]

    headers: list[bytes] = []

    class Tap(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            headers.append(request.read()[:7])
            return super().handle_request(request)

    for chunked in (False, True):
        transport = OhttpTransport(attested.key_config, deployment.gateway_url, chunked=chunked, transport=Tap())
        done = _openai(deployment.gateway_url, transport).chat.completions.create(
            model=DEFAULT_MODEL_NAME,
            messages=MESSAGES,
            max_tokens=4,  # type: ignore[arg-type]
        )
        assert done.choices[0].message.content is not None
    xwing_key_id = attested.key_configs[1].key_id
    # key id, KEM 0x647a, HKDF-SHA256, AES-256-GCM: on the wire, not just in the choice
    assert headers == [bytes([xwing_key_id]) + bytes.fromhex("647a00010002")] * 2

    shown = subprocess.run(
        [sys.executable, "-m", "veil", "verify", "--policy", str(deployment.policy_path), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    suite = json.loads(shown.stdout)["ohttp_suite"]
    assert suite["post_quantum"] and suite["name"] == "X-Wing (MLKEM768-X25519) / HKDF-SHA256 / AES-256-GCM"
    human = subprocess.run(
        [sys.executable, "-m", "veil", "verify", "--policy", str(deployment.policy_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "X-Wing (MLKEM768-X25519)" in human.stdout and "post-quantum" in human.stdout
