"""Attack: a web page on another local port frames the verification page and drives the proxy, in a real browser.

The attacker controls a page the user opens in chromium, served from another port of 127.0.0.1
(same *site* as the proxy, another *origin*: the case a dev server or a hostile local program
gives). It frames the proxy's page (to clickjack its Send and Verify buttons), sends a simple
``no-cors`` text/plain POST to ``/v1/chat/completions`` (to spend the user's deployment or time
answers), asks for a verification, and tries to read ``/veil/verification``. The headers are the
ones chromium itself adds (``Origin``, ``Sec-Fetch-Site: same-site``), not hand-made ones
(tests/attacks/test_proxy_cross_site.py has those).

Refused with: 403 ``proxy.cross_site`` for every request of the attacker's page, the frame
included (the proxy's guard); nothing reaches the engine and no verification is run for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from attacks.client_stack import MODEL, client_stack
from browser_fixtures import browser  # noqa: F401  (a fixture)
from veil.client.freshness import AsyncReverifier
from veil.client.proxy import create_proxy_app
from veil.testing import ServerThread

pytestmark = pytest.mark.slow  # live servers on loopback and a browser

ATTACK_JS = (
    """
const proxy = document.body.dataset.proxy;
const chat = JSON.stringify({model: "%s", messages: [{role: "user", content: "spend the user's quota"}]});
const tries = [
  fetch(proxy + "/v1/chat/completions", {method: "POST", mode: "no-cors", body: chat, headers: {"content-type": "text/plain"}}),
  fetch(proxy + "/veil/verify", {method: "POST", mode: "no-cors", body: "{}", headers: {"content-type": "text/plain"}}),
  fetch(proxy + "/veil/verification").then((r) => r.text()),
];
Promise.allSettled(tries).then((results) => { window.attackDone = results.map((r) => r.status); });
"""
    % MODEL
)


class Recorder:
    """Wraps the proxy app (outermost) and notes each answer's path, status and body as it went out."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.app, self.answers = app, []

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        answer = {"path": scope["path"], "status": None, "body": b""}

        async def noting(message) -> None:  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")
            await send(message)

        await self.app(scope, receive, noting)
        self.answers.append(answer)


def attacker_site(proxy_url: str) -> Starlette:
    async def page(_: object) -> HTMLResponse:
        return HTMLResponse(
            f'<!doctype html><body data-proxy="{proxy_url}"><iframe id="victim" src="{proxy_url}/" '
            'width="800" height="600"></iframe><script src="/attack.js"></script></body>'
        )

    async def script(_: object) -> Response:
        return Response(ATTACK_JS, media_type="text/javascript")

    return Starlette(routes=[Route("/", page), Route("/attack.js", script)])


@pytest.fixture(scope="module")
def sites() -> Iterator[SimpleNamespace]:
    with client_stack() as stack:
        verifier = AsyncReverifier(stack.policy(pinned=False))
        recorder = Recorder(create_proxy_app(verifier))
        with ServerThread(recorder) as proxy, ServerThread(attacker_site(proxy.url)) as attacker:
            deadline = time.monotonic() + 60
            while verifier.verifications == 0:  # the proxy's own first verification, before the attack
                assert time.monotonic() < deadline
                time.sleep(0.05)
            yield SimpleNamespace(
                proxy=proxy.url, attacker=attacker.url, engine=stack.engine, verifier=verifier, answers=recorder.answers
            )


def test_a_page_on_another_port_can_neither_frame_nor_drive_the_proxy(browser, sites) -> None:  # noqa: F811
    page = browser.new_page()
    sites.answers.clear()
    engine_before, verifications_before = sites.engine.requests, sites.verifier.verifications
    page.goto(sites.attacker + "/")
    page.wait_for_function("() => window.attackDone !== undefined", timeout=60_000)
    deadline = time.monotonic() + 30
    while len(sites.answers) < 4 and time.monotonic() < deadline:  # the frame may trail the fetches
        time.sleep(0.05)
    assert sorted(a["path"] for a in sites.answers) == ["/", "/v1/chat/completions", "/veil/verification", "/veil/verify"]
    for a in sites.answers:
        assert a["status"] == 403 and json.loads(a["body"])["error"]["code"] == "proxy.cross_site", a
    assert sites.engine.requests == engine_before  # nothing forwarded
    assert sites.verifier.verifications == verifications_before  # no verification run for the attacker
    page.close()
