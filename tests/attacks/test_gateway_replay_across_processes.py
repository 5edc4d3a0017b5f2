"""Attack: replay a captured OHTTP request to *another* gateway process of the same worker.

The attacker controls the network (a relay, the balancer, the host): it records a client's
encrypted request and posts it again on fresh connections, which the kernel's ``SO_REUSEPORT``
hashing spreads over the worker's gateway processes. Against a real gateway with two processes
(``veil.worker.pool``) in front of a fake engine: every copy is refused in the clear with
``ohttp.replayed``, whichever process it reaches, because the replay cache is the worker's
shared table, not each process's own. The request carries no ``Date`` (as from ohttpy or any
standard client), so the cache is its only protection. Sixteen fresh connections all landing on
the process that answered the original has probability 2**-16: with per-process caches, about
half the copies would be answered (checked by reverting the sharing).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from veil.ohttp import bhttp
from veil.ohttp.chunked import ChunkedRequestSender
from veil.ohttp.ohttp import encapsulate_request
from veil.testing import GatewayProcess
from veil.wire import GATEWAY_PATH, MEDIA_TYPE_CHUNKED_REQUEST, MEDIA_TYPE_REQUEST

COPIES = 16


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(Path(tmp_path_factory.mktemp("replay-procs")), tokens=4, processes=2) as gw:
        assert len(gw.gateway_pids()) == 2
        yield gw


def _inner() -> bhttp.Request:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "transfer 100 EUR"}]}).encode()
    return bhttp.Request("POST", "https", "api", "/v1/chat/completions", [("content-type", "application/json")], body)


def _post_fresh(gateway: GatewayProcess, body: bytes, media: str) -> httpx.Response:
    with httpx.Client(base_url=gateway.url, timeout=30) as http:  # a new connection: a new source port
        return http.post(GATEWAY_PATH, content=body, headers={"content-type": media})


@pytest.mark.parametrize("media", [MEDIA_TYPE_REQUEST, MEDIA_TYPE_CHUNKED_REQUEST])
def test_a_replay_is_refused_by_every_gateway_process(gateway: GatewayProcess, media: str) -> None:
    if media == MEDIA_TYPE_REQUEST:
        captured, _ = encapsulate_request(gateway.pair.config, bhttp.encode_request(_inner()))
    else:
        tx = ChunkedRequestSender(gateway.pair.config)
        captured = tx.header + tx.seal_final(bhttp.encode_request(_inner(), indeterminate=True))
    first = _post_fresh(gateway, captured, media)
    assert first.status_code == 200
    outcomes = []
    for _ in range(COPIES):
        again = _post_fresh(gateway, captured, media)
        outcomes.append((again.status_code, again.json()["error"]["reason"] if again.status_code == 400 else None))
    assert outcomes == [(400, "ohttp.replayed")] * COPIES, outcomes
    gateway.victim()  # fresh requests are still answered
