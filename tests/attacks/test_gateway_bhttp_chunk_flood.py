"""Attack: pre-authentication amplification with one-byte Binary HTTP content chunks (issue 15.5).

The attacker is any client: with the public key configuration it encrypts, properly, requests
of just under 8 MiB whose inner Binary HTTP content is four million one-byte chunks (two bytes
each). Decrypting one costs the gateway milliseconds; decoding it chunk by chunk cost seconds of
its event loop and hundreds of MiB. Fresh ones go back to back from two connections while a
legitimate client chats, against a real gateway process: each is refused, encrypted, after its
17th chunk (``bhttp.too_many_chunks``) and the victim's latency stays within the bound below.
With the chunk bound removed, a victim request caught behind a decode waits for many seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from veil.testing import GatewayProcess, flood_script, victim_under_attack

BOUND_SECONDS = 2.5  # every victim request during the flood (here ~0.2-0.6 s; unprotected, ~15 s)

ATTACK = flood_script(
    """
    from veil.ohttp import bhttp
    from veil.ohttp.ohttp import encapsulate_request

    lp = lambda b: bhttp.encode_varint(len(b)) + b
    # indeterminate-length request: control data, no headers, 4 M one-byte content chunks, no trailers
    INNER = (bhttp.encode_varint(2) + lp(b"POST") + lp(b"https") + lp(b"api") + lp(b"/v1/chat/completions")
             + b"\\x00" + b"\\x01x" * ((8 * 1024 * 1024 - 4096) // 2) + b"\\x00\\x00")

    def attack_once():
        body, ctx = encapsulate_request(config, INNER)
        try:
            r = httpx.post(url, content=body, headers={"content-type": "message/ohttp-req"}, timeout=60)
            if r.status_code != 200:
                return r.json()["error"]["reason"]
            import json
            return json.loads(bhttp.decode_response(ctx.decapsulate_response(r.content)).content)["error"]["reason"]
        except (httpx.HTTPError, ValueError, KeyError):
            return "connection-cut"
    """
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(Path(tmp_path_factory.mktemp("bhttpflood")), tokens=8) as gw:
        yield gw


def test_one_byte_content_chunks_cannot_starve_a_victim(gateway: GatewayProcess) -> None:
    report = victim_under_attack(
        gateway, ATTACK, gateway.url + "/.well-known/ohttp-gateway", gateway.pair.config.encode().hex(), "6", "2"
    )
    print(report)
    assert max(report.loud) <= BOUND_SECONDS, report
    assert report.attacker["attempts"] >= 2 and set(report.attacker["outcomes"]) == {"bhttp.too_many_chunks"}, report
