"""Attack: DNS rebinding turns a web page's own origin into the local `veil proxy`.

The attacker controls a domain and its DNS: the user's browser loads http://rebind.example:8472/,
then the name is re-pointed at 127.0.0.1. The page's requests are now same-origin (the browser
sends no cross-site markers) and it can read the proxy's answers — the verification page and
completions alike. What the attacker cannot change is the ``Host`` header: the browser sends the
attacker's name.

Refused with: ``proxy.bad_host`` for any Host that is not a loopback name or one the user
allowed with ``--allowed-host``; nothing is forwarded and the verification status is not shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest

from attacks.client_stack import MODEL, client_stack
from veil.client.freshness import AsyncReverifier
from veil.client.proxy import create_proxy_app
from veil.testing import ServerThread

pytestmark = pytest.mark.slow  # live servers and processes on loopback

BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture(scope="module")
def proxy() -> Iterator[SimpleNamespace]:
    with client_stack() as stack:
        app = create_proxy_app(AsyncReverifier(stack.policy(pinned=False)), allowed_hosts=["veil.internal"])
        with ServerThread(app) as p:
            yield SimpleNamespace(url=p.url, port=p.port, engine=stack.engine)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/veil/verification", "/v1/models"])
def test_a_rebound_host_is_refused(proxy, path: str) -> None:
    before = proxy.engine.requests
    for host in (f"rebind.example:{proxy.port}", "rebind.example", f"127.0.0.1.rebind.example:{proxy.port}"):
        headers = {"host": host, "content-type": "application/json", "origin": f"http://{host}", "sec-fetch-site": "same-origin"}
        resp = httpx.request(
            "POST" if "chat" in path else "GET",
            proxy.url + path,
            content=BODY if "chat" in path else None,
            headers=headers,
            timeout=30,
        )
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "proxy.bad_host", (host, resp.text)
    assert proxy.engine.requests == before


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}", "veil.internal:{port}"])
def test_loopback_and_allowed_names_are_served(proxy, host: str) -> None:
    host = host.format(port=proxy.port)
    resp = httpx.post(
        f"{proxy.url}/v1/chat/completions", content=BODY, headers={"host": host, "content-type": "application/json"}, timeout=30
    )
    assert resp.status_code == 200, resp.text
