"""Attack: a web page the user visits uses the local `veil proxy` as a cross-site tool.

The attacker controls a web page in the user's browser. It cannot read a cross-origin answer,
but it can send "simple" requests (a ``text/plain`` POST needs no CORS preflight) to
http://127.0.0.1:8472 and time them — with a one-deep prefix cache in the engine that tests
guesses about the user's last prompt — or spend the user's tenant quota. The requests below carry
exactly the headers browsers add (``Origin``, ``Sec-Fetch-Site``, ``Sec-Fetch-Mode``).

Refused with: ``proxy.cross_site`` (a foreign Origin or a cross-site/same-site Sec-Fetch-Site),
``proxy.bad_content_type`` (a POST that is not ``application/json``, which a page can only send
cross-origin after a preflight the proxy never grants), ``proxy.unauthorized`` (with a per-proxy
token, a request without it); none of them reaches the engine. The proxy's own origin and
programs (no Origin header) work as before.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import openai
import pytest

from attacks.client_stack import MODEL, client_stack
from veil.client.freshness import AsyncReverifier
from veil.client.proxy import create_proxy_app
from veil.testing import ServerThread, free_port

pytestmark = pytest.mark.slow  # live servers and processes on loopback

TOKEN = "proxy-token-for-this-test"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "was my last prompt about X?"}]})
BROWSER = {"sec-fetch-mode": "no-cors", "sec-fetch-dest": "empty"}


@pytest.fixture(scope="module")
def proxies() -> Iterator[SimpleNamespace]:
    with client_stack() as stack:
        open_port, token_port = free_port(), free_port()
        plain = create_proxy_app(AsyncReverifier(stack.policy(pinned=False)))
        guarded = create_proxy_app(AsyncReverifier(stack.policy(pinned=False)), token=TOKEN)
        with ServerThread(plain, port=open_port) as p, ServerThread(guarded, port=token_port) as t:
            yield SimpleNamespace(url=p.url, token_url=t.url, engine=stack.engine)


@pytest.mark.parametrize(
    "headers, status, reason",
    [
        (
            {"content-type": "text/plain", "origin": "https://evil.example", "sec-fetch-site": "cross-site", **BROWSER},
            403,
            "proxy.cross_site",
        ),
        ({"content-type": "application/json", "origin": "https://evil.example"}, 403, "proxy.cross_site"),
        ({"content-type": "text/plain", "origin": "null", "sec-fetch-site": "cross-site", **BROWSER}, 403, "proxy.cross_site"),
        ({"content-type": "text/plain", "sec-fetch-site": "cross-site", **BROWSER}, 403, "proxy.cross_site"),
        ({"content-type": "application/json", "sec-fetch-site": "same-site"}, 403, "proxy.cross_site"),  # another local port
        ({"content-type": "text/plain"}, 415, "proxy.bad_content_type"),  # an old browser sends no Origin on a form
        ({"content-type": "application/x-www-form-urlencoded"}, 415, "proxy.bad_content_type"),
    ],
)
def test_cross_site_requests_are_refused_before_the_engine(proxies, headers: dict, status: int, reason: str) -> None:
    before = proxies.engine.requests
    resp = httpx.post(f"{proxies.url}/v1/chat/completions", content=BODY, headers=headers, timeout=30)
    assert resp.status_code == status and resp.json()["error"]["code"] == reason
    assert proxies.engine.requests == before


def test_same_origin_and_programs_still_work(proxies) -> None:
    own = {"content-type": "application/json", "origin": proxies.url, "sec-fetch-site": "same-origin"}
    assert httpx.post(f"{proxies.url}/v1/chat/completions", content=BODY, headers=own, timeout=30).status_code == 200
    sdk = openai.OpenAI(base_url=f"{proxies.url}/v1", api_key="unused", max_retries=0, timeout=30)
    assert sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]).choices  # type: ignore[arg-type]
    assert httpx.get(f"{proxies.url}/veil/verification", timeout=30).json()["status"] == "verified"


def test_a_proxy_token_is_required_when_set(proxies) -> None:
    before = proxies.engine.requests
    for auth in (None, "Bearer wrong", f"Basic {TOKEN}"):
        headers = {"content-type": "application/json", **({"authorization": auth} if auth else {})}
        resp = httpx.post(f"{proxies.token_url}/v1/chat/completions", content=BODY, headers=headers, timeout=30)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "proxy.unauthorized"
    assert proxies.engine.requests == before
    sdk = openai.OpenAI(base_url=f"{proxies.token_url}/v1", api_key=TOKEN, max_retries=0, timeout=30)
    out = sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])  # type: ignore[arg-type]
    assert out.choices and proxies.engine.requests == before + 1
    assert out.model_extra["auth"] is None  # the proxy token never travels to the engine
