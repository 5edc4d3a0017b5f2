"""Attack: something on the path answers a worker's registration in the coordinator's place (9.8).

The attacker controls the network between worker and coordinator. It lets the worker's requests
through to the genuine coordinator but replaces the answer to its registration with secrets of its
own — OHTTP keys and a data key it knows, sealed to the worker's public key (which the request
carries in the clear). Refused with ``registration.bad_signature``: the worker pinned the
coordinator's attested state identity before registering, and every registration answer must be
signed by it. Real objects: the genuine coordinator app, the worker's registration code, an httpx
transport in between.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deployment_fixtures import start_coordinator
from veil import keyrelease, wire
from veil.attest.sim import SimPlatform
from veil.attestation import REGISTRATION_CONTEXT, registration_statement, sign_statement
from veil.errors import VeilError
from veil.ohttp.keyconfig import KeyPair, KeyStore
from veil.worker.registration import register


class Interceptor(httpx.BaseTransport):
    """Forwards to the genuine coordinator; with ``rewrite``, replaces the registration answer."""

    def __init__(self, genuine: httpx.Client, rewrite: bool) -> None:
        self.genuine, self.rewrite = genuine, rewrite

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        upstream = self.genuine.request(
            request.method, request.url.raw_path.decode(), content=request.content, headers={"content-type": "application/json"}
        )
        relayed = httpx.Response(
            upstream.status_code, content=upstream.content, headers={"content-type": upstream.headers.get("content-type", "")}
        )
        if not self.rewrite or request.url.path != wire.WORKERS_REGISTER_PATH or upstream.status_code != 200:
            return relayed
        sent, answer = json.loads(request.content), upstream.json()
        nonce, worker_key = bytes.fromhex(sent["nonce"]), bytes.fromhex(sent["public_key"])
        mine = {
            "manifest_digest": answer["manifest_digest"],
            "worker_secret": "00" * 32,
            "ohttp_keys": keyrelease.export_ohttp_keys(KeyStore([KeyPair.generate(1)])),
            "data_keys": {"model-key": "11" * 32},
        }
        sealed = keyrelease.seal(worker_key, json.dumps(mine).encode(), wire.WORKER_SECRETS_INFO, aad=nonce)
        mallory = Ed25519PrivateKey.generate()  # it can sign, just not as the coordinator's identity
        answer["sealed_secrets"] = base64.b64encode(sealed).decode()
        answer["signature"] = sign_statement(
            mallory,
            REGISTRATION_CONTEXT,
            *registration_statement(nonce, worker_key, answer["worker_id"], bytes.fromhex(answer["manifest_digest"]), sealed),
        )
        return httpx.Response(200, json=answer)


def test_worker_refuses_secrets_not_signed_by_the_coordinator(tmp_path) -> None:
    SimPlatform.create(tmp_path / "sim")
    coord = start_coordinator(tmp_path / "sim")
    relayed = register("http://coord", coord.attester, httpx.Client(transport=Interceptor(coord.http, rewrite=False)))
    assert relayed.worker_secret  # the genuine answer, relayed unchanged, is accepted
    with pytest.raises(VeilError) as exc:
        register("http://coord", coord.attester, httpx.Client(transport=Interceptor(coord.http, rewrite=True)))
    assert exc.value.reason == "registration.bad_signature"
