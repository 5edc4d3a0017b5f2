"""Microsoft Azure Attestation (MAA) tokens: JWT RS256 verification against a JWKS, then Claims.

MAA verifies the hardware evidence itself and signs a JWT; trusting a token means trusting
Microsoft's attestation service and the JWKS the caller supplies (from the instance's
``/certs``, fetched out of band: nothing here fetches ``jku``/``x5u`` or trusts a key embedded
in the token header). Checked: alg is RS256, the ``kid`` is in the JWKS and allowed, the x5c
certificate is valid as of ``as_of``, the signature, exp/nbf/iat with ``as_of``, the issuer.
Claim names follow MAA's documented SEV-SNP claims (``x-ms-sevsnpvm-*``, nested under
``x-ms-isolation-tee`` for confidential VMs); TDX claims (``tdx_*``) are mapped best effort.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timezone
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from veil.attest.azure.validate import MaaPolicy, issuer_allowed
from veil.attest.claims import Claims
from veil.errors import ParseError, VerificationError

MAX_TOKEN = 1 << 20
PLATFORM = "azure-maa"


def _as_of(as_of: datetime | None) -> datetime:
    if as_of is None:
        return datetime.now(timezone.utc)
    return as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)


def _signing_key(jwks: Any, kid: str, policy: MaaPolicy, now: datetime) -> rsa.RSAPublicKey:
    """Find ``kid`` in the JWKS, check it against the allowlist and the time, return its RSA key."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise ParseError("azure.maa_jwks_malformed", "JWKS must be an object with a 'keys' list")
    jwk = next((k for k in keys if isinstance(k, dict) and k.get("kid") == kid), None)
    if jwk is None:
        raise VerificationError("azure.maa_unknown_key", f"key id {kid!r} is not in the JWKS")
    names = {kid}
    x5c = jwk.get("x5c")
    if isinstance(x5c, list) and x5c:
        try:
            der = base64.b64decode(x5c[0], validate=True)
            cert = x509.load_der_x509_certificate(der)
        except (ValueError, TypeError) as exc:
            raise ParseError("azure.maa_jwks_malformed", f"x5c of {kid!r}: {exc}") from exc
        names.add(hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest())
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerificationError("azure.maa_signing_cert_expired", f"certificate of {kid!r}")
        key = cert.public_key()
    else:
        try:
            key = jwt.PyJWK(jwk, algorithm="RS256").key
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            raise ParseError("azure.maa_jwks_malformed", f"key {kid!r}: {exc}") from exc
    allowed = {k.lower().replace(":", "") for k in policy.signing_keys} | set(policy.signing_keys)
    if policy.signing_keys and not names & allowed:
        raise VerificationError("azure.maa_key_not_allowed", f"key {kid!r} is not allowlisted")
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise VerificationError("azure.maa_key_not_allowed", "signing key is not RSA >= 2048 bits")
    return key


def _check_time(payload: dict[str, Any], now: datetime, leeway: int) -> None:
    t = now.timestamp()
    exp = payload.get("exp")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise ParseError("azure.maa_token_malformed", "token has no numeric exp")
    if t > exp + leeway:
        raise VerificationError("azure.maa_token_expired", "token expired")
    for claim in ("nbf", "iat"):
        v = payload.get(claim)
        if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
            raise ParseError("azure.maa_token_malformed", f"{claim} is not numeric")
        if v is not None and t < v - leeway:
            raise VerificationError("azure.maa_token_not_yet_valid", f"token {claim} is in the future")


def verify_token(
    token: str, jwks: Any, policy: MaaPolicy | None = None, *, as_of: datetime | None = None
) -> dict[str, Any]:
    """Verify an MAA JWT and return its payload; raise VeilError with a reason code otherwise."""
    policy = policy or MaaPolicy()
    if not isinstance(token, str) or len(token) > MAX_TOKEN:
        raise ParseError("azure.maa_token_malformed", "token must be a compact JWS string")
    token = token.strip()
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise ParseError("azure.maa_token_malformed", str(exc)) from exc
    if header.get("alg") != "RS256":
        raise VerificationError("azure.maa_algorithm_refused", f"alg {header.get('alg')!r} (want RS256)")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise ParseError("azure.maa_token_malformed", "token header has no kid")
    now = _as_of(as_of)
    key = _signing_key(jwks, kid, policy, now)
    try:
        payload = jwt.decode(
            token, key=key, algorithms=["RS256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "verify_aud": False, "verify_iss": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise VerificationError("azure.maa_signature_invalid", "token signature is invalid") from exc
    except jwt.PyJWTError as exc:
        raise ParseError("azure.maa_token_malformed", str(exc)) from exc
    if not isinstance(payload, dict):
        raise ParseError("azure.maa_token_malformed", "payload is not a JSON object")
    _check_time(payload, now, policy.leeway_seconds)
    issuer = payload.get("iss")
    if not isinstance(issuer, str) or not issuer_allowed(issuer, policy):
        raise VerificationError("azure.maa_issuer_not_allowed", f"issuer {issuer!r} not allowed")
    return {**payload, "_kid": kid}


def _hex(value: Any) -> bytes:
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return b""


def _nonces(payload: dict[str, Any], tee: dict[str, Any]) -> list[Any]:
    out = [payload.get("nonce")]
    for holder in (payload, tee):
        runtime = holder.get("x-ms-runtime")
        if isinstance(runtime, dict) and isinstance(runtime.get("client-payload"), dict):
            out.append(runtime["client-payload"].get("nonce"))
    return [n for n in out if isinstance(n, str)]


def check_nonce(payload: dict[str, Any], nonce: bytes) -> None:
    """The token must carry ``nonce`` (as text, hex, or base64/base64url) in a nonce claim."""
    tee = payload.get("x-ms-isolation-tee")
    forms = {nonce.hex(), base64.b64encode(nonce).decode(), base64.urlsafe_b64encode(nonce).decode()}
    forms |= {f.rstrip("=") for f in forms}
    try:
        forms.add(nonce.decode())
    except UnicodeDecodeError:
        pass
    got = _nonces(payload, tee if isinstance(tee, dict) else {})
    if not any(hmac.compare_digest(g.encode(), f.encode()) for g in got for f in forms):
        raise VerificationError("azure.maa_nonce_mismatch", "token does not carry this nonce")


def token_claims(payload: dict[str, Any]) -> Claims:
    """Map a verified MAA payload to Claims; a missing debug claim counts as debuggable."""
    tee = payload.get("x-ms-isolation-tee")
    tee = tee if isinstance(tee, dict) else payload
    kind = tee.get("x-ms-attestation-type")
    details: dict[str, Any] = {
        "attestation_type": kind,
        "issuer": payload.get("iss"),
        "kid": payload.get("_kid"),
        "compliance_status": tee.get("x-ms-compliance-status"),
        "runtime": tee.get("x-ms-runtime", payload.get("x-ms-runtime")),
        "azurevm": {k: v for k, v in payload.items() if k.startswith("x-ms-azurevm-")},
        "exp": payload.get("exp"),
    }
    if kind == "sevsnpvm":
        p = "x-ms-sevsnpvm-"
        details.update({k[len(p):]: v for k, v in tee.items() if k.startswith(p)})
        debug = tee.get(p + "is-debuggable") is not False
        return Claims(
            platform=PLATFORM, measurement=str(tee.get(p + "launchmeasurement", "")).lower(),
            report_data=_hex(tee.get(p + "reportdata")), debug=debug,
            tcb={"bootloader": tee.get(p + "bootloader-svn"), "tee": tee.get(p + "tee-svn"),
                 "snp": tee.get(p + "snpfw-svn"), "microcode": tee.get(p + "microcode-svn")},
            details=details,
        )
    details.update({k: v for k, v in tee.items() if k.startswith("tdx_")})
    return Claims(
        platform=PLATFORM, measurement=str(tee.get("tdx_mrtd", "")).lower(),
        report_data=_hex(tee.get("tdx_report_data")),
        debug=tee.get("tdx_td_attributes_debug") is not False, details=details,
    )
