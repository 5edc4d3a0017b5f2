"""Attack: the untrusted engine reads identifying request headers (issue 15.8).

The attacker is the AI code behind the gateway: it would like the caller's cookies, referer,
origin, user agent, forwarded-for address, API key or the OpenAI SDK's ``x-stainless-*``
telemetry, all of which an SDK or a browser puts inside the encrypted request. Against a real
gateway process and a (fake) engine process that reports every header it receives: only the
allowlisted ``accept`` and ``content-type`` (plus what httpx adds itself) arrive. Fails if the
gateway forwards headers by denylist again.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from veil.client.transport import OhttpTransport
from veil.testing import GatewayProcess

SENT = {
    "cookie": "session=CANARY-cookie",
    "referer": "https://intranet.example/CANARY-page",
    "origin": "https://CANARY-origin.example",
    "user-agent": "CANARY-agent/1.0",
    "x-forwarded-for": "203.0.113.77",
    "forwarded": "for=203.0.113.77",
    "x-stainless-os": "CANARY-os",
    "x-stainless-package-version": "9.9.9",
    "openai-organization": "CANARY-org",
    "authorization": "Bearer CANARY-key",
    "x-custom-tracking": "CANARY-custom",
}


def test_engine_receives_no_identifying_header(tmp_path: Path) -> None:
    with GatewayProcess(tmp_path) as gw:
        with httpx.Client(transport=OhttpTransport(gw.pair.config, gw.url), timeout=30) as http:
            r = http.post("http://api/fake/headers", json={"q": 1}, headers=SENT)
    assert r.status_code == 200
    reached = r.json()
    assert set(reached) <= {"accept", "content-type", "content-length", "host", "accept-encoding", "connection", "user-agent"}
    assert "CANARY" not in json.dumps(reached) and "203.0.113.77" not in json.dumps(reached)
