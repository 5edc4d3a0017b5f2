"""Attack: a tenant probes whether another tenant's last prompt began with a guessed prefix.

The attacker is a tenant with its own valid API key on a shared worker (or a web page driving the
user's `veil proxy`, which speaks as the user's tenant). It controls its own requests and sees its
own answers and their timing. llama.cpp reuses the evaluated prefix of the previous request, so a
guess that matches the victim's last prompt is answered faster (0.08 s vs 3.9 s measured in the
issue) — and the engine's own usage report would say how many prompt tokens came from the cache.
Defence: the gateway gives every tenant's request its tenant's ``cache_salt`` (whatever the
client sent is dropped), and the engine forgets every cached prefix when the salt changes. The
test reads the engine's cache state itself (``usage.prompt_tokens_details.cached_tokens``, the
prefix the engine reused), not the clock; the control run shows the cache working within one
tenant, so a zero across tenants means the scope held, not that nothing was measured.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from veil.admin import create_tenant
from veil.client.transport import OhttpTransport
from veil.engines.launcher import EngineProcess
from veil.manifest import Manifest, ReferenceValues
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.testing import ServerThread
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app

pytestmark = pytest.mark.slow

VICTIM_PROMPT = (
    "My bank PIN is 4 8 1 5 and my mother's maiden name is Okonkwo; please remember both of them for later and say nothing else."
)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, openai.OpenAI]]:
    sock = tmp_path_factory.mktemp("prefix") / "engine.sock"
    pair = KeyPair.generate(3)
    (victim_key, victim), (attacker_key, attacker) = create_tenant("victim", 1000), create_tenant("attacker", 1000)
    ref = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
    manifest = Manifest(coordinator=ref, workers=ref, admin_keys=["00" * 32], tenants=[victim, attacker])
    with EngineProcess(sock, threads=2, n_ctx=512, startup_timeout=180):
        upstream = EngineLink(str(sock))
        app = create_gateway_app(KeyStore([pair]), upstream, manifest=manifest, engine="llama.cpp")
        with ServerThread(app) as gateway:
            clients = {
                name: openai.OpenAI(
                    base_url=f"{gateway.url}/v1",
                    api_key=key,
                    max_retries=0,
                    http_client=httpx.Client(transport=OhttpTransport(pair.config, gateway.url), timeout=180),
                )
                for name, key in (("victim", victim_key), ("attacker", attacker_key))
            }
            yield clients
            for c in clients.values():
                c.close()


def _cached(client: openai.OpenAI, prompt: str, **extra: Any) -> int:
    """Send ``prompt`` and return how many of its tokens the engine served from its prefix cache."""
    resp = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", max_tokens=1, temperature=0, messages=[{"role": "user", "content": prompt}], **extra
    )
    assert resp.usage is not None and resp.usage.prompt_tokens > 20
    details = resp.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    return details.cached_tokens


def test_a_tenant_cannot_see_another_tenants_cached_prefix(tenants: dict[str, openai.OpenAI]) -> None:
    victim, attacker = tenants["victim"], tenants["attacker"]
    _cached(victim, VICTIM_PROMPT)
    assert _cached(victim, VICTIM_PROMPT) > 20  # control: within one tenant the prefix is reused
    # The attack: replay the guessed prompt as another tenant, even naming the victim's salt.
    assert _cached(attacker, VICTIM_PROMPT, extra_body={"cache_salt": "victim"}) == 0
    assert _cached(victim, VICTIM_PROMPT) == 0  # and the attacker's state never serves the victim
    assert _cached(attacker, VICTIM_PROMPT.split(";")[0] + "; guess") == 0  # a partial guess: same
