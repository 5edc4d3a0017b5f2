"""Microsoft Azure Attestation (MAA) tokens: an RS256 JWT whose signer chains to a pinned root.

MAA verifies a CVM's hardware evidence itself and signs a JWT. Trusting a token means trusting
the MAA instance's signing certificate, so the certificates are never accepted as given: the
evidence carries the instance's ``/certs`` (a JWKS whose keys hold ``x5c`` chains); the header's
``kid`` picks one; its chain (or a single self-signed certificate) must end at a root pinned by
SHA-256 fingerprint — ``TrustRoots.microsoft``, the manifest's ``MaaReference.signing_roots``, or
a trusted simulation root (``sim-azure-*``'s MAA) — and be valid at ``as_of``; the JWK's own
``n``/``e``, when present, must be that certificate's key. Nothing fetches ``jku``/``x5u``.
Then: ``alg`` RS256 only, the signature (PyJWT), ``exp`` required and ``exp``/``nbf``/``iat`` at
``as_of`` with leeway. Issuer, attestation type, debug and compliance are policy (validate.py).

Claim names follow MAA's documented CVM claims: ``x-ms-isolation-tee`` holds
``x-ms-attestation-type`` (``sevsnpvm``/``tdxvm``), ``x-ms-compliance-status``, ``x-ms-runtime``
(the HCL runtime claims, with ``user-data``) and the hardware's ``x-ms-sevsnpvm-*`` claims; TDX
tokens' ``tdx_*`` claims are mapped best effort (no real TDX token was available).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jwt
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

from veil.attest.chain import CERT_ERRORS, fingerprint, verify_chain
from veil.attest.claims import Claims
from veil.attest.trust import TrustRoots
from veil.errors import ParseError, VerificationError

MAX_TOKEN = 1 << 20
PLATFORM = "azure-maa"

__all__ = ["MaaToken", "bound_user_data", "check_nonce", "check_root", "token_claims", "verify_token"]


@dataclass(frozen=True)
class MaaToken:
    """A token whose signature, signer chain and times verified."""

    payload: dict[str, Any]
    issuer: str
    signer: str  # the signing certificate's subject
    root: str  # fingerprint of the root it chains to
    root_trusted: bool  # a Microsoft root of TrustRoots or a trusted simulation root (else: policy pins)
    simulated: bool

    @property
    def tee(self) -> dict[str, Any]:
        tee = self.payload.get("x-ms-isolation-tee")
        return tee if isinstance(tee, dict) else self.payload


def _chain(jwks: Any, kid: str) -> tuple[list[x509.Certificate], dict[str, Any]]:
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list):
        raise ParseError("azure.maa_jwks_malformed", 'the MAA certificates must be a JWKS: {"keys": [...]}')
    jwk = next((k for k in keys if isinstance(k, dict) and k.get("kid") == kid), None)
    if jwk is None:
        raise VerificationError("azure.maa_unknown_key", f"key id {kid!r} is not among the MAA certificates")
    x5c = jwk.get("x5c")
    if not isinstance(x5c, list) or not x5c or len(x5c) > 8:
        raise VerificationError("azure.maa_untrusted_root", f"key {kid!r} carries no x5c certificate chain")
    try:
        return [x509.load_der_x509_certificate(base64.b64decode(c, validate=True)) for c in x5c], jwk
    except (*CERT_ERRORS, binascii.Error) as exc:
        raise ParseError("azure.maa_jwks_malformed", f"x5c of {kid!r}: {exc}") from None


def _signing_key(jwks: Any, kid: str, now: datetime) -> tuple[rsa.RSAPublicKey, x509.Certificate, str]:
    """The RSA key of ``kid`` once its certificate chain is sound and valid ``now``; which root it
    ends at is judged by the caller (pinned roots of TrustRoots now, the manifest's in validate)."""
    certs, jwk = _chain(jwks, kid)
    roots = {fingerprint(certs[-1])}
    if len(certs) == 1:  # a self-signed signing certificate, pinned itself
        (cert,) = certs
        try:
            cert.verify_directly_issued_by(cert)
        except (InvalidSignature, *CERT_ERRORS) as exc:
            raise VerificationError("azure.maa_chain_invalid", "the signing certificate is not self-signed") from exc
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerificationError(
                "azure.maa_cert_expired",
                f"the MAA signing certificate is valid {cert.not_valid_before_utc} .. {cert.not_valid_after_utc}, not at {now}",
            )
    else:
        verify_chain(certs, as_of=now, trusted_roots=roots, prefix="azure.maa_", what="a pinned MAA signing root")
    try:
        key = certs[0].public_key()
    except CERT_ERRORS as exc:
        raise VerificationError("azure.maa_chain_invalid", f"unusable signing key: {exc}") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 2048:
        raise VerificationError("azure.maa_key_not_allowed", "the signing key is not RSA >= 2048 bits")
    if "n" in jwk or "e" in jwk:
        try:
            stated = jwt.PyJWK(jwk, algorithm="RS256").key
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            raise ParseError("azure.maa_jwks_malformed", f"key {kid!r}: {exc}") from None
        if not isinstance(stated, rsa.RSAPublicKey) or stated.public_numbers() != key.public_numbers():
            raise VerificationError("azure.maa_chain_invalid", f"key {kid!r} is not its certificate's key")
    return key, certs[0], fingerprint(certs[-1])


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


def verify_token(token: Any, certs: Any, *, trust: TrustRoots, now: datetime, leeway: int = 60) -> MaaToken:
    """Signature, signer chain, times; raises a typed VeilError. ``root_trusted`` says whether the
    chain ends at a root of ``trust``; :func:`check_root` finishes with the policy's pins."""
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
    key, signer, root = _signing_key(certs, kid, now)
    try:
        payload = jwt.decode(
            token,
            key=key,
            algorithms=["RS256"],
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_aud": False, "verify_iss": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise VerificationError("azure.maa_signature_invalid", "token signature is invalid") from exc
    except jwt.PyJWTError as exc:
        raise ParseError("azure.maa_token_malformed", str(exc)) from exc
    if not isinstance(payload, dict):
        raise ParseError("azure.maa_token_malformed", "payload is not a JSON object")
    _check_time(payload, now, leeway)
    issuer = payload.get("iss")
    if not isinstance(issuer, str):
        raise ParseError("azure.maa_token_malformed", "token has no issuer")
    simulated = root in trust.simulation and root not in trust.microsoft
    trusted = root in trust.microsoft or simulated
    return MaaToken(payload, issuer, signer.subject.rfc4514_string(), root, trusted, simulated)


def check_root(token: MaaToken, pinned: Collection[str]) -> None:
    """The signer's root must be trusted (TrustRoots) or pinned by the policy (its fingerprints)."""
    if token.root_trusted or token.root in {p.lower().replace(":", "") for p in pinned}:
        return
    raise VerificationError(
        "azure.maa_untrusted_root", f"the MAA signing chain ends at {token.root[:16]}..., not a pinned MAA signing root"
    )


def _forms(value: bytes) -> set[str]:
    forms = {value.hex(), base64.b64encode(value).decode(), base64.urlsafe_b64encode(value).decode()}
    forms |= {f.rstrip("=") for f in forms}
    try:
        forms.add(value.decode())
    except UnicodeDecodeError:
        pass
    return forms


def check_nonce(token: MaaToken, nonce: bytes) -> None:
    """A standalone token must carry ``nonce`` (text, hex, base64/base64url) in ``nonce`` or
    ``x-ms-runtime.client-payload.nonce``."""
    got = [token.payload.get("nonce")]
    for holder in (token.payload, token.tee):
        runtime = holder.get("x-ms-runtime")
        if isinstance(runtime, dict) and isinstance(runtime.get("client-payload"), dict):
            got.append(runtime["client-payload"].get("nonce"))
    forms = _forms(nonce)
    if not any(isinstance(g, str) and hmac.compare_digest(g.encode(), f.encode()) for g in got for f in forms):
        raise VerificationError("azure.maa_nonce_mismatch", "token does not carry this nonce")


def bound_user_data(token: MaaToken) -> bytes:
    """The HCL runtime claims' user-data MAA attested (``x-ms-runtime.user-data``), as bytes."""
    runtime = token.tee.get("x-ms-runtime")
    value = runtime.get("user-data") if isinstance(runtime, dict) else None
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return b""


def _hex(value: Any) -> bytes:
    try:
        return bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return b""


def token_claims(token: MaaToken) -> Claims:
    """Map a verified token to Claims; a missing debug claim counts as debuggable."""
    payload, tee = token.payload, token.tee
    kind = tee.get("x-ms-attestation-type")
    details: dict[str, Any] = {
        "attestation_type": kind,
        "issuer": token.issuer,
        "signer": token.signer,
        "compliance_status": tee.get("x-ms-compliance-status"),
        "runtime": tee.get("x-ms-runtime", payload.get("x-ms-runtime")),
        "azurevm": {k: v for k, v in payload.items() if k.startswith("x-ms-azurevm-")},
        "exp": payload.get("exp"),
    }
    if kind == "sevsnpvm":
        p = "x-ms-sevsnpvm-"
        details.update({k[len(p) :]: v for k, v in tee.items() if k.startswith(p)})
        return Claims(
            platform=PLATFORM,
            measurement=str(tee.get(p + "launchmeasurement", "")).lower(),
            report_data=_hex(tee.get(p + "reportdata")),
            debug=tee.get(p + "is-debuggable") is not False,
            simulated=token.simulated,
            tcb={
                "bootloader": tee.get(p + "bootloader-svn"),
                "tee": tee.get(p + "tee-svn"),
                "snp": tee.get(p + "snpfw-svn"),
                "microcode": tee.get(p + "microcode-svn"),
            },
            details=details,
        )
    details.update({k: v for k, v in tee.items() if k.startswith("tdx_")})
    return Claims(
        platform=PLATFORM,
        measurement=str(tee.get("tdx_mrtd", "")).lower(),
        report_data=_hex(tee.get("tdx_report_data")),
        debug=tee.get("tdx_td_attributes_debug") is not False,
        simulated=token.simulated,
        details=details,
    )
