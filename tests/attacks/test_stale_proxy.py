"""Attack: change the deployment under a running `veil proxy` (or SDK client) and keep it forwarding on a stale verdict.

The attacker holds the operator's powers: it sets a new manifest on the coordinator (signed with
the admin key) while a proxy that verified the old one keeps running — a manifest the proxy's own
policy refuses (a digest pin no longer matches; an unsandboxed engine). Before the fix the proxy
verified once and forwarded prompts forever, showing the stale verification.

Refused with: within one re-verification interval the proxy answers every request with HTTP 503
and the refusal's reason (``manifest.not_trusted``, ``policy.sandbox_refused``), forwards nothing
more to the engine, and ``GET /veil/verification`` shows the refusal with its time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from attacks.client_stack import MODEL, Stack, client_stack
from veil.client.freshness import AsyncReverifier
from veil.client.proxy import create_proxy_app
from veil.manifest import SandboxSettings
from veil.testing import ServerThread

pytestmark = pytest.mark.slow  # live servers and processes on loopback

INTERVAL = 1.0
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with client_stack() as s:
        yield s


def _refused_within_an_interval(proxy_url: str, changed_at: float) -> openai.APIStatusError:
    sdk = openai.OpenAI(base_url=f"{proxy_url}/v1", api_key="unused", max_retries=0, timeout=30)
    deadline = changed_at + INTERVAL + 15  # one interval, plus headroom for a loaded machine
    while True:
        try:
            sdk.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
        except openai.APIStatusError as exc:
            return exc
        assert time.monotonic() < deadline, "the proxy kept forwarding after the manifest changed"
        time.sleep(0.05)


@pytest.mark.parametrize(
    "pinned, change, reason",
    [
        (True, {"settings": {"changed": True}}, "manifest.not_trusted"),
        (False, {"sandbox": SandboxSettings(profile="none")}, "policy.sandbox_refused"),
    ],
)
def test_proxy_stops_forwarding_when_the_manifest_changes_beyond_its_policy(
    stack: Stack, pinned: bool, change: dict, reason: str
) -> None:
    verifier = AsyncReverifier(stack.policy(pinned=pinned), interval=INTERVAL)
    with ServerThread(create_proxy_app(verifier)) as proxy:
        sdk = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0, timeout=30)
        assert sdk.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content  # type: ignore[arg-type]
        before = httpx.get(f"{proxy.url}/veil/verification").json()
        assert before["status"] == "verified" and before["verification"]["manifest_digest"] == stack.head.digest.hex()

        stack.update(**change)
        refusal = _refused_within_an_interval(proxy.url, time.monotonic())
        assert refusal.status_code == 503 and refusal.code == reason  # type: ignore[attr-defined]

        reached = stack.engine.requests
        with pytest.raises(openai.APIStatusError):
            sdk.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        assert stack.engine.requests == reached  # nothing more reaches the engine

        shown = httpx.get(f"{proxy.url}/veil/verification").json()
        assert shown["status"] == "refused" and shown["verification"] is None
        assert shown["refusal"]["reason"] == reason and shown["checked_at"]


def test_sdk_clients_stop_too(stack: Stack) -> None:
    """``veil.Client`` and ``veil.AsyncClient`` hold the same kind of verifier as the proxy."""
    import asyncio

    from veil.client.sdk import AsyncClient, Client
    from veil.errors import VeilError

    stack.update()  # a deployment the policy accepts, whatever the tests before left
    policy = stack.policy(pinned=True)
    with Client(policy, reverify_seconds=INTERVAL) as client:
        aclient = AsyncClient(policy, reverify_seconds=INTERVAL)
        asyncio.run(aclient.verify())
        assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices  # type: ignore[arg-type]
        stack.update(settings={"changed": "again"})
        reached = stack.engine.requests
        deadline = time.monotonic() + INTERVAL + 15
        while True:
            try:
                client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
            except VeilError as err:
                assert err.reason == "manifest.not_trusted"
                break
            assert time.monotonic() < deadline, "the SDK kept sending after the manifest changed"
            reached = stack.engine.requests
            time.sleep(0.05)

        async def refused() -> str:
            await asyncio.sleep(INTERVAL)
            try:
                await aclient.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
            except VeilError as err:
                return err.reason
            finally:
                await aclient.close()
            return "sent"

        assert asyncio.run(refused()) == "manifest.not_trusted"
        assert stack.engine.requests == reached
