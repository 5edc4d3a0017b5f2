"""Certificate revocation for NVIDIA chains: cached, signed OCSP responses that travel with evidence.

NVIDIA runs an OCSP service for the certificates it issues (the GPU's provisioning chain and the
RIM signing chain). A worker fetches one response per certificate (or reads them from its cache)
and sends them with its evidence, so the coordinator and offline tools verify revocation without
a network: each response is parsed and signed-checked with ``cryptography.x509.ocsp`` here, and
the policy bounds its age (``NvidiaPolicy.max_revocation_age_hours``).

Which certificates need a status: every one between the leaf and the root, excluding the root
(it is pinned) and, for the GPU's chain, the leaf itself — the "GSP FMC LF" key is made by the GPU
firmware at boot (DICE), NVIDIA never issued it, so no OCSP service knows it (NVIDIA's own
verifier skips it the same way). For a RIM chain the leaf (the RIM signer) is included.

A response is accepted when (RFC 6960): its status is successful; a SingleResponse names this
certificate (serial, issuer name hash and issuer key hash under the response's hash algorithm);
it is signed by the issuer, or by a responder certificate carrying the OCSPSigning EKU that chains
to the same trusted root; the responder ID names that signer; ``thisUpdate`` is not in the future
and ``nextUpdate``, when given, not in the past, at ``as_of``. REVOKED (any reason, certificateHold
included) and UNKNOWN are refusals, never warnings.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from veil.errors import ParseError, VerificationError

CLOCK_SKEW = timedelta(minutes=5)
MAX_RESPONSES = 32
MAX_RESPONSE_LEN = 64 << 10

__all__ = ["Revocation", "check_chain", "load_responses"]


@dataclass(frozen=True)
class Revocation:
    """One certificate's verified OCSP status ("good": anything else is refused)."""

    subject: str
    serial: int
    this_update: datetime
    next_update: datetime | None
    responder: str

    def to_json(self) -> dict[str, str | None]:
        return {
            "subject": self.subject,
            "status": "good",
            "this_update": self.this_update.isoformat(),
            "next_update": self.next_update.isoformat() if self.next_update else None,
            "responder": self.responder,
        }


def load_responses(raw: Sequence[bytes]) -> list[ocsp.OCSPResponse]:
    """DER OCSP responses (``nvidia.ocsp_malformed`` for anything unreadable or unsuccessful)."""
    if len(raw) > MAX_RESPONSES:
        raise ParseError("nvidia.ocsp_malformed", f"{len(raw)} OCSP responses is too many")
    out = []
    for i, der in enumerate(raw):
        if len(der) > MAX_RESPONSE_LEN:
            raise ParseError("nvidia.ocsp_malformed", f"OCSP response {i} is implausibly large")
        try:
            response = ocsp.load_der_ocsp_response(der)
        except ValueError as exc:
            raise ParseError("nvidia.ocsp_malformed", f"OCSP response {i} is not DER: {exc}") from None
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            raise ParseError("nvidia.ocsp_malformed", f"OCSP response {i} is {response.response_status.name}")
        out.append(response)
    return out


def _cert_id(cert: x509.Certificate, issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> ocsp.OCSPRequest:
    """The CertID fields (issuer name and key hashes) as the library computes them for a request."""
    return ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm).build()


def _matching(
    responses: list[ocsp.OCSPResponse], cert: x509.Certificate, issuer: x509.Certificate
) -> tuple[ocsp.OCSPResponse, ocsp.OCSPSingleResponse] | None:
    for response in responses:
        for single in response.responses:
            if single.serial_number != cert.serial_number:
                continue
            want = _cert_id(cert, issuer, single.hash_algorithm)
            if hmac.compare_digest(single.issuer_key_hash, want.issuer_key_hash) and hmac.compare_digest(
                single.issuer_name_hash, want.issuer_name_hash
            ):
                return response, single
    return None


def _verify_signature(signer: x509.Certificate, response: ocsp.OCSPResponse) -> None:
    _signed_by(signer.public_bytes(Encoding.DER), response.public_bytes(Encoding.DER))


@lru_cache(maxsize=1024)
def _signed_by(signer_der: bytes, response_der: bytes) -> None:
    """Memoised (successes only): the signature is a pure function of the two encodings."""
    signer, response = x509.load_der_x509_certificate(signer_der), ocsp.load_der_ocsp_response(response_der)
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        raise InvalidSignature("no hash algorithm")
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
    else:
        raise InvalidSignature("unsupported responder key type")


@lru_cache(maxsize=1024)
def _key_hash(cert_der: bytes) -> bytes:
    """SHA-1 of the certificate's subjectPublicKey (RFC 6960 ResponderID byKey)."""
    key = x509.load_der_x509_certificate(cert_der).public_key()
    return x509.SubjectKeyIdentifier.from_public_key(key).digest


def _names_signer(response: ocsp.OCSPResponse, signer: x509.Certificate) -> bool:
    if response.responder_key_hash is not None:
        return hmac.compare_digest(response.responder_key_hash, _key_hash(signer.public_bytes(Encoding.DER)))
    return response.responder_name == signer.subject


def _signer(
    response: ocsp.OCSPResponse,
    issuer: x509.Certificate,
    chain: Sequence[x509.Certificate],
    trusted_roots: Collection[str],
    now: datetime,
) -> x509.Certificate:
    """The certificate that signed ``response``: the issuer, or a delegated OCSP responder."""
    from veil.attest.nvidia.verify import fingerprint

    for candidate in [issuer, *response.certificates]:
        if not _names_signer(response, candidate):
            continue
        try:
            _verify_signature(candidate, response)
        except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
            continue
        if candidate is issuer:
            return candidate
        # a delegated responder: OCSPSigning, valid now, chaining (through the response's own
        # certificates or the evidence chain) to a trusted root
        try:
            eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if (
            ExtendedKeyUsageOID.OCSP_SIGNING not in eku
            or not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc
        ):
            continue
        pool = [*response.certificates, *chain]
        current, depth = candidate, 0
        while depth < 8:
            if fingerprint(current) in trusted_roots:
                return candidate
            parent = next((c for c in pool if c.subject == current.issuer and c is not current), None)
            if parent is None:
                break
            try:
                current.verify_directly_issued_by(parent)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                break
            current, depth = parent, depth + 1
    raise VerificationError(
        "nvidia.ocsp_signature_invalid",
        "the OCSP response is not signed by the issuer or a responder chaining to the trusted root",
    )


def check_chain(
    chain: Sequence[x509.Certificate],
    raw_responses: Sequence[bytes],
    *,
    now: datetime,
    trusted_roots: Collection[str],
    skip_leaf: bool,
    prefix: str = "nvidia.",
) -> tuple[list[Revocation], list[str]]:
    """Verify the OCSP status of every certificate of ``chain`` (already verified, leaf first) that
    needs one; returns (verified statuses, subjects with no response). Raises on any bad status."""
    responses = load_responses(raw_responses)
    statuses: list[Revocation] = []
    missing: list[str] = []
    for i in range(1 if skip_leaf else 0, len(chain) - 1):
        cert, issuer = chain[i], chain[i + 1]
        subject = cert.subject.rfc4514_string()
        found = _matching(responses, cert, issuer)
        if found is None:
            missing.append(subject)
            continue
        response, single = found
        signer = _signer(response, issuer, chain, trusted_roots, now)
        if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
            reason = single.revocation_reason.name if single.revocation_reason else "unspecified"
            raise VerificationError(f"{prefix}cert_revoked", f"{subject!r} is revoked ({reason}, {single.revocation_time_utc})")
        if single.certificate_status != ocsp.OCSPCertStatus.GOOD:
            raise VerificationError(f"{prefix}revocation_unknown", f"the OCSP responder does not know {subject!r}")
        if single.this_update_utc > now + CLOCK_SKEW:
            raise VerificationError(
                f"{prefix}revocation_not_yet_valid",
                f"the OCSP status of {subject!r} is from {single.this_update_utc}, after {now}",
            )
        if single.next_update_utc is not None and single.next_update_utc < now:
            raise VerificationError(
                f"{prefix}revocation_stale", f"the OCSP status of {subject!r} expired at {single.next_update_utc}"
            )
        statuses.append(
            Revocation(
                subject, cert.serial_number, single.this_update_utc, single.next_update_utc, signer.subject.rfc4514_string()
            )
        )
    return statuses, missing
