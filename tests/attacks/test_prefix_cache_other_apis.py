"""Attack: a tenant probes another tenant's cached prefix through the APIs beside chat completions.

The attacker is a tenant with its own valid API key on a shared worker. It controls its own
requests and sees its own answers. The gateway scopes llama.cpp's prefix cache per tenant by
setting each tenant's ``cache_salt`` (tests/attacks/test_prefix_cache_across_tenants.py), but the
engines also serve Anthropic's Messages API, OpenAI's Responses API and llama.cpp's ``/infill``,
each reporting the prefix it reused (``cache_read_input_tokens``, ``input_tokens_details.
cached_tokens``, ``tokens_cached``). Were those paths left without the salt, two tenants using
them would share one cache scope and the attacker would read from the count (or the timing)
whether the victim's last prompt began with its guess. Defence: the gateway salts every path that
reaches a model (``SALTED_PATHS``). The control shows the cache working within one tenant, so a
zero across tenants means the scope held. Real gateway app and a llama.cpp engine process (a tiny
GGUF the test writes), over OHTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tiny_models import write_gguf
from veil.admin import create_tenant
from veil.client.transport import OhttpTransport
from veil.engines.launcher import EngineProcess
from veil.manifest import Manifest, ReferenceValues
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.testing import ServerThread
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app

pytestmark = pytest.mark.slow

MODEL_ID = "tiny-coder"
SECRET = "My bank PIN is 4 8 1 5 and my mother's maiden name is Okonkwo; remember both."


def _messages(text: str) -> tuple[str, dict[str, Any], Callable[[dict[str, Any]], int]]:
    return (
        "/v1/messages",
        {"model": MODEL_ID, "max_tokens": 1, "messages": [{"role": "user", "content": text}]},
        lambda a: a["usage"]["cache_read_input_tokens"],
    )


def _responses(text: str) -> tuple[str, dict[str, Any], Callable[[dict[str, Any]], int]]:
    return (
        "/v1/responses",
        {"model": MODEL_ID, "max_output_tokens": 1, "input": text},
        lambda a: a["usage"]["input_tokens_details"]["cached_tokens"],
    )


def _infill(text: str) -> tuple[str, dict[str, Any], Callable[[dict[str, Any]], int]]:
    return ("/infill", {"input_prefix": text, "input_suffix": "\n", "n_predict": 1}, lambda a: a["tokens_cached"])


@pytest.fixture(scope="module")
def send(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., int]]:
    root: Path = tmp_path_factory.mktemp("prefix-other-apis")
    model = write_gguf(root / "tiny-coder.gguf")
    pair = KeyPair.generate(4)
    keys = dict((name, create_tenant(name, 1000)) for name in ("victim", "attacker"))
    ref = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
    manifest = Manifest(coordinator=ref, workers=ref, admin_keys=["00" * 32], tenants=[e for _, e in keys.values()])
    with EngineProcess(root / "engine.sock", model.path, model_id=MODEL_ID, threads=1, n_ctx=1024, startup_timeout=120):
        app = create_gateway_app(KeyStore([pair]), EngineLink(str(root / "engine.sock")), manifest=manifest, engine="llama.cpp")
        with ServerThread(app) as gateway, httpx.Client(transport=OhttpTransport(pair.config, gateway.url), timeout=120) as http:

            def cached(tenant: str, request: Callable[[str], tuple[str, dict[str, Any], Any]], text: str, **extra: Any) -> int:
                path, body, read = request(text)
                resp = http.post(
                    f"{gateway.url}{path}", json={**body, **extra}, headers={"authorization": f"Bearer {keys[tenant][0]}"}
                )
                assert resp.status_code == 200, resp.text
                return int(read(resp.json()))

            yield cached


@pytest.mark.parametrize("api", [_messages, _responses, _infill], ids=["messages", "responses", "infill"])
def test_a_tenant_cannot_see_another_tenants_cached_prefix(send: Callable[..., int], api: Any) -> None:
    send("victim", api, SECRET)
    assert send("victim", api, SECRET) > 10  # control: within one tenant the prefix is reused
    assert send("attacker", api, SECRET, cache_salt="victim") == 0  # the attack, even naming a salt
    assert send("victim", api, SECRET) == 0  # and the attacker's state never serves the victim
