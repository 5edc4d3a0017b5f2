"""Attack: replay a captured OHTTP request to a running gateway (issue 9.3).

The attacker controls the network between client and worker (a relay, a load balancer, the
host): it records a client's encrypted request and posts it again, verbatim, and also posts one
whose inner Date (which it cannot change) is old. Against a real gateway process in front of a
fake engine: a replay is refused in the clear with ``ohttp.replayed`` before any decryption, for
both framings, and a stale request gets an encrypted 400 ``ohttp.date_out_of_window`` carrying
the gateway's Date (RFC 9458 §6.5.1). Fails if the replay cache or the Date check is removed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import httpx
import pytest

from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedRequestSender
from veil.ohttp.ohttp import encapsulate_request
from veil.testing import GatewayProcess

GATEWAY = "/.well-known/ohttp-gateway"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(Path(tmp_path_factory.mktemp("replay")), tokens=4) as gw:
        yield gw


def _inner(date: float | None = None) -> bhttp.Request:
    headers = [("content-type", "application/json")]
    if date is not None:
        headers.append(("date", formatdate(date, usegmt=True)))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "transfer 100 EUR"}]}).encode()
    return bhttp.Request("POST", "https", "api", "/v1/chat/completions", headers, body)


def test_a_replayed_request_is_refused(gateway: GatewayProcess) -> None:
    import time

    captured, ctx = encapsulate_request(gateway.pair.config, bhttp.encode_request(_inner(time.time())))
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        first = http.post(GATEWAY, content=captured, headers={"content-type": "message/ohttp-req"})
        assert first.status_code == 200
        answer = bhttp.decode_response(ctx.decapsulate_response(first.content))
        assert answer.status == 200 and json.loads(answer.content)["choices"]
        again = http.post(GATEWAY, content=captured, headers={"content-type": "message/ohttp-req"})
        assert again.status_code == 400 and again.json()["error"]["reason"] == "ohttp.replayed"

        # the same for a chunked request, and for a standard client that sends no Date at all
        tx = ChunkedRequestSender(gateway.pair.config)
        wire = tx.header + tx.seal_final(bhttp.encode_request(_inner(None), indeterminate=True))
        first = http.post(GATEWAY, content=wire, headers={"content-type": "message/ohttp-chunked-req"})
        assert first.status_code == 200 and first.headers["content-type"] == "message/ohttp-chunked-res"
        again = http.post(GATEWAY, content=wire, headers={"content-type": "message/ohttp-chunked-req"})
        assert again.status_code == 400 and again.json()["error"]["reason"] == "ohttp.replayed"


def test_a_stale_request_is_refused_inside_the_encryption(gateway: GatewayProcess) -> None:
    import time

    old, ctx = encapsulate_request(gateway.pair.config, bhttp.encode_request(_inner(time.time() - 600)))
    with httpx.Client(base_url=gateway.url, timeout=30) as http:
        r = http.post(GATEWAY, content=old, headers={"content-type": "message/ohttp-req"})
    assert r.status_code == 200 and r.headers["content-type"] == "message/ohttp-res"  # nothing in the clear
    answer = bhttp.decode_response(ctx.decapsulate_response(r.content))
    err = json.loads(answer.content)["error"]
    assert answer.status == 400 and err["reason"] == "ohttp.date_out_of_window" and err["code"] == "date_out_of_window"
    assert dict(answer.headers)["date"]  # the gateway's own time, so a skewed client can correct itself
