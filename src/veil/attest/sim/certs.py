"""What the simulated platforms' certificates share."""

from __future__ import annotations

from cryptography import x509

__all__ = ["signing_key_usage"]


def signing_key_usage(ca: bool) -> x509.KeyUsage:
    """Key usage of a simulated chain's certificate: a CA signs certificates, a leaf signs evidence."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
