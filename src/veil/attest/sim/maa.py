"""A SIMULATED Microsoft Azure Attestation instance: RS256 tokens in MAA's claim layout, signed by
a certificate chain (signing certificate ← root) generated per deployment.

It exists so the verifier that judges real MAA tokens runs in tests and in the ``sim-azure-*``
twins: tokens carry MAA's claim names (``x-ms-isolation-tee.x-ms-attestation-type`` ...), its
``/certs`` is a JWKS whose key holds the ``x5c`` chain, and the root is trusted only when a caller
adds its fingerprint as a simulation root (or pins it in ``MaaReference.signing_roots``). Every
certificate subject says SIMULATED; it gives no hardware protection.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, load_pem_private_key
from cryptography.x509.oid import NameOID

from veil.attest.chain import fingerprint
from veil.attest.sim.certs import signing_key_usage

SIM_ISSUER = "https://sim-maa.attest.veil.invalid"


def _cert(
    cn: str,
    key: rsa.RSAPrivateKey,
    issuer: str,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    def name(n: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, n),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Veil SIMULATED MAA (not Microsoft)"),
            ]
        )

    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(signing_key_usage(ca), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


@dataclass
class SimMaa:
    """One simulated MAA instance (``issuer``), its root and signing certificate."""

    issuer: str = SIM_ISSUER
    not_before: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1))
    not_after: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3650))

    def __post_init__(self) -> None:
        self.root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        nb, na = self.not_before, self.not_after
        self.root = _cert(
            "SIMULATED MAA Root", self.root_key, "SIMULATED MAA Root", self.root_key, ca=True, not_before=nb, not_after=na
        )
        self.cert = _cert(
            f"{self.issuer} SIMULATED", self.key, "SIMULATED MAA Root", self.root_key, ca=False, not_before=nb, not_after=na
        )
        self.kid = hashlib.sha256(self.cert.public_bytes(Encoding.DER)).hexdigest()[:32]

    def to_json(self) -> dict[str, str]:
        """The instance's keys and certificates (kept in a simulated platform's directory, 0600)."""

        def pem(key: rsa.RSAPrivateKey) -> str:
            return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()

        return {
            "issuer": self.issuer,
            "root_key": pem(self.root_key),
            "key": pem(self.key),
            "root": self.root.public_bytes(Encoding.PEM).decode(),
            "cert": self.cert.public_bytes(Encoding.PEM).decode(),
        }

    @classmethod
    def from_json(cls, doc: dict[str, str]) -> SimMaa:
        maa = cls.__new__(cls)
        maa.issuer = doc["issuer"]
        keys = [load_pem_private_key(doc[k].encode(), None) for k in ("root_key", "key")]
        assert all(isinstance(k, rsa.RSAPrivateKey) for k in keys)
        maa.root_key, maa.key = keys  # type: ignore[assignment]
        maa.root, maa.cert = (x509.load_pem_x509_certificate(doc[k].encode()) for k in ("root", "cert"))
        maa.not_before, maa.not_after = maa.cert.not_valid_before_utc, maa.cert.not_valid_after_utc
        maa.kid = hashlib.sha256(maa.cert.public_bytes(Encoding.DER)).hexdigest()[:32]
        return maa

    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.root)

    def certs(self) -> dict[str, Any]:
        """What the instance's ``/certs`` serves: a JWKS whose key carries its x5c chain."""
        x5c = [base64.b64encode(c.public_bytes(Encoding.DER)).decode() for c in (self.cert, self.root)]
        return {"keys": [{"kid": self.kid, "kty": "RSA", "use": "sig", "x5c": x5c}]}

    def issue(
        self, claims: dict[str, Any], *, now: dt.datetime | None = None, lifetime: dt.timedelta = dt.timedelta(hours=8)
    ) -> str:
        """A token over ``claims`` with MAA's envelope claims (iss, iat, nbf, exp, ...)."""
        t = int((now or dt.datetime.now(dt.timezone.utc)).timestamp())
        payload = {
            "iss": self.issuer,
            "iat": t,
            "nbf": t,
            "exp": t + int(lifetime.total_seconds()),
            "x-ms-ver": "1.0",
            "x-ms-attestation-type": "azurevm",
            **claims,
        }
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid, "jku": f"{self.issuer}/certs"})

    def cvm_claims(self, *, runtime: dict[str, Any], report: dict[str, Any], kind: str = "sevsnpvm") -> dict[str, Any]:
        """MAA's claims for an attested CVM: ``x-ms-isolation-tee`` with the HCL runtime claims
        and the hardware report's claims (``x-ms-sevsnpvm-*`` names for SEV-SNP)."""
        return {
            "x-ms-azurevm-vmid": "00000000-0000-0000-0000-000000000000",
            "x-ms-isolation-tee": {
                "x-ms-attestation-type": kind,
                "x-ms-compliance-status": "azure-compliant-cvm",
                "x-ms-runtime": runtime,
                **report,
            },
        }
