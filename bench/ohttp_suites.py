"""What X-Wing (MLKEM768-X25519) costs against X25519, per OHTTP request and per key set-up.

Both suites run in one process, interleaved request by request, on the code the client and the
gateway really run (``encapsulate_request`` / ``decapsulate_request`` and the response):

* client session set-up: ``verify_coordinator`` against two real coordinators (uvicorn on
  loopback, sim-snp), one attesting an X25519 configuration only and one a whole key generation
  (X25519 + X-Wing), with the suite chosen as the transport does;
* key set-up, once per key configuration: the client decodes the served ``application/ohttp-keys``
  body, chooses its suite and checks the public key (X-Wing: the FIPS 203 key check); the gateway
  rebuilds the key pair from the released private key (X-Wing: expands its seed);
* per request, client: encrypt the request, decrypt the response; gateway: decrypt the request,
  encrypt the response (a 1 KiB request and a 1 KiB response, as a small chat turn);
* bytes on the wire: what each suite adds to a request, and the size of each configuration.

Goal (docs/benchmarks.md): X-Wing adds under 0.3 ms per request on the client and gateway together.
Run: .venv/bin/python bench/ohttp_suites.py [--requests N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from veil.attest.attester import SimSnpAttester
from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.manifest import Manifest, ReferenceValues, public_key_hex, sign_manifest
from veil.ohttp import ohttp
from veil.ohttp.keyconfig import KEM_X25519_SHA256, KEM_XWING, KeyPair, KeyStore, decode_key_config_list, encode_key_config_list
from veil.ohttp.keyconfig import new_generation
from veil.ohttp.ohttp import decapsulate_request, encapsulate_request
from veil.ohttp.preference import choose_suite
from veil.testing import ServerThread

GOAL_MS = 0.3
SUITES = {"x25519": KEM_X25519_SHA256, "xwing": KEM_XWING}
REQUEST = os.urandom(1024)
RESPONSE = os.urandom(1024)


def _ms(fn: Callable[[str], object], arg: str) -> float:
    start = time.perf_counter()
    fn(arg)
    return (time.perf_counter() - start) * 1000


def session_setup(rounds: int) -> dict[str, float]:
    """Median ms of a verified session (fetch + verify + choose the suite) per attested key list."""
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimPlatform.create(Path(tmp) / "sim")
        attester = SimSnpAttester(sim.directory)
        admin = Ed25519PrivateKey.generate()
        refs = [ReferenceValues(platform="sim-snp", measurements=[attester.measurement.hex()])]
        signed = sign_manifest(
            Manifest(
                coordinator=refs,
                workers=refs,
                admin_keys=[public_key_hex(admin)],
                trusted_simulation_roots=[sim.root_fingerprint],
            ),
            [admin],
            None,
        )
        states = {"x25519": CoordinatorState.generate(), "xwing": CoordinatorState.generate()}
        states["x25519"].ohttp_keys = KeyStore(new_generation(0)[:1])  # as before X-Wing: one configuration
        servers = {name: ServerThread(create_app(state, attester)) for name, state in states.items()}
        try:
            policies = {}
            for name, server in servers.items():
                httpx.post(f"{server.url}/v1/manifest", content=signed.model_dump_json()).raise_for_status()
                policies[name] = ClientPolicy(
                    coordinator_url=server.url,
                    coordinator=refs,
                    manifest_digests=[signed.digest.hex()],
                    trust_simulated=True,
                    simulation_roots=[sim.root_fingerprint],
                )
            times: dict[str, list[float]] = {name: [] for name in servers}
            with httpx.Client() as http:
                order = list(servers)
                for i in range(rounds + 5):
                    random.shuffle(order)
                    for name in order:
                        t = time.perf_counter()
                        chosen = verify_coordinator(policies[name], http=http).suite
                        if i >= 5:  # the first rounds warm up connections and imports
                            times[name].append((time.perf_counter() - t) * 1000)
                        assert chosen.post_quantum == (name == "xwing")
        finally:
            for server in servers.values():
                server.stop()
    return {name: statistics.median(t) for name, t in times.items()}


def main(requests: int = 2000, as_json: bool = False) -> dict[str, object]:
    pairs = {name: KeyPair.generate(i, kem_id=kem) for i, (name, kem) in enumerate(SUITES.items())}
    stores = {name: KeyStore([pair]) for name, pair in pairs.items()}
    served = {name: encode_key_config_list([pair.config]) for name, pair in pairs.items()}
    chosen = {name: choose_suite(decode_key_config_list(body)) for name, body in served.items()}
    times: dict[str, dict[str, list[float]]] = {
        n: {"setup_client": [], "setup_gateway": [], "client": [], "gateway": []} for n in SUITES
    }
    wire: dict[str, int] = {}

    def client_setup(name: str) -> None:
        ohttp._public_key.cache_clear()  # the per-configuration key check, as for a new configuration
        config = choose_suite(decode_key_config_list(served[name])).config
        ohttp._public_key(config.kem_id, config.public_key)

    def gateway_setup(name: str) -> None:
        pair = pairs[name]
        KeyPair.from_private_bytes(pair.key_id, pair.private_bytes(), kem_id=pair.kem_id)

    for name in SUITES:  # warm-up (imports, first allocations)
        enc, _ = encapsulate_request(chosen[name].config, REQUEST, suite=chosen[name].suite)
        decapsulate_request(stores[name], enc)
    order = list(SUITES)
    for _ in range(requests):
        random.shuffle(order)  # interleaved, in random order: drift and noise hit both alike
        for name in order:
            cfg = chosen[name]
            times[name]["setup_client"].append(_ms(client_setup, name))
            times[name]["setup_gateway"].append(_ms(gateway_setup, name))
            t0 = time.perf_counter()
            enc, cctx = encapsulate_request(cfg.config, REQUEST, suite=cfg.suite)
            t1 = time.perf_counter()
            plain, sctx = decapsulate_request(stores[name], enc)
            answer = sctx.encapsulate_response(RESPONSE)
            t2 = time.perf_counter()
            assert cctx.decapsulate_response(answer) == RESPONSE and plain == REQUEST
            t3 = time.perf_counter()
            times[name]["client"].append(((t1 - t0) + (t3 - t2)) * 1000)
            times[name]["gateway"].append((t2 - t1) * 1000)
            wire[name] = len(enc) - len(REQUEST)

    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    session = session_setup(max(20, requests // 20))
    per_request = {n: m["client"] + m["gateway"] for n, m in med.items()}
    added = per_request["xwing"] - per_request["x25519"]
    result: dict[str, object] = {
        "requests": requests,
        "median_ms": med,
        "per_request_ms": per_request,
        "xwing_added_ms_per_request": added,
        "xwing_per_request_ratio": per_request["xwing"] / per_request["x25519"],
        "session_setup_ms": session,
        "request_overhead_bytes": wire,
        "key_config_bytes": {n: len(pairs[n].config.encode()) for n in SUITES},
        "goal_ms": GOAL_MS,
        "goal_met": added < GOAL_MS,
    }
    print(f"OHTTP suites, {requests} interleaved requests each (1 KiB request, 1 KiB response), medians")
    for n in SUITES:
        m = med[n]
        print(f"  {chosen[n].name}")
        print(f"    per request: client {m['client']:.3f} ms + gateway {m['gateway']:.3f} ms = {per_request[n]:.3f} ms")
        print(
            f"    set-up:      client {m['setup_client']:.3f} ms, gateway {m['setup_gateway']:.3f} ms (once per key configuration)"
        )
        print(f"    bytes:       request +{wire[n]} B, key configuration {result['key_config_bytes'][n]} B")  # type: ignore[index]
    print(
        f"  client session set-up (fetch + verify + choose): X25519 only {session['x25519']:.2f} ms, "
        f"X25519 + X-Wing {session['xwing']:.2f} ms (x{session['xwing'] / session['x25519']:.2f})"
    )
    print(
        f"  X-Wing adds {added:.3f} ms per request, client and gateway together "
        f"(x{result['xwing_per_request_ratio']:.2f}); goal < {GOAL_MS} ms: {'met' if added < GOAL_MS else 'NOT met'}"
    )
    print(f"  X-Wing adds {wire['xwing'] - wire['x25519']} B to each request (its 1120-byte encapsulated key)")
    if as_json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = parser.parse_args()
    main(args.requests, args.json)
