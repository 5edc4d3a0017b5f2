"""Attack: a tenant spends more tokens than its ``tokens_per_minute`` through llama.cpp's ``/infill``.

The attacker is a tenant with its own valid API key and a token quota; it controls its own
requests. The gateway admits a request against an estimate (the body's size / 4 plus the output
limit it asks for) and settles it with the tokens the answer reports. ``/infill`` reports
``tokens_evaluated`` / ``tokens_predicted`` instead of OpenAI's ``usage.total_tokens``; a gateway
that read only OpenAI's fields would leave the estimate standing, so a prompt of many-token
characters (a snowman is 3 byte tokens but one 6-byte ``\\u2603`` escape) costs the tenant half of
what it cost the worker, and its answer nothing at all (``n_predict: -1`` states no limit).
Defence: the gateway reads each API's own usage fields (``gateway._total_tokens``; and its output
limit, ``tenants._OUTPUT_LIMITS``, for the estimate). Real gateway app and a llama.cpp engine
process (a tiny GGUF the test writes), over OHTTP.
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

TPM = 400


@pytest.fixture
def infill(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[dict[str, Any]], httpx.Response]]:
    """A fresh gateway (full bucket) per test, for one tenant with a ``TPM`` quota."""
    root: Path = tmp_path_factory.mktemp("quota-other-apis")
    model = write_gguf(root / "tiny-coder.gguf")
    pair = KeyPair.generate(6)
    key, entry = create_tenant("attacker", 1000, tokens_per_minute=TPM)
    ref = [ReferenceValues(platform="sim-snp", measurements=["00" * 48])]
    manifest = Manifest(coordinator=ref, workers=ref, admin_keys=["00" * 32], tenants=[entry])
    with EngineProcess(root / "engine.sock", model.path, model_id="tiny-coder", threads=1, n_ctx=1024, startup_timeout=120):
        app = create_gateway_app(KeyStore([pair]), EngineLink(str(root / "engine.sock")), manifest=manifest, engine="llama.cpp")
        with ServerThread(app) as gateway, httpx.Client(transport=OhttpTransport(pair.config, gateway.url), timeout=120) as http:
            yield lambda body: http.post(f"{gateway.url}/infill", json=body, headers={"authorization": f"Bearer {key}"})


def test_the_answers_reported_tokens_are_charged(infill: Callable[[dict[str, Any]], httpx.Response]) -> None:
    body = {"input_prefix": "\u2603" * 120, "input_suffix": "\n", "n_predict": 1}  # ~195 estimated, ~370 real
    first = infill(body)
    assert first.status_code == 200 and first.json()["tokens_evaluated"] > TPM * 3 // 4
    second = infill(body)  # the first's real cost left too little for a second
    assert second.status_code == 429 and second.json()["error"]["reason"] == "tenant.rate_limited", second.text
