"""Attack: the coordinator serves a state swapped underneath it (issue 9.1, the client's check).

The attacker controls the host: suppose it got the genuine, correctly measured coordinator to run on
a state of its own (its own seed, HPKE and OHTTP keys) beside the deployment's genuine, admin-signed
manifest — the coordinator's own refusals bypassed, as a host would need some bug to do. Every
other client check passes: genuine evidence, the measurement, the binding of nonce and keys, the
signed manifest. The client still refuses with ``attestation.identity_mismatch``: what the
coordinator attests derives from one state seed, and the attested identity is not the one the
signed manifest names. Real objects: the coordinator's app and state, the client's verifier.
"""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient

from deployment_fixtures import start_coordinator
from veil.attest.sim import SimPlatform
from veil.client.verify import check_attestation
from veil.coordinator.app import create_app
from veil.coordinator.keys import Generation, KeyRing
from veil.coordinator.seed import StateSeed
from veil.coordinator.state import CoordinatorState
from veil.errors import VeilError


def test_client_refuses_keys_of_a_swapped_state(tmp_path) -> None:
    SimPlatform.create(tmp_path / "sim")
    genuine = start_coordinator(tmp_path / "sim")
    policy = genuine.policy()
    nonce = os.urandom(32)
    check_attestation(genuine.http.get("/v1/attestation", params={"nonce": nonce.hex()}).json(), policy, nonce=nonce)

    host = CoordinatorState(
        seed=StateSeed.generate(), keys=KeyRing([Generation.create(1, 0.0, set())]), history=list(genuine.state.history)
    )  # the host's keys, the genuine history
    swapped = TestClient(create_app(host, genuine.attester))
    body = swapped.get("/v1/attestation", params={"nonce": nonce.hex()}).json()
    assert body["manifest_digest"] == genuine.signed.digest.hex()  # the genuine, signed manifest...
    assert body["public_key"] != genuine.http.get("/v1/attestation", params={"nonce": nonce.hex()}).json()["public_key"]
    with pytest.raises(VeilError) as exc:  # ...beside keys that no admin vouched for
        check_attestation(body, policy, nonce=nonce)
    assert exc.value.reason == "attestation.identity_mismatch"
