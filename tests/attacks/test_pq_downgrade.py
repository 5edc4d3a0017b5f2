"""Attack: downgrade Veil's clients from X-Wing to classical X25519, or swap in the attacker's key.

The attacker controls the network between the client and the coordinator (or the host in front of
it): it rewrites the attestation answer's ``key_configs`` to drop the X-Wing configuration, so that
a recording of today's traffic can later be opened with a quantum computer, or replaces the X-Wing
public key with its own. The coordinator's evidence binds the digest of the whole key
configuration list (both configurations of the generation) in report_data, and the client encrypts
only to the list it verified: each rewrite is refused with ``binding.report_data_mismatch``. The
untouched answer is accepted and Veil's client picks X-Wing.

The coordinator is a real one (uvicorn on loopback, sim-snp); the attacker is an httpx transport
that rewrites its answers on the way.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from deployment_fixtures import launched_attester

from veil.attest.sim import SimPlatform
from veil.client.policy import ClientPolicy
from veil.client.verify import verify_coordinator
from veil.coordinator.app import create_app
from veil.coordinator.state import CoordinatorState
from veil.errors import VerificationError
from veil.manifest import Manifest, ReferenceValues, public_key_hex, sign_manifest
from veil.ohttp.keyconfig import KEM_X25519_SHA256, KEM_XWING, KeyConfig, KeyPair, decode_key_config_list, encode_key_config_list
from veil.testing import ServerThread

Rewrite = Callable[[list[KeyConfig]], list[KeyConfig]]


class Rewriter(httpx.HTTPTransport):
    """The network attacker: rewrites key_configs in every attestation answer."""

    def __init__(self, rewrite: Rewrite) -> None:
        super().__init__()
        self.rewrite = rewrite

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = super().handle_request(request)
        if not request.url.path.endswith("/v1/attestation"):
            return resp
        body = json.loads(resp.read())
        configs = decode_key_config_list(base64.b64decode(body["key_configs"]))
        body["key_configs"] = base64.b64encode(encode_key_config_list(self.rewrite(configs))).decode()
        return httpx.Response(resp.status_code, headers={"content-type": "application/json"}, content=json.dumps(body))


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ClientPolicy]]:
    sim = SimPlatform.create(Path(tmp_path_factory.mktemp("sim")))
    admin = Ed25519PrivateKey.generate()
    attester = launched_attester(sim.directory, admin)
    state = CoordinatorState.generate(bootstrap_key=public_key_hex(admin))
    refs = [ReferenceValues(platform="sim-snp", measurements=[attester.measurement.hex()])]
    signed = sign_manifest(
        Manifest(
            coordinator=refs,
            workers=refs,
            admin_keys=[public_key_hex(admin)],
            trusted_simulation_roots=[sim.root_fingerprint],
            coordinator_identity=state.identity,
        ),
        [admin],
        None,
    )
    with ServerThread(create_app(state, attester)) as server:
        httpx.post(f"{server.url}/v1/manifest", content=signed.model_dump_json()).raise_for_status()
        policy = ClientPolicy(
            coordinator_url=server.url,
            coordinator=refs,
            manifest_digests=[signed.digest.hex()],
            trust_simulated=True,
            simulation_roots=[sim.root_fingerprint],
        )
        yield server.url, policy


def _verify(policy: ClientPolicy, rewrite: Rewrite) -> object:
    with httpx.Client(transport=Rewriter(rewrite), timeout=10) as http:
        return verify_coordinator(policy, http=http)


def _drop_xwing(configs: list[KeyConfig]) -> list[KeyConfig]:
    return [c for c in configs if c.kem_id != KEM_XWING]


def _attacker_xwing_key(configs: list[KeyConfig]) -> list[KeyConfig]:
    mine = KeyPair.generate(0, kem_id=KEM_XWING).public_bytes()
    return [KeyConfig(c.key_id, c.kem_id, mine, c.suites) if c.kem_id == KEM_XWING else c for c in configs]


def test_untouched_answer_is_accepted_and_xwing_chosen(coordinator: tuple[str, ClientPolicy]) -> None:
    _, policy = coordinator
    attested = _verify(policy, lambda configs: configs)
    assert [c.kem_id for c in attested.key_configs] == [KEM_X25519_SHA256, KEM_XWING]  # type: ignore[attr-defined]
    assert attested.suite.post_quantum  # type: ignore[attr-defined]


@pytest.mark.parametrize("rewrite", [_drop_xwing, _attacker_xwing_key], ids=["strip-xwing", "swap-xwing-key"])
def test_rewritten_key_configurations_are_refused(coordinator: tuple[str, ClientPolicy], rewrite: Rewrite) -> None:
    _, policy = coordinator
    with pytest.raises(VerificationError) as e:
        _verify(policy, rewrite)
    assert e.value.reason == "binding.report_data_mismatch"
