"""Attack: the host puts markup into what the verification page shows, to run script in it.

The attacker controls the network between the proxy and the coordinator (the host owns it). The
evidence it cannot forge, but it can rewrite the unsigned parts of the attestation answer: here it
adds a field to the served manifest whose *name* is HTML with an event handler. The verifier
refuses the manifest (``manifest.malformed``) and its message quotes the field name, so the text
the page shows under REFUSED is the attacker's markup. Had the page built HTML from it, the
handler would run with the page's origin — the origin allowed to drive the chat and read answers.

Refused with: the page sets only ``textContent`` (the markup shows as literal text, no element is
created) and its Content-Security-Policy (``script-src 'self'``, nothing inline) would block the
handler even so; the proxy forwards nothing (``manifest.malformed``).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from attacks.client_stack import client_stack
from browser_fixtures import browser, watch  # noqa: F401  (a fixture)
from veil import wire
from veil.client.freshness import AsyncReverifier
from veil.client.proxy import create_proxy_app
from veil.testing import ServerThread

pytestmark = pytest.mark.slow  # live servers on loopback and a browser

MARKUP = '<img id="pwned" src="/x" onerror="document.title=\'pwned\'"><b id="bold">owned</b>'


def tampering_network(coordinator_url: str) -> Starlette:
    """Passes the coordinator's answers on, with a markup-named field added to the served manifest."""

    async def attestation(request: Request) -> Response:
        async with httpx.AsyncClient(timeout=30) as http:
            resp = await http.get(coordinator_url + wire.ATTESTATION_PATH, params=dict(request.query_params))
        body = resp.json()
        body["manifest"][MARKUP] = 1
        return JSONResponse(body)

    return Starlette(routes=[Route(wire.ATTESTATION_PATH, attestation)])


@pytest.fixture(scope="module")
def refused_proxy() -> Iterator[str]:
    with client_stack() as stack, ServerThread(tampering_network(stack.coordinator_url)) as network:
        policy = stack.policy(pinned=False).model_copy(update={"coordinator_url": network.url})
        with ServerThread(create_proxy_app(AsyncReverifier(policy))) as proxy:
            yield proxy.url


def test_markup_from_the_host_is_shown_as_text_and_never_runs(browser, refused_proxy: str) -> None:  # noqa: F811
    status = httpx.post(f"{refused_proxy}/veil/verify", json={}, timeout=60).json()
    assert status["refusal"]["reason"] == "manifest.malformed" and MARKUP in status["refusal"]["message"]
    page = browser.new_page()
    seen = watch(page, refused_proxy)
    page.goto(refused_proxy + "/")
    page.wait_for_selector("#status[data-status=refused]", timeout=60_000)
    assert MARKUP in page.locator("#refusal-message").inner_text()  # the literal text
    assert page.locator("#pwned").count() == 0 and page.locator("#bold").count() == 0  # no element made
    assert page.title() != "pwned"
    seen.clean()  # nothing fetched from elsewhere, no CSP violation reported
    page.close()
