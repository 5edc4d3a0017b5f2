"""Attack: answer a client with attestation that was made for other clients' nonces.

The attacker controls the network between client and coordinator (or the host in front of
it): it can ask the coordinator for answers over nonces of its choosing, record other clients'
answers, and hand any of them, edited or not, to a client that is verifying. Batched answers
(one report over a Merkle tree of many clients' nonces, each client given its inclusion path)
must stay exactly as fresh as one report per nonce. Defence: the client recomputes the tree's
root from its *own* nonce and the path, and the report must bind that root under the batch
context; a direct answer must bind its nonce under the single-nonce context. Against a real
coordinator (uvicorn) with batching on; refusals carry reason codes.
"""

from __future__ import annotations

import copy
import os

import httpx
import pytest

from test_attestation_batching import start
from veil.attest.sim import SimPlatform
from veil.client.verify import check_attestation
from veil.errors import VeilError


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay-sim")
    SimPlatform.create(d)
    server, _, policy = start(d, batching=True)
    yield server, policy
    server.stop()


def _answer(server, nonce: bytes) -> dict:  # type: ignore[no-untyped-def,type-arg]
    return httpx.get(f"{server.url}/v1/attestation", params={"nonce": nonce.hex()}, timeout=30).json()


def _refused(body, policy, nonce: bytes) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(VeilError) as info:
        check_attestation(body, policy, nonce=nonce)
    return info.value.reason


def test_the_genuine_answer_verifies(coordinator) -> None:
    server, policy = coordinator
    nonce = os.urandom(32)
    assert check_attestation(_answer(server, nonce), policy, nonce=nonce).public_key


def test_an_answer_recorded_for_another_nonce_is_refused(coordinator) -> None:
    server, policy = coordinator
    recorded = _answer(server, os.urandom(32))  # the attacker's (or another client's) nonce
    assert _refused(recorded, policy, os.urandom(32)) == "binding.report_data_mismatch"


def test_a_path_moved_to_another_index_or_size_is_refused(coordinator) -> None:
    server, policy = coordinator
    victim = os.urandom(32)
    body = _answer(server, victim)
    for change in ({"index": 1, "size": 2, "path": ["00" * 32]}, {"index": 0, "size": 2, "path": ["11" * 32]}):
        forged = copy.deepcopy(body)
        forged["nonce_batch"] = change
        assert _refused(forged, policy, victim) == "binding.report_data_mismatch"
    forged = copy.deepcopy(body)
    forged["nonce_batch"] = {"index": 5, "size": 2, "path": []}
    assert _refused(forged, policy, victim) == "binding.bad_nonce_proof"


def test_a_batch_answer_passed_off_as_a_direct_one_is_refused(coordinator) -> None:
    """Stripping the path makes the client check the single-nonce context, which the report
    (made over a batch root) does not carry: no confusion between a root and a nonce."""
    server, policy = coordinator
    victim = os.urandom(32)
    body = _answer(server, victim)
    del body["nonce_batch"]
    assert _refused(body, policy, victim) == "binding.report_data_mismatch"
