"""Attack: the gateway's operator tries to learn who sent a request.

The attacker controls the gateway host (and so everything that reaches it in the clear: the
outer request's headers and the connection's peer address). The client sends its encapsulated
request through the shipped relay (deploy/haproxy/relay.cfg), with what client software and
proxies on its side typically add: its address (here 127.0.0.2), a User-Agent, cookies,
X-Forwarded-For / Forwarded / Via / X-Real-IP, client hints, an Authorization header.
Defence: the relay forwards only content-type, content-length, transfer-encoding and accept,
adds nothing (no forwardfor), and connects from its own address. The control run sends the
same request straight to the gateway and shows each identifying item arriving there.
"""

from __future__ import annotations

import httpx
import pytest

from haproxy_fixtures import require_haproxy, start_stack
from veil.balancer import HAProxy, render
from veil.ohttp import bhttp
from veil.ohttp.keyconfig import decode_key_config_list
from veil.ohttp.ohttp import encapsulate_request
from veil.testing import free_port

CLIENT_ADDRESS = "127.0.0.2"
IDENTIFYING = {
    "user-agent": "ExampleBrowser/1.0 (alice's laptop)",
    "cookie": "session=alice",
    "x-forwarded-for": "203.0.113.7",
    "forwarded": "for=203.0.113.7",
    "via": "1.1 corp-proxy.alice.example",
    "x-real-ip": "203.0.113.7",
    "sec-ch-ua-platform": '"Linux"',
    "authorization": "Bearer alice-token",
    "x-client-id": "alice",
}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    require_haproxy()
    stack = start_stack(tmp_path_factory.mktemp("relay-attack"))
    bind = f"127.0.0.1:{free_port()}"
    relay = HAProxy(
        render("relay.cfg"),
        {
            "VEIL_RELAY_BIND": bind,
            "VEIL_GATEWAY": stack.gateway_urls[0].removeprefix("http://"),
            "VEIL_GATEWAY_HOST": "gateway.veil.test",
        },
        tmp_path_factory.mktemp("relay-attack-haproxy"),
    )
    relay.start([bind])
    yield stack, f"http://{bind}"
    relay.stop()
    stack.stop()


def _send_as_alice(url: str, stack) -> str:
    """One encapsulated chat request from Alice's address with her stack's headers; its answer."""
    configs = decode_key_config_list(httpx.get(stack.gateway_urls[0] + "/.well-known/ohttp-gateway").content)
    inner = bhttp.encode_request(
        bhttp.Request(
            "POST",
            "https",
            "gateway.veil.test",
            "/v1/chat/completions",
            [("content-type", "application/json")],
            b'{"model": "fake", "messages": [{"role": "user", "content": "hi"}]}',
        )
    )
    enc, ctx = encapsulate_request(configs[0], inner)
    with httpx.Client(transport=httpx.HTTPTransport(local_address=CLIENT_ADDRESS)) as http:
        resp = http.post(
            url + "/.well-known/ohttp-gateway", content=enc, headers={"content-type": "message/ohttp-req", **IDENTIFYING}
        )
    assert resp.status_code == 200, resp.text
    return bhttp.decode_response(ctx.decapsulate_response(resp.content)).content.decode()


def test_control_straight_to_the_gateway_reveals_alice(deployment) -> None:
    stack, _ = deployment
    assert "echo: hi" in _send_as_alice(stack.gateway_urls[0], stack)
    peer, headers = stack.seen[0].requests[-1]
    assert peer == CLIENT_ADDRESS
    assert all(headers.get(k) == v for k, v in IDENTIFYING.items())


def test_through_the_relay_the_gateway_learns_nothing_about_alice(deployment) -> None:
    stack, relay = deployment
    assert "echo: hi" in _send_as_alice(relay, stack)  # the request still works end to end
    peer, headers = stack.seen[0].requests[-1]
    assert peer != CLIENT_ADDRESS
    assert set(headers) <= {"content-type", "content-length", "transfer-encoding", "accept", "host"}, headers
    leaked = [v for v in headers.values() if any(x in v for x in ("alice", "203.0.113.7", CLIENT_ADDRESS))]
    assert leaked == []
