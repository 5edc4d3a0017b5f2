"""X.509 chains to a pinned root: the one chain walk every vendor's certificates go through.

NVIDIA's GPU and RIM chains and Microsoft's MAA signing certificates are checked the same way:
the last certificate is a root trusted for what it *is* (SHA-256 of its DER), each certificate is
directly issued (name and signature) by the next, every issuer is a CA allowed to issue (basic
constraints, path length, keyCertSign), the leaf may sign, and all are valid at ``as_of``.
``prefix`` keeps each caller's reason codes (``nvidia.untrusted_root``, ``nvidia.rim_untrusted_root``,
``azure.maa_untrusted_root``...). SEV-SNP and TDX keep their own (RSA-PSS, dcap-qvl).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from datetime import datetime
from functools import lru_cache
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from veil.attest.api import as_of_utc
from veil.errors import VerificationError

_E = TypeVar("_E", bound=x509.ExtensionType)
# what `cryptography` raises for a certificate it cannot use (odd key type, bad encoding, a version
# field other than v1-v3: InvalidVersion is not a ValueError)
CERT_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion)

__all__ = ["CERT_ERRORS", "extension", "fingerprint", "verify_chain"]


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def verify_chain(
    certs: list[x509.Certificate],
    *,
    as_of: datetime | None = None,
    trusted_roots: Collection[str],
    prefix: str,
    what: str,
) -> None:
    """Leaf -> ... -> pinned root: links, CA constraints and validity at ``as_of``.

    The same rules serve the GPU's chain and a RIM's signing chain; ``prefix`` keeps their reason
    codes apart (``nvidia.untrusted_root`` vs ``nvidia.rim_untrusted_root``).
    """
    if len(certs) < 2:
        raise VerificationError(
            f"{prefix}chain_too_short",
            f"the chain holds {len(certs)} certificate(s); it needs at least the signing certificate and {what}",
        )
    root = certs[-1]
    if fingerprint(root) not in trusted_roots:
        raise VerificationError(
            f"{prefix}untrusted_root",
            f"the chain ends at {root.subject.rfc4514_string()!r}, not {what}",
        )
    for position, (cert, issuer) in enumerate(zip(certs, certs[1:] + [root])):
        _check_link(cert, issuer, position, prefix)
    now = as_of_utc(as_of)
    for cert in certs:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerificationError(
                f"{prefix}cert_expired",
                f"{cert.subject.rfc4514_string()!r} is valid {cert.not_valid_before_utc} .. "
                f"{cert.not_valid_after_utc}, not at {now.isoformat()}",
            )


@lru_cache(maxsize=1024)
def _issued_by(cert_der: bytes, issuer_der: bytes) -> None:
    """Memoised (successes only): a certificate's signature by its issuer is a pure function of the
    two encodings, and a worker re-attests with the same chains; times are checked on every call."""
    x509.load_der_x509_certificate(cert_der).verify_directly_issued_by(x509.load_der_x509_certificate(issuer_der))


def _check_link(cert: x509.Certificate, issuer: x509.Certificate, position: int, prefix: str) -> None:
    name = cert.subject.rfc4514_string()
    invalid = f"{prefix}chain_invalid"
    try:
        _issued_by(cert.public_bytes(Encoding.DER), issuer.public_bytes(Encoding.DER))
    except (*CERT_ERRORS, InvalidSignature) as exc:
        raise VerificationError(invalid, f"{name!r} is not issued by {issuer.subject.rfc4514_string()!r}") from exc
    if position == 0:
        usage = extension(cert, x509.KeyUsage)
        if usage is not None and not usage.digital_signature:
            raise VerificationError(invalid, f"{name!r} may not sign")
        return
    # every certificate above the leaf issues certificates: it must be a CA allowed to
    constraints = extension(cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise VerificationError(invalid, f"{name!r} is not a CA certificate")
    below = position - 1  # CA certificates between this one and the leaf
    if constraints.path_length is not None and below > constraints.path_length:
        raise VerificationError(invalid, f"{name!r} path length exceeded")
    usage = extension(cert, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise VerificationError(invalid, f"{name!r} may not sign certificates")


def extension(cert: x509.Certificate, kind: type[_E]) -> _E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except CERT_ERRORS as exc:  # duplicate or undecodable extension
        raise VerificationError("nvidia.chain_invalid", f"bad extension: {exc}") from exc
