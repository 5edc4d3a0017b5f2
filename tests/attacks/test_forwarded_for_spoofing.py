"""Attack: a caller picks the source address the coordinator's per-source limits count (9.7).

The attacker controls a process on the coordinator's machine (or a client behind a local balancer
that passes headers through) and sends each attestation request with a fresh X-Forwarded-For,
hoping every request looks like a new source with a full token bucket. Contained: Veil's servers
ignore forwarding headers, so the requests count against the caller's real address and are refused
with ``attestation.rate_limited`` once its burst is spent.
"""

from __future__ import annotations

import os

import httpx

from attacks.coordproc import Deployment


def test_forwarded_for_does_not_reset_the_rate_limit(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    with dep.coordinator(args=["--attestations-per-second", "0.2", "--attestation-burst", "3"]) as coord:
        reasons = []
        for i in range(8):
            resp = httpx.get(
                f"{coord.url}/v1/attestation",
                params={"nonce": os.urandom(32).hex()},
                headers={"X-Forwarded-For": f"203.0.113.{i + 1}"},
                timeout=30,
            )
            reasons.append("ok" if resp.status_code == 200 else resp.json()["error"]["reason"])
        assert reasons[:3] == ["ok"] * 3, reasons
        assert reasons[3:] == ["attestation.rate_limited"] * 5, reasons
