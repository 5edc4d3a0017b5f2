"""Attack: another local user gets code completions (and spends the user's quota) through the
user's token-protected `veil proxy` by calling a forwarded path outside ``/v1/``.

The attacker controls a process on the same machine: it can reach 127.0.0.1 and send any request
a program can (JSON body, no browser headers), but it does not know the proxy's token. `veil
proxy` forwards llama.cpp's ``/infill`` (llama.vscode's code-completion path) as well as ``/v1/``.
Refused with ``proxy.unauthorized`` (401) on every forwarded path, so nothing is encrypted to the
deployment and no completion comes back; with the token (as llama.vscode sends its API key,
``Authorization: Bearer``) the same request is answered. The deployment is real on loopback: a
gateway app holding a fresh OHTTP key and a llama.cpp engine process serving a tiny FIM model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tiny_models import MIDDLE, write_gguf
from veil.client.proxy import create_encrypting_proxy
from veil.engines.launcher import EngineProcess
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.testing import ServerThread
from veil.worker.engine_link import EngineLink
from veil.worker.gateway import create_gateway_app

pytestmark = pytest.mark.slow  # live servers and an engine process on loopback

TOKEN = "proxy-token-for-this-test"
INFILL = {"input_prefix": "def add(a, b):\n", "input_suffix": "\n", "n_predict": 8}


@pytest.fixture(scope="module")
def proxy_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("token-every-path")
    model = write_gguf(root / "tiny-coder.gguf")
    pair = KeyPair.generate(5)
    with EngineProcess(root / "engine.sock", model.path, model_id="tiny-coder", threads=1, n_ctx=512, startup_timeout=120):
        upstream = EngineLink(str(root / "engine.sock"))
        with ServerThread(create_gateway_app(KeyStore([pair]), upstream)) as gateway:
            summary = {"verdict": "accept", "simulated": True, "note": "test stand-in for an attestation"}
            with ServerThread(create_encrypting_proxy(pair.config, gateway.url, summary, token=TOKEN)) as proxy:
                yield proxy.url


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_infill_without_the_token_is_refused(proxy_url: str, auth: str | None) -> None:
    headers = {"authorization": auth} if auth else {}
    resp = httpx.post(f"{proxy_url}/infill", json=INFILL, headers=headers, timeout=120)
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "proxy.unauthorized"
    assert MIDDLE not in resp.text


def test_infill_with_the_token_is_answered(proxy_url: str) -> None:
    resp = httpx.post(f"{proxy_url}/infill", json=INFILL, headers={"authorization": f"Bearer {TOKEN}"}, timeout=120)
    assert resp.status_code == 200 and resp.json()["content"] == MIDDLE
    assert httpx.get(f"{proxy_url}/veil/verification", timeout=30).status_code == 200  # its own page stays open
