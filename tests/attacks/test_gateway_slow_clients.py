"""Attack: slow clients exhaust the gateway's connections and file descriptors (issue 15.5).

The attacker is any client on the network. It opens hundreds of connections and sends a header
byte every second (slowloris), or complete headers and then a body byte every second, reconnecting
whenever it is cut off — more connections than the worker has descriptors. The old server never
timed such connections out, so the worker ran out of descriptors and refused legitimate clients.
Against a real gateway process limited to 256 descriptors: slow connections are cut (header and
body timeouts; at the connection cap the oldest slow or idle one gives way to a newcomer), and a
legitimate client's requests keep completing within the bound below. With the server limits
removed (plain uvicorn), the victim cannot connect at all.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from veil.testing import GatewayProcess, victim_under_attack

BOUND_SECONDS = 3.0  # every victim request during the flood (here ~0.2-1 s on a loaded machine)

ATTACKER = textwrap.dedent(
    """
    import asyncio, json, sys, time

    port, seconds, slow_heads, slow_bodies = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    stats = {"connections": 0, "cut": 0, "connect_failed": 0}
    HEAD = b"POST /.well-known/ohttp-gateway HTTP/1.1\\r\\nHost: gw\\r\\n"
    BODY = HEAD + b"Content-Type: message/ohttp-req\\r\\nContent-Length: 1000000\\r\\n\\r\\n"

    async def slow(first: bytes, drip: bytes, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            except (OSError, asyncio.TimeoutError):
                stats["connect_failed"] += 1
                await asyncio.sleep(0.1)
                continue
            stats["connections"] += 1
            try:
                writer.write(first)
                while time.monotonic() < deadline:
                    await asyncio.sleep(1.0)
                    writer.write(drip)  # one byte a second
                    await writer.drain()
                    if reader.at_eof():
                        raise ConnectionResetError
            except (OSError, ConnectionError):
                stats["cut"] += 1
            finally:
                writer.close()

    async def main() -> None:
        deadline = time.monotonic() + seconds
        tasks = [slow(HEAD, b"X", deadline) for _ in range(slow_heads)] + [slow(BODY, b"\\x00", deadline) for _ in range(slow_bodies)]
        await asyncio.gather(*tasks)

    asyncio.run(main())
    print(json.dumps(stats))
    """
)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(Path(tmp_path_factory.mktemp("slow")), nofile=256, tokens=8, header_timeout=3, body_timeout=5) as gw:
        yield gw


def test_slow_clients_cannot_lock_out_a_victim(gateway: GatewayProcess) -> None:
    report = victim_under_attack(
        gateway, ATTACKER, str(gateway.port), "8", "400", "100", build_up=2.0, count=6, pause=0.0, timeout=10
    )  # every slow connection is open by then
    print(report)
    assert max(report.loud) <= BOUND_SECONDS, report
    assert report.attacker["cut"] >= 100, report  # the server cut slow connections (timeouts, eviction at the cap)
    assert "Too many open files" not in gateway.stderr()
