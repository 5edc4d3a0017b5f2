"""The verification page in a real browser (Debian's chromium under Playwright) against `veil up`.

A real local deployment (coordinator, worker, sandboxed engine with the bundled model) and a real
`veil proxy` process in front of it: the page loads with nothing from another origin and no CSP
violation, shows the platform, SIMULATED banner, measurement (the one the verifier saw, and that
it matches the pinned value), every check the verifier ran, the manifest and the OHTTP keys; the
chat streams an answer piece by piece. A proxy whose policy pins another measurement shows the
refusal with the verifier's own reason code and message, and offers no chat; an open page turns
REFUSED by itself when the deployment stops verifying under it; a token-protected proxy's page asks
for the token.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from attacks.client_stack import client_stack
from browser_fixtures import browser, watch  # noqa: F401  (a fixture)
from veil.client.freshness import AsyncReverifier
from veil.client.policy import ClientPolicy, load_with_log
from veil.client.proxy import create_proxy_app
from veil.client.verify import AttestedCoordinator, verify_coordinator
from veil.errors import VeilError
from veil.localdeploy import LocalDeployment
from veil.manifest import ReferenceValues, SandboxSettings
from veil.testing import ServerThread, free_port

pytestmark = pytest.mark.slow

SANDBOX = os.environ.get("VEIL_TEST_SANDBOX", "bubblewrap")
TIMEOUT_MS = 90_000  # a loaded machine: the tiny model still answers in seconds


@pytest.fixture(scope="module")
def deployment(tmp_path_factory) -> Iterator[LocalDeployment]:
    dep = LocalDeployment(
        tmp_path_factory.mktemp("veil-state"), coordinator_port=free_port(), worker_port=free_port(), sandbox=SANDBOX
    )
    dep.start()
    yield dep
    dep.stop()


@pytest.fixture(scope="module")
def proxy_url(deployment: LocalDeployment, tmp_path_factory) -> Iterator[str]:
    """`veil proxy` as a user starts it, on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "veil", "proxy", "--policy", str(deployment.policy_path), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/veil/verification", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def attested(deployment: LocalDeployment) -> AttestedCoordinator:
    """What the verifier itself says, independently of the page (with the same manifest log as the proxy)."""
    policy, log = load_with_log(deployment.policy_path)
    return verify_coordinator(policy, manifest_log=log)


def _chat(page, prompt: str) -> None:
    page.fill("#max-tokens", "12")  # the machine may be busy: a short answer streams all the same
    page.fill("#prompt", prompt)
    page.click("#send")


def test_page_shows_what_was_verified(browser, proxy_url: str, attested: AttestedCoordinator) -> None:  # noqa: F811
    page = browser.new_page()
    seen = watch(page, proxy_url)
    page.goto(proxy_url + "/")
    page.wait_for_selector("#status[data-status=verified]", timeout=TIMEOUT_MS)
    claims = attested.verdict.claims
    assert claims is not None
    platform = page.locator("#platform")
    assert f"{claims.platform} (SIMULATED)" in platform.inner_text()
    assert claims.measurement in platform.inner_text()
    assert "matches a pinned value\nyes" in platform.inner_text()
    assert page.locator("#simulated").is_visible() and page.locator("#refusal").is_hidden()
    assert "coordinator runs on sim-snp" in page.locator("#simulated-parts").inner_text()
    shown = page.locator("#checks li .name").all_inner_texts()
    assert shown == [check for check, _ in attested.checks]
    manifest = page.locator("#manifest").inner_text()
    chain = page.locator("#chain").inner_text()
    assert "certificate chain" in chain and "VCEK <- ASK <- ARK" in chain  # the verifier's own words
    assert attested.manifest is not None and attested.manifest.digest.hex() in manifest
    assert "smollm2-135m-instruct" in manifest
    model = attested.manifest.manifest.models[0]
    if model.tree_sha256:  # sealed weights: the page names the pin the TEE checks, not only the hub's digest
        assert f"the TEE checks tree {model.tree_sha256[:16]}" in manifest
    assert SANDBOX in page.locator("#admits").inner_text()
    assert "(current)" in page.locator("#history").inner_text()  # `veil proxy` keeps the manifest log
    keys = page.locator("#keys").inner_text()
    assert all(f"key id {c.key_id}:" in keys for c in attested.key_configs)
    assert f"key id {attested.suite.config.key_id}: {attested.suite.name}" in page.locator("#ohttp").inner_text()
    page.click("#reverify")  # refreshed on demand: a new verification, still verified
    # (arrow functions: the page's CSP forbids eval, which a bare expression string would need)
    page.wait_for_function(
        "() => document.getElementById('status').dataset.status === 'verified' && !document.getElementById('reverify').disabled",
        timeout=TIMEOUT_MS,
    )
    seen.clean()
    page.close()


def test_chat_streams_an_answer(browser, proxy_url: str) -> None:  # noqa: F811
    page = browser.new_page()
    seen = watch(page, proxy_url)
    page.goto(proxy_url + "/")
    page.wait_for_selector("#status[data-status=verified]", timeout=TIMEOUT_MS)
    assert page.locator("#model").input_value() == "smollm2-135m-instruct"
    # count the states the answer passes through while it is still streaming (not one final paint)
    page.evaluate("""() => {
        window.__states = [];
        new MutationObserver(() => {
            const m = document.querySelector('.msg.assistant.streaming .text');
            if (m && m.textContent) window.__states.push(m.textContent.length);
        }).observe(document.getElementById('transcript'), {subtree: true, childList: true, characterData: true});
    }""")
    _chat(page, "Count from one to ten.")
    page.wait_for_function("() => document.getElementById('chat-state').textContent === 'done'", timeout=TIMEOUT_MS)
    answer = page.locator(".msg.assistant .text").last.inner_text()
    assert answer.strip()
    states = page.evaluate("() => window.__states")
    assert len(set(states)) > 3, states  # shown piece by piece as the proxy decrypted them
    assert page.locator(".msg.error").count() == 0
    seen.clean()
    page.close()


def test_a_token_protected_proxy_asks_for_its_token(browser, deployment: LocalDeployment) -> None:  # noqa: F811
    token = "the-proxy-token-for-this-test"
    with ServerThread(create_proxy_app(AsyncReverifier(ClientPolicy.load(deployment.policy_path)), token=token)) as proxy:
        page = browser.new_page()
        seen = watch(page, proxy.url)
        page.goto(proxy.url + "/")  # the page itself needs no token
        page.wait_for_selector("#status[data-status=verified]", timeout=TIMEOUT_MS)
        assert page.locator("#token-label").is_hidden()
        _chat(page, "Hello")
        page.wait_for_selector(".msg.error", timeout=TIMEOUT_MS)
        assert "proxy.unauthorized" in page.locator(".msg.error").inner_text()
        assert page.locator("#token-label").is_visible()
        page.fill("#token", token)
        _chat(page, "Hello")
        page.wait_for_function("() => document.getElementById('chat-state').textContent === 'done'", timeout=TIMEOUT_MS)
        assert page.locator(".msg.assistant .text").last.inner_text().strip()
        assert not seen.foreign_requests and not seen.page_errors
        page.close()


@pytest.fixture(scope="module")
def refused_url(deployment: LocalDeployment) -> Iterator[tuple[str, VeilError]]:
    """A proxy whose policy pins another coordinator measurement, and the verifier's own refusal."""
    policy = ClientPolicy.load(deployment.policy_path)
    policy = policy.model_copy(update={"coordinator": [ReferenceValues(platform="sim-snp", measurements=["ab" * 48])]})
    with pytest.raises(VeilError) as refusal:
        verify_coordinator(policy)
    with ServerThread(create_proxy_app(AsyncReverifier(policy))) as proxy:
        yield proxy.url, refusal.value


def test_refused_deployment_shows_the_reason(browser, refused_url: tuple[str, VeilError]) -> None:  # noqa: F811
    url, refusal = refused_url
    page = browser.new_page()
    seen = watch(page, url)
    page.goto(url + "/")
    page.wait_for_selector("#status[data-status=refused]", timeout=TIMEOUT_MS)
    assert page.locator("#refusal").is_visible()
    assert page.locator("#refusal-reason").inner_text() == refusal.reason
    assert page.locator("#refusal-message").inner_text() == refusal.message
    assert page.locator("#status").inner_text() == "REFUSED"
    assert page.locator("#send").is_disabled()  # nothing to chat with
    assert "not verified" in page.locator("#ohttp").inner_text()
    seen.clean()
    page.close()


def test_the_open_page_shows_a_deployment_that_stops_verifying(browser) -> None:  # noqa: F811
    """No stale VERIFIED: the operator unsandboxes the engine under an open page; it turns REFUSED by itself."""
    with client_stack() as stack:
        verifier = AsyncReverifier(stack.policy(pinned=False), interval=1.0)
        with ServerThread(create_proxy_app(verifier)) as proxy:
            page = browser.new_page()
            seen = watch(page, proxy.url)
            page.goto(proxy.url + "/")
            page.wait_for_selector("#status[data-status=verified]", timeout=TIMEOUT_MS)
            stack.update(sandbox=SandboxSettings(profile="none"))
            page.wait_for_selector("#status[data-status=refused]", timeout=TIMEOUT_MS)  # nobody clicked
            assert page.locator("#refusal-reason").inner_text() == "policy.sandbox_refused"
            assert page.locator("#send").is_disabled()
            seen.clean()
            page.close()
