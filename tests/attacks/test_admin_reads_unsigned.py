"""Attack: anyone reads the coordinator's audit log, worker list and secret ids (issue 9.7).

The attacker controls the network (it can reach the coordinator and capture an admin's requests)
and may hold a key of its own. It asks for `/v1/audit`, `/v1/workers` and `/v1/secrets` without a
signature, with its own key, replays an admin's captured signed read, and edits the query of one.
Refused with ``admin.unauthenticated``, ``admin.not_admin``, ``nonce.unknown`` (the challenge is
single use) and ``admin.bad_signature``. An admin's fresh signed read is answered, sealed to the
key of that read and signed by the attested state identity.
"""

from __future__ import annotations

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from attacks.coordproc import Deployment
from veil import admin, keyrelease
from veil.attestation import (
    ADMIN_KEY_HEADER,
    ADMIN_NONCE_HEADER,
    ADMIN_READ_CONTEXT,
    ADMIN_RESPONSE_KEY_HEADER,
    ADMIN_SIGNATURE_HEADER,
    admin_read_statement,
    sign_statement,
)
from veil.manifest import public_key_hex


def _signed_headers(url: str, key: Ed25519PrivateKey, target: str) -> dict[str, str]:
    nonce = bytes.fromhex(httpx.post(f"{url}/v1/admin/challenge").json()["nonce"])
    response_key = keyrelease.public_bytes(X25519PrivateKey.generate())
    return {
        ADMIN_KEY_HEADER: public_key_hex(key),
        ADMIN_NONCE_HEADER: nonce.hex(),
        ADMIN_RESPONSE_KEY_HEADER: response_key.hex(),
        ADMIN_SIGNATURE_HEADER: sign_statement(
            key, ADMIN_READ_CONTEXT, *admin_read_statement("GET", target, nonce, response_key)
        ),
    }


def _reason(resp: httpx.Response) -> str:
    assert resp.status_code in (400, 403), resp.text
    return resp.json()["error"]["reason"]


def test_admin_reads_need_a_fresh_admin_signature(tmp_path) -> None:
    dep = Deployment.create(tmp_path)
    with dep.coordinator(tmp_path / "coordinator.db") as coord:
        dep.set_up(coord)
        url = coord.url
        for path in ("/v1/audit", "/v1/workers", "/v1/secrets"):
            assert _reason(httpx.get(url + path)) == "admin.unauthenticated"
            mallory = Ed25519PrivateKey.generate()
            assert _reason(httpx.get(url + path, headers=_signed_headers(url, mallory, path))) == "admin.not_admin"

        captured = _signed_headers(url, dep.admin, "/v1/audit?after=0")
        first = httpx.get(f"{url}/v1/audit?after=0", headers=captured)
        assert first.status_code == 200 and set(first.json()) == {"sealed", "signature"}  # nothing readable in transit
        assert _reason(httpx.get(f"{url}/v1/audit?after=0", headers=captured)) == "nonce.unknown"  # replayed
        edited = _signed_headers(url, dep.admin, "/v1/audit?after=0")
        assert _reason(httpx.get(f"{url}/v1/audit?after=5", headers=edited)) == "admin.bad_signature"

        assert admin.list_secrets(dep.policy(url), dep.admin) == ["model-key"]  # the admin's own read works
