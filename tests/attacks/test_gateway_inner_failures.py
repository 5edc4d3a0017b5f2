"""Attack: make the gateway fail after decryption, hoping for a plaintext error (issue 15.8).

The attacker is any client (it needs only the public key configuration): it sends an inner body
nested deeply enough to raise RecursionError in a JSON parser. The old gateway answered a
plaintext 500 and wrote a traceback into the worker log (which the host reads). Against a real
gateway process: the answer is an encrypted 400 ``gateway.invalid_body``, nothing in the clear
says what happened, and the process's logs hold no traceback and no byte of the body.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from veil.ohttp import bhttp
from veil.ohttp.ohttp import encapsulate_request
from veil.testing import GatewayProcess

CANARY = b"CANARY-5d1e-nested"


def test_deep_nesting_gets_an_encrypted_answer_and_no_traceback(tmp_path: Path) -> None:
    body = b'{"cache_salt": "' + CANARY + b'", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    inner = bhttp.Request("POST", "https", "api", "/v1/chat/completions", [("content-type", "application/json")], body)
    with GatewayProcess(tmp_path) as gw:
        enc, ctx = encapsulate_request(gw.pair.config, bhttp.encode_request(inner))
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            r = http.post("/.well-known/ohttp-gateway", content=enc, headers={"content-type": "message/ohttp-req"})
            assert http.get("/.well-known/ohttp-gateway").status_code == 200  # still serving
        logs = gw.stderr()
    assert r.status_code == 200 and r.headers["content-type"] == "message/ohttp-res"
    answer = bhttp.decode_response(ctx.decapsulate_response(r.content))
    assert answer.status == 400 and json.loads(answer.content)["error"]["reason"] == "gateway.invalid_body"
    assert "Traceback" not in logs and "RecursionError" not in logs and CANARY.decode() not in logs
