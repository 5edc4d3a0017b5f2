"""Attack: pre-authentication amplification with one-byte chunked-OHTTP chunks (issue 15.5).

The attacker is any client on the network. It needs only the public key configuration to make
chunks that authenticate: it streams requests of just under 8 MiB whose chunks carry one byte
each (18 wire bytes, one AEAD open and a loop turn apiece for the gateway: 466,000 opens per
body, several times the attacker's own cost), fresh ones back to back from two connections,
while a legitimate client chats. Against a real gateway process: every such request is refused
after its 17th chunk (``chunked.too_many_chunks``), and the victim's latency stays within the
bound below. With the chunk bound removed and whole bodies parsed at once (the old gateway), the
victim request caught behind a body waits for seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from veil.testing import GatewayProcess, flood_script, victim_under_attack

# The stated bound: during the flood every victim request completes within 2.5 s (here ~0.2-0.6 s
# on a loaded machine; unprotected, 4-7 s).
BOUND_SECONDS = 2.5

ATTACK = flood_script(
    """
    from veil.ohttp.chunked import ChunkedRequestSender

    def body():
        tx = ChunkedRequestSender(config)
        # Attacker tooling: seal one-byte chunks straight with the HPKE context's AEAD, far faster
        # than the library's per-chunk call, so the attack outpaces the gateway.
        ctx = tx._ctx
        aead, base, nn = ctx._key._ctx, int.from_bytes(ctx._nonce, "big"), len(ctx._nonce)
        yield tx.header
        sent, seq = len(tx.header), 0
        while sent + 3641 * 18 <= 8 * 1024 * 1024 - 4096:  # just under the size limit
            yield b"".join(b"\\x11" + aead.encrypt((base ^ (seq + j)).to_bytes(nn, "big"), b"x", b"") for j in range(3641))
            seq += 3641
            sent += 3641 * 18

    def attack_once():
        try:
            r = httpx.post(url, content=body(), headers={"content-type": "message/ohttp-chunked-req"}, timeout=30)
            return r.json()["error"]["reason"] if r.status_code != 200 else "answered"
        except (httpx.HTTPError, ValueError, KeyError):
            return "connection-cut"
    """
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(Path(tmp_path_factory.mktemp("chunkflood")), tokens=8) as gw:
        yield gw


def test_one_byte_chunks_cannot_starve_a_victim(gateway: GatewayProcess) -> None:
    report = victim_under_attack(
        gateway, ATTACK, gateway.url + "/.well-known/ohttp-gateway", gateway.pair.config.encode().hex(), "6", "2"
    )
    print(report)
    assert max(report.loud) <= BOUND_SECONDS, report
    outcomes = report.attacker["outcomes"]
    assert report.attacker["attempts"] >= 2 and set(outcomes) <= {"chunked.too_many_chunks", "connection-cut"}, report
