"""Microsoft Azure Attestation tokens: RS256 against a JWKS, issuer, keys, time, claims mapping."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from attest_verdicts import _options, _two_stage
from veil.attest.azure import MaaPolicy
from veil.attest.claims import Verdict
from veil.attest.trust import TrustRoots
from veil.cli.evidence import EvidenceFiles, verify_files

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
ISS = "https://sharedeus.eus.attest.azure.net"
MEAS = "6a" * 48


def make_key(not_after: datetime = datetime(2027, 1, 1, tzinfo=timezone.utc)) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test MAA signing")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime(2025, 1, 1, tzinfo=timezone.utc))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _pins(certs: Any) -> list[str]:
    """The test's self-signed signing certificates, pinned (as a manifest pins MAA's roots)."""
    out = []
    for k in (certs.get("keys") if isinstance(certs, dict) else None) or []:
        try:
            der = base64.b64decode(k["x5c"][-1])
            out.append(hashlib.sha256(der).hexdigest())
        except Exception:  # noqa: BLE001 - garbage JWKS: nothing to pin
            pass
    return out


def verify_maa(
    tok: str,
    certs: Any,
    policy: MaaPolicy | None = None,
    *,
    as_of: datetime,
    expected_nonce: bytes | None = None,
    pin: bool = True,
) -> Verdict:
    """The registry's azure-maa verifier, then the policy (with the test's certificates pinned)."""
    from veil.attest.azure.platform import AZURE_MAA

    policy = policy or MaaPolicy()
    if pin:
        policy = policy.model_copy(update={"signing_roots": [*policy.signing_roots, *_pins(certs)]})
    options = _options(TrustRoots.production(), as_of, expected_nonce, None)
    evidence = {"platform": "azure-maa", "maa": {"token": tok, "certs": certs}}
    return _two_stage(lambda: AZURE_MAA.verify(evidence, options), lambda v: AZURE_MAA.validate(v, policy))


@pytest.fixture(scope="module")
def signer() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    return make_key()


def jwks(*entries: tuple[str, x509.Certificate]) -> dict[str, Any]:
    return {
        "keys": [
            {"kid": kid, "kty": "RSA", "x5c": [base64.b64encode(c.public_bytes(Encoding.DER)).decode()]} for kid, c in entries
        ]
    }


def snp_payload(**over: Any) -> dict[str, Any]:
    t = int(NOW.timestamp())
    p: dict[str, Any] = {
        "iss": ISS,
        "iat": t - 60,
        "nbf": t - 60,
        "exp": t + 3600,
        "x-ms-attestation-type": "azurevm",
        "x-ms-azurevm-bootdebug-enabled": False,
        "x-ms-isolation-tee": {
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-compliance-status": "azure-compliant-cvm",
            "x-ms-sevsnpvm-launchmeasurement": MEAS,
            "x-ms-sevsnpvm-is-debuggable": False,
            "x-ms-sevsnpvm-reportdata": "ab" * 64,
            "x-ms-sevsnpvm-bootloader-svn": 3,
            "x-ms-sevsnpvm-tee-svn": 0,
            "x-ms-sevsnpvm-snpfw-svn": 8,
            "x-ms-sevsnpvm-microcode-svn": 115,
            "x-ms-sevsnpvm-vmpl": 0,
            "x-ms-runtime": {"client-payload": {"nonce": base64.b64encode(b"n0nce").decode()}},
        },
    }
    p.update(over)
    return p


def token(key: rsa.RSAPrivateKey, payload: dict[str, Any], kid: str = "k1", alg: str = "RS256") -> str:
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def test_accept_and_claims(signer: Any) -> None:
    key, cert = signer
    v = verify_maa(token(key, snp_payload()), jwks(("k1", cert)), as_of=NOW, expected_nonce=b"n0nce")
    assert v.accepted, v
    c = v.claims
    assert c is not None and c.platform == "azure-maa" and c.measurement == MEAS and not c.debug
    assert c.report_data == b"\xab" * 64 and c.tcb["snp"] == 8
    assert c.details["attestation_type"] == "sevsnpvm" and c.details["issuer"] == ISS


def test_time(signer: Any) -> None:
    key, cert = signer
    ks = jwks(("k1", cert))
    assert verify_maa(token(key, snp_payload()), ks, as_of=NOW + timedelta(hours=2)).reason == "azure.maa_token_expired"
    assert verify_maa(token(key, snp_payload()), ks, as_of=NOW - timedelta(hours=1)).reason == "azure.maa_token_not_yet_valid"
    no_exp = snp_payload()
    del no_exp["exp"]
    assert verify_maa(token(key, no_exp), ks, as_of=NOW).reason == "azure.maa_token_malformed"


def test_issuer_allowlist(signer: Any) -> None:
    key, cert = signer
    ks = jwks(("k1", cert))
    assert verify_maa(token(key, snp_payload(iss="https://evil.example")), ks, as_of=NOW).reason == "azure.maa_issuer_not_allowed"
    assert (
        verify_maa(token(key, snp_payload(iss="https://x.attest.azure.net.evil.io")), ks, as_of=NOW).reason
        == "azure.maa_issuer_not_allowed"
    )
    pol = MaaPolicy(issuers=["https://mine.weu.attest.azure.net"])
    assert verify_maa(token(key, snp_payload()), ks, pol, as_of=NOW).reason == "azure.maa_issuer_not_allowed"
    assert verify_maa(token(key, snp_payload(iss=pol.issuers[0])), ks, pol, as_of=NOW).accepted


def test_signing_keys(signer: Any) -> None:
    key, cert = signer
    ks = jwks(("k1", cert))
    assert verify_maa(token(key, snp_payload(), kid="k2"), ks, as_of=NOW).reason == "azure.maa_unknown_key"
    # the JWKS is not a trust anchor: an unpinned signer is refused
    assert verify_maa(token(key, snp_payload()), ks, as_of=NOW, pin=False).reason == "azure.maa_untrusted_root"
    fp = hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    assert verify_maa(token(key, snp_payload()), ks, MaaPolicy(signing_roots=[fp]), as_of=NOW, pin=False).accepted
    no_x5c = {"keys": [{"kid": "k1", "kty": "RSA", "n": "AQAB", "e": "AQAB"}]}
    assert verify_maa(token(key, snp_payload()), no_x5c, as_of=NOW).reason == "azure.maa_untrusted_root"


def test_forged_signature(signer: Any) -> None:
    _, cert = signer
    other, _ = make_key()
    assert verify_maa(token(other, snp_payload()), jwks(("k1", cert)), as_of=NOW).reason == "azure.maa_signature_invalid"
    key, _ = signer
    head, body, sig = token(key, snp_payload()).split(".")
    forged = jwt.utils.base64url_encode(b'{"iss":"' + ISS.encode() + b'","exp":9999999999}').decode()
    assert verify_maa(f"{head}.{forged}.{sig}", jwks(("k1", cert)), as_of=NOW).reason == "azure.maa_signature_invalid"


def test_algorithms_refused(signer: Any) -> None:
    _, cert = signer
    hs = jwt.encode(snp_payload(), "secret-secret-secret-secret-0123", algorithm="HS256", headers={"kid": "k1"})
    assert verify_maa(hs, jwks(("k1", cert)), as_of=NOW).reason == "azure.maa_algorithm_refused"
    none = jwt.encode(snp_payload(), None, algorithm="none", headers={"kid": "k1"})
    assert verify_maa(none, jwks(("k1", cert)), as_of=NOW).reason == "azure.maa_algorithm_refused"


def test_expired_signing_cert() -> None:
    key, cert = make_key(not_after=datetime(2026, 1, 1, tzinfo=timezone.utc))
    assert verify_maa(token(key, snp_payload()), jwks(("k1", cert)), as_of=NOW).reason == "azure.maa_cert_expired"


def test_policy(signer: Any) -> None:
    key, cert = signer
    ks = jwks(("k1", cert))
    tee = {**snp_payload()["x-ms-isolation-tee"], "x-ms-sevsnpvm-is-debuggable": True}
    dbg = token(key, snp_payload(**{"x-ms-isolation-tee": tee}))
    assert verify_maa(dbg, ks, as_of=NOW).reason == "azure.maa_debug_forbidden"
    assert verify_maa(dbg, ks, MaaPolicy(allow_debug=True), as_of=NOW).accepted
    tee = dict(tee)
    del tee["x-ms-sevsnpvm-is-debuggable"]
    assert verify_maa(token(key, snp_payload(**{"x-ms-isolation-tee": tee})), ks, as_of=NOW).reason == "azure.maa_debug_forbidden"
    pol = MaaPolicy(measurements=["00" * 48])
    assert verify_maa(token(key, snp_payload()), ks, pol, as_of=NOW).reason == "azure.maa_measurement_not_allowed"
    pol = MaaPolicy(attestation_types=["tdxvm"])
    assert verify_maa(token(key, snp_payload()), ks, pol, as_of=NOW).reason == "azure.maa_tee_not_allowed"


def test_nonce(signer: Any) -> None:
    key, cert = signer
    v = verify_maa(token(key, snp_payload()), jwks(("k1", cert)), as_of=NOW, expected_nonce=b"other")
    assert v.reason == "azure.maa_nonce_mismatch"


def test_tdx_token(signer: Any) -> None:
    key, cert = signer
    tee = {
        "x-ms-attestation-type": "tdxvm",
        "x-ms-compliance-status": "azure-compliant-cvm",
        "tdx_mrtd": "91" * 48,
        "tdx_td_attributes_debug": False,
        "tdx_report_data": "00" * 64,
        "tdx_rtmr0": "01" * 48,
    }
    v = verify_maa(token(key, snp_payload(**{"x-ms-isolation-tee": tee})), jwks(("k1", cert)), as_of=NOW)
    assert v.accepted and v.claims is not None
    assert v.claims.measurement == "91" * 48 and v.claims.details["tdx_rtmr0"] == "01" * 48


def test_verify_files(signer: Any, tmp_path: Path) -> None:
    import json

    key, cert = signer
    (tmp_path / "t.jwt").write_text(token(key, snp_payload()) + "\n")
    (tmp_path / "jwks.json").write_text(json.dumps(jwks(("k1", cert))))
    (tmp_path / "p.json").write_text(json.dumps({"signing_roots": [hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()]}))
    base = dict(
        platform="azure-maa", token=tmp_path / "t.jwt", jwks=tmp_path / "jwks.json", as_of=NOW, policy=tmp_path / "p.json"
    )
    assert verify_files(EvidenceFiles(**base)).accepted  # type: ignore[arg-type]
    assert verify_files(EvidenceFiles(**{**base, "policy": None})).reason == "azure.maa_untrusted_root"  # type: ignore[arg-type]
    assert verify_files(EvidenceFiles(**{**base, "jwks": None})).reason == "cli.missing_input"  # type: ignore[arg-type]
    assert verify_files(EvidenceFiles(**{**base, "nonce": b"zz"})).reason == "azure.maa_nonce_mismatch"  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode()))
def test_garbage_tokens(signer: Any, text: str) -> None:
    _, cert = signer
    for t in (text, f"{text}.{text}.{text}", "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0." + text + ".x"):
        assert not verify_maa(t, jwks(("k1", cert)), as_of=NOW).accepted


@settings(max_examples=50, deadline=None)
@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.text(max_size=10),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    )
)
def test_garbage_jwks(signer: Any, ks: Any) -> None:
    key, _ = signer
    assert not verify_maa(token(key, snp_payload()), ks, as_of=NOW).accepted
    assert not verify_maa(token(key, snp_payload()), {"keys": [{"kid": "k1", "x5c": [ks]}]}, as_of=NOW).accepted
