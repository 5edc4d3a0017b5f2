"""Attack: re-post a captured request under another media type, to get its answer in a weaker
framing (issue 9.3).

The attacker controls the network: it captures a client's ``message/ohttp-req`` and posts the
bytes as ``message/ohttp-chunked-req``. The old gateway then tried the draft's framing, fell back
to trial decryption in ohttpy's variant and answered with the inner status in the clear and
unpadded chunks. Against real gateway processes, one without and one with the ohttpy route in its
manifest settings: the standard route reads those bytes as chunked OHTTP only and refuses them;
``/score`` does not exist unless enabled; where it is enabled, the captured request is refused as
a replay, and ohttpy's framing is answered only there, padded. Fails if trial decryption returns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from veil.ohttp import bhttp
from veil.ohttp.compat import CompatResponseReceiver
from veil.ohttp.ohttp import encapsulate_request
from veil.testing import GatewayProcess

GATEWAY = "/.well-known/ohttp-gateway"
CHUNKED = {"content-type": "message/ohttp-chunked-req"}


@pytest.fixture(scope="module")
def gateways(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    with (
        GatewayProcess(Path(tmp_path_factory.mktemp("plain")), tokens=4) as plain,
        GatewayProcess(Path(tmp_path_factory.mktemp("compat")), tokens=4, compat=True) as compat,
    ):
        yield plain, compat


def _captured(gw: GatewayProcess) -> tuple[bytes, object]:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
    inner = bhttp.Request(
        "POST",
        "https",
        "api",
        "/v1/chat/completions",
        [("content-type", "application/json"), ("date", formatdate(time.time(), usegmt=True))],
        body,
    )
    return encapsulate_request(gw.pair.config, bhttp.encode_request(inner))


def test_captured_request_is_not_answered_in_another_framing(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    plain, compat = gateways
    for gw in (plain, compat):
        captured, _ = _captured(gw)
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            r = http.post(GATEWAY, content=captured, headers=CHUNKED)
            assert r.status_code == 400 and r.json()["error"]["reason"].startswith("chunked."), r.text
            r = http.post("/score", content=captured, headers=CHUNKED)
            if gw is plain:
                assert r.status_code == 404 and r.json()["error"]["reason"] == "gateway.compat_disabled"
            else:
                assert r.status_code == 200  # its own route, the one framing it was made for
                r = http.post(GATEWAY, content=captured, headers={"content-type": "message/ohttp-req"})
                assert r.status_code == 400 and r.json()["error"]["reason"] == "ohttp.replayed"  # one answer per capture


def test_ohttpy_route_is_padded(gateways: tuple[GatewayProcess, GatewayProcess]) -> None:
    _, compat = gateways
    captured, ctx = _captured(compat)
    with httpx.Client(base_url=compat.url, timeout=30) as http:
        r = http.post("/score", content=captured, headers=CHUNKED)
    rx = CompatResponseReceiver(ctx)  # type: ignore[arg-type]
    body = b"".join(rx.feed(r.content))
    rx.close()
    assert r.status_code == 200 and json.loads(body)["choices"]
    assert len(body) & (len(body) - 1) == 0 and len(body) >= 256  # a bucket, not the answer's own length
