"""Cryptographic checks of an NVIDIA GPU report: chain, signature, nonce, FWID.

The chain is leaf (the GPU's attestation key, "GSP FMC LF") up to the NVIDIA Device Identity CA,
which must be present and whose SHA-256 DER fingerprint is pinned here: a root is trusted for what
it *is*, not for what it says. The report is signed with ECDSA P-384/SHA-384 (raw r || s) by the
leaf key over request + response up to the signature. The FWID that NVIDIA's CA certified in the
leaf (TCG DICE TcbInfo extension) must equal the FWID the firmware put in the report, so a report
cannot be passed off under another firmware's certificate.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from veil.attest.chain import CERT_ERRORS, fingerprint, verify_chain
from veil.attest.nvidia.abi import SIGNATURE_LEN, AttestationReport
from veil.attest.trust import NVIDIA_DEVICE_IDENTITY_CA_SHA256
from veil.errors import ParseError, VerificationError

__all__ = ["CERT_ERRORS", "TRUSTED_ROOTS", "VerifiedReport", "fingerprint", "load_chain", "verify_report"]

TRUSTED_ROOTS: frozenset[str] = frozenset({NVIDIA_DEVICE_IDENTITY_CA_SHA256})

# TCG DICE extensions that carry FWIDs: TcbInfo and MultiTcbInfo.
TCG_DICE_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.1")
TCG_DICE_MULTI_TCB_INFO = x509.ObjectIdentifier("2.23.133.5.4.5")
_HASH_OIDS = {  # DER-encoded OID bodies of the digests an FWID may use
    bytes.fromhex("608648016503040201"): "sha256",
    bytes.fromhex("608648016503040202"): "sha384",
    bytes.fromhex("608648016503040203"): "sha512",
}

MAX_CHAIN_LEN = 8


@dataclass(frozen=True)
class VerifiedReport:
    """What ``verify_report`` established, for the policy layer and the claims."""

    report: AttestationReport
    chain: tuple[x509.Certificate, ...]
    fwid: bytes

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


def load_chain(pem: bytes) -> list[x509.Certificate]:
    """PEM certificates, leaf first; unreadable input is ``nvidia.malformed_chain``."""
    try:
        certs = x509.load_pem_x509_certificates(bytes(pem))
    except CERT_ERRORS as exc:
        raise ParseError("nvidia.malformed_chain", f"certificate chain is not PEM: {exc}") from exc
    if len(certs) > MAX_CHAIN_LEN:
        raise ParseError("nvidia.malformed_chain", f"{len(certs)} certificates is too long a chain")
    return certs


def verify_signature(report: AttestationReport, leaf: x509.Certificate) -> None:
    """ECDSA P-384/SHA-384 over request + response up to the signature, with the leaf key."""
    try:
        key = leaf.public_key()
    except CERT_ERRORS as exc:
        raise VerificationError("nvidia.chain_invalid", f"unusable leaf key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise VerificationError("nvidia.chain_invalid", "the signing certificate has no P-384 key")
    sig = report.signature
    half = SIGNATURE_LEN // 2
    der = encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
    try:
        key.verify(der, report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature as exc:
        raise VerificationError("nvidia.signature_invalid", "the report signature does not verify with the leaf key") from exc


def check_nonce(report: AttestationReport, expected_nonce: bytes) -> None:
    """The request nonce must be the verifier's: anything else is a replay or a stale report."""
    if not hmac.compare_digest(report.nonce, bytes(expected_nonce)):
        raise VerificationError(
            "nvidia.nonce_mismatch",
            f"report nonce {report.nonce.hex()} is not the expected {bytes(expected_nonce).hex()}",
        )


def certificate_fwids(cert: x509.Certificate) -> list[bytes]:
    """FWID digests in the certificate's TCG DICE TcbInfo/MultiTcbInfo extensions.

    Standard TcbInfo keeps them under ``fwids [6]``; NVIDIA's GH100 leaf holds a SEQUENCE of a
    version, the layer's public key and one FWID. Both are read by looking for FWID shapes,
    SEQUENCE { hash OID, OCTET STRING of that hash's length }, anywhere in the value.
    """
    out: list[bytes] = []
    try:
        extensions = list(cert.extensions)
    except CERT_ERRORS as exc:
        raise VerificationError("nvidia.chain_invalid", f"bad extensions: {exc}") from exc
    for ext in extensions:
        if ext.oid in (TCG_DICE_TCB_INFO, TCG_DICE_MULTI_TCB_INFO):
            value = ext.value
            body = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
            try:
                out.extend(_find_fwids(body, depth=0))
            except _DerError as exc:
                raise VerificationError("nvidia.fwid_mismatch", f"the leaf's TcbInfo extension is not DER: {exc}") from exc
    return out


def check_fwid(report: AttestationReport, leaf: x509.Certificate) -> bytes:
    """The report's FWID (opaque field 20) must be one the leaf certificate certifies."""
    reported = report.fwid
    if not reported:
        raise VerificationError("nvidia.fwid_mismatch", "the report carries no FWID")
    certified = certificate_fwids(leaf)
    if not certified:
        raise VerificationError("nvidia.fwid_mismatch", "the signing certificate carries no FWID")
    if not any(hmac.compare_digest(reported, f) for f in certified):
        raise VerificationError(
            "nvidia.fwid_mismatch",
            f"report FWID {reported.hex()} is not the certified {certified[0].hex()}",
        )
    return reported


def verify_report(
    report: AttestationReport,
    chain_pem: bytes,
    *,
    expected_nonce: bytes,
    as_of: datetime | None = None,
    trusted_roots: Collection[str] = TRUSTED_ROOTS,
) -> VerifiedReport:
    """Chain, then signature, then nonce, then FWID; raises the first failure."""
    certs = load_chain(chain_pem)
    verify_chain(certs, as_of=as_of, trusted_roots=trusted_roots, prefix="nvidia.", what="the pinned NVIDIA Device Identity CA")
    verify_signature(report, certs[0])
    check_nonce(report, expected_nonce)
    fwid = check_fwid(report, certs[0])
    return VerifiedReport(report, tuple(certs), fwid)


# --- a minimal DER reader, enough to find FWIDs without an ASN.1 dependency ---------------------


class _DerError(Exception):
    pass


def _tlvs(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise _DerError("truncated header")
        tag, first = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise _DerError("high tag numbers are not used here")
        if first < 0x80:
            length = first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + n > len(data):
                raise _DerError("bad length")
            length = int.from_bytes(data[pos : pos + n], "big")
            pos += n
        if pos + length > len(data):
            raise _DerError("value overruns its container")
        yield tag, data[pos : pos + length]
        pos += length


def _find_fwids(data: bytes, depth: int) -> list[bytes]:
    if depth > 8:
        raise _DerError("nested too deeply")
    found: list[bytes] = []
    for tag, value in _tlvs(data):
        if not tag & 0x20:  # primitive
            continue
        children = list(_tlvs(value))
        if tag == 0x30 and len(children) == 2:
            (t1, oid), (t2, digest) = children
            algorithm = _HASH_OIDS.get(oid) if (t1, t2) == (0x06, 0x04) else None
            if algorithm and len(digest) == hashlib.new(algorithm).digest_size:
                found.append(digest)
                continue
        found.extend(_find_fwids(value, depth + 1))
    return found
