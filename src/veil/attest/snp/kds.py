"""AMD Key Distribution Service (KDS): URLs for VCEKs, chains and CRLs, and an offline cache.

Veil's clients never wait on AMD: the coordinator fetches collateral once, caches it
(:mod:`veil.attest.collateral`), and serves it with its evidence. This module builds the KDS URLs
(AMD's "VCEK Certificate and KDS Interface Specification") and fetches them (online only).
"""

from __future__ import annotations

from typing import Any

from veil.attest.snp.abi import PRODUCTS, TURIN, TcbVersion
from veil.errors import ParseError, VerificationError

KDS_BASE = "https://kdsintf.amd.com"
KEY_KINDS = ("vcek", "vlek")


def check_product(product: str, kind: str = "vcek") -> None:
    if product not in PRODUCTS:
        raise ParseError("snp.unknown_product", f"unknown product {product!r}; expected one of {PRODUCTS}")
    if kind not in KEY_KINDS:
        raise ParseError("snp.unknown_key_kind", f"key kind must be vcek or vlek, not {kind!r}")


def hwid_for(product: str, chip_id: bytes) -> str:
    """The hwID path element: the 64-byte chip_id, or its first 8 bytes on Turin."""
    if len(chip_id) not in (8, 64):
        raise ParseError("snp.malformed_report", "chip_id must be 64 bytes (or an 8-byte Turin hwID)")
    return (chip_id[:8] if product == TURIN else chip_id).hex()


def vcek_url(product: str, chip_id: bytes, tcb: TcbVersion, base: str = KDS_BASE) -> str:
    """``/vcek/v1/{product}/{hwid}?...SPL=..`` for the chip at ``tcb`` (the report's reported_tcb)."""
    check_product(product)
    params = [("blSPL", tcb.bootloader), ("teeSPL", tcb.tee), ("snpSPL", tcb.snp), ("ucodeSPL", tcb.microcode)]
    if product == TURIN:
        if tcb.fmc is None:
            raise ParseError("snp.malformed_report", "a Turin VCEK URL needs the fmc SPL")
        params.insert(0, ("fmcSPL", tcb.fmc))
    query = "&".join(f"{k}={v}" for k, v in params)
    return f"{base}/vcek/v1/{product}/{hwid_for(product, chip_id)}?{query}"


def cert_chain_url(product: str, kind: str = "vcek", base: str = KDS_BASE) -> str:
    """ASK+ARK (vcek) or ASVK+ARK (vlek) chain, PEM."""
    check_product(product, kind)
    return f"{base}/{kind}/v1/{product}/cert_chain"


def crl_url(product: str, kind: str = "vcek", base: str = KDS_BASE) -> str:
    """The ARK-signed CRL, DER."""
    check_product(product, kind)
    return f"{base}/{kind}/v1/{product}/crl"


def tcb_key(tcb: TcbVersion) -> str:
    key = f"bl{tcb.bootloader}-tee{tcb.tee}-snp{tcb.snp}-ucode{tcb.microcode}"
    return key + (f"-fmc{tcb.fmc}" if tcb.fmc is not None else "")


def fetch(url: str, *, client: Any = None, timeout: float = 10.0) -> bytes:
    """GET one KDS resource with httpx (online only; ``client`` injectable for tests)."""
    import httpx

    try:
        if client is None:
            with httpx.Client(timeout=timeout, follow_redirects=True) as c:
                response = c.get(url)
        else:
            response = client.get(url)
    except httpx.HTTPError as exc:
        raise VerificationError("snp.kds_unavailable", f"cannot fetch {url}: {exc}") from None
    if response.status_code != 200:
        raise VerificationError("snp.kds_unavailable", f"{url} answered HTTP {response.status_code}")
    return response.content
