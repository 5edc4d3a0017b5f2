"""The shipped OHTTP relay (deploy/haproxy/relay.cfg, RFC 9458's Oblivious Relay Resource) on a
real haproxy in front of a real gateway, on loopback: the SDK and `veil proxy` pointed at it through
the client policy, streams through it, and everything that is not an OHTTP request refused by the
relay itself (with relay.* reason codes) without reaching the gateway. The attack (a gateway
operator learning who asked) is tests/attacks/test_relay_hides_the_client.py.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from haproxy_fixtures import require_haproxy, start_stack
from veil.balancer import HAProxy, render
from veil.testing import ServerThread, free_port

ALLOWED = {"content-type", "content-length", "transfer-encoding", "accept", "host"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require_haproxy()
    s = start_stack(tmp_path_factory.mktemp("relay"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def relay(stack, tmp_path_factory):
    bind = f"127.0.0.1:{free_port()}"
    proxy = HAProxy(
        render("relay.cfg"),
        {
            "VEIL_RELAY_BIND": bind,
            "VEIL_GATEWAY": stack.gateway_urls[0].removeprefix("http://"),
            "VEIL_GATEWAY_HOST": "gateway.veil.test",
        },
        tmp_path_factory.mktemp("relay-haproxy"),
    )
    proxy.start([bind])
    yield f"http://{bind}"
    proxy.stop()


def test_sdk_through_the_relay(stack, relay) -> None:
    from veil.client.sdk import Client

    seen = stack.seen[0].requests
    before = len(seen)
    with Client(stack.policy(relay_url=relay)) as client:
        assert client.attestation.relay_url == relay
        whole = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hello relay"}])
        assert whole.choices[0].message.content == "echo: hello relay"
        words = [
            c.choices[0].delta.content
            for c in client.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "one two three"}], stream=True
            )
            if c.choices and c.choices[0].delta.content
        ]
        assert "".join(words).split() == ["echo:", "one", "two", "three"]
    assert len(seen) == before + 2  # both went through the relay to the gateway
    for _, headers in seen[before:]:
        assert set(headers) <= ALLOWED, headers
        assert headers["host"] == "gateway.veil.test"


def test_veil_proxy_through_the_relay(stack, relay) -> None:
    from veil.client.freshness import AsyncReverifier
    from veil.client.proxy import create_proxy_app
    from veil.client.verify import verify_coordinator

    attested = verify_coordinator(stack.policy(relay_url=relay))
    assert attested.to_json()["relay_url"] == relay
    seen = stack.seen[0].requests
    before = len(seen)
    with ServerThread(create_proxy_app(AsyncReverifier(stack.policy(relay_url=relay)))) as proxy:
        client = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
        got = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "via proxy"}])
    assert got.choices[0].message.content == "echo: via proxy"
    assert len(seen) == before + 1 and seen[-1][1]["host"] == "gateway.veil.test"


@pytest.mark.parametrize(
    "method,path,headers,content,status,reason",
    [
        ("GET", "/.well-known/ohttp-gateway", {}, None, 405, "relay.method_not_allowed"),
        ("POST", "/.well-known/ohttp-gateway", {"content-type": "application/json"}, b"{}", 415, "relay.bad_media_type"),
        ("POST", "/.well-known/ohttp-gateway", {"content-type": "message/ohttp-res"}, b"x", 415, "relay.bad_media_type"),
        ("POST", "/v1/chat/completions", {"content-type": "message/ohttp-req"}, b"x", 404, "relay.not_found"),
        (
            "POST",
            "/.well-known/ohttp-gateway/../../v1/attestation",
            {"content-type": "message/ohttp-req"},
            b"x",
            404,
            "relay.not_found",
        ),
        (
            "POST",
            "/.well-known/ohttp-gateway",
            {"content-type": "message/ohttp-req"},
            b"x" * (8 * 1024 * 1024 + 1),
            413,
            "relay.too_large",
        ),
    ],
)
def test_relay_refuses_everything_but_ohttp(stack, relay, method, path, headers, content, status, reason) -> None:
    seen = stack.seen[0].requests
    before = len(seen)
    resp = httpx.request(method, relay + path, headers=headers, content=content, timeout=30)
    assert resp.status_code == status
    assert resp.json()["error"]["reason"] == reason
    assert len(seen) == before, "a refused request must not reach the gateway"


def test_gateway_headers_do_not_reach_the_client(stack, relay) -> None:
    """The gateway's own headers (server software, cookies it might set) stop at the relay; its
    clear refusals (reason codes only) pass."""
    direct = httpx.post(
        stack.gateway_urls[0] + "/.well-known/ohttp-gateway", headers={"content-type": "message/ohttp-req"}, content=b"\x01" * 64
    )
    assert "server" in direct.headers  # uvicorn names itself
    relayed = httpx.post(
        relay + "/.well-known/ohttp-gateway", headers={"content-type": "message/ohttp-req"}, content=b"\x01" * 64
    )
    assert relayed.status_code == direct.status_code == 400
    assert relayed.json()["error"]["reason"] == direct.json()["error"]["reason"]
    assert set(relayed.headers) <= {"content-type", "content-length", "transfer-encoding", "connection"}
