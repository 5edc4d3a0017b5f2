"""AMD's ASK/ASVK/ARK shipped with Veil: pinned, identical to the published ones, and enough for a
VCEK or VLEK alone to verify."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from attest_verdicts import snp_verdict
from veil.attest.snp import SnpEvidence
from veil.attest.snp.amd_certificates import AMD_CERTIFICATES, builtin_chain
from veil.attest.snp.verify import AMD_INTERMEDIATE_FINGERPRINTS, verify_vcek_chain
from veil.attest.trust import AMD_ARK_FINGERPRINTS

IN_WINDOW = __import__("datetime").datetime(2025, 6, 1, tzinfo=__import__("datetime").timezone.utc)


def _fp(pem: str) -> str:
    return hashlib.sha256(x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)).hexdigest()


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_every_certificate_is_pinned(product: str) -> None:
    assert AMD_ARK_FINGERPRINTS[_fp(AMD_CERTIFICATES[(product, "ark")])] == product
    assert AMD_INTERMEDIATE_FINGERPRINTS[_fp(AMD_CERTIFICATES[(product, "vcek")])] == (product, "ask")
    assert AMD_INTERMEDIATE_FINGERPRINTS[_fp(AMD_CERTIFICATES[(product, "vlek")])] == (product, "asvk")


@pytest.mark.parametrize("product", ["Milan", "Genoa", "Turin"])
def test_identical_to_the_published_roots(vectors: Path, product: str) -> None:
    """The same bytes as the canonical certificates other projects ship (../shared/vectors/roots)."""
    roots = vectors / "roots"
    for kind, name in (
        ("ark", f"canonical_ARK-{product}.pem"),
        ("vcek", f"canonical_SEV-{product}.pem"),
        ("vlek", f"canonical_SEV-VLEK-{product}.pem"),
    ):
        published = x509.load_pem_x509_certificate((roots / name).read_bytes()).public_bytes(Encoding.DER)
        shipped = x509.load_pem_x509_certificate(AMD_CERTIFICATES[(product, kind)].encode()).public_bytes(Encoding.DER)
        assert shipped == published, (product, kind)


def test_builtin_chain_order_and_unknown_product() -> None:
    chain = builtin_chain("Genoa", "vlek")
    assert chain is not None
    inter, ark = x509.load_pem_x509_certificates(chain)
    assert "SEV-VLEK-Genoa" in inter.subject.rfc4514_string() and ark.subject == ark.issuer
    assert builtin_chain("Naples") is None


def test_milan_vcek_alone_verifies(vectors: Path) -> None:
    d = vectors / "sev-snp" / "milan-vcek"
    ev = SnpEvidence((d / "report.bin").read_bytes(), (d / "vcek.der").read_bytes())  # no chain at all
    v = snp_verdict(ev, as_of=IN_WINDOW)
    assert v.accepted, v
    chain = next(c for c in v.checks if c.name == "certificate chain")
    assert "AMD's, shipped with Veil" in chain.result and "ARK-Milan" in chain.result


def test_turin_vcek_alone_chains(vectors: Path) -> None:
    r = verify_vcek_chain((vectors / "sev-snp" / "turin-vcek-chain" / "vcek.der").read_bytes(), None, as_of=IN_WINDOW)
    assert r.product == "Turin" and r.key_kind == "vcek" and not r.simulated
