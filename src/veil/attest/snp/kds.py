"""AMD Key Distribution Service (KDS): URLs for VCEKs, chains and CRLs, and an offline cache.

Veil's clients never wait on AMD: the coordinator fetches collateral once, caches it, and serves
it with its evidence. This module builds the KDS URLs (AMD's "VCEK Certificate and KDS Interface
Specification") and keeps a plain directory cache so verification works offline.

Cache layout (root defaults to ``$VEIL_COLLATERAL_DIR`` or ``~/.cache/veil/collateral``)::

    amd/<Product>/vcek/cert_chain.pem        ASK + ARK
    amd/<Product>/vcek/crl.der               ARK-signed CRL
    amd/<Product>/vlek/cert_chain.pem        ASVK + ARK
    amd/<Product>/vlek/crl.der
    amd/<Product>/vcek/<hwid hex>/<tcb>.der  one VCEK per chip and TCB, tcb = "bl3-tee0-snp8-ucode115[-fmc0]"
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from veil.attest.snp.abi import PRODUCTS, TURIN, Report, TcbVersion
from veil.errors import ParseError, VeilError, VerificationError

KDS_BASE = "https://kdsintf.amd.com"
KEY_KINDS = ("vcek", "vlek")


def _check(product: str, kind: str = "vcek") -> None:
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
    _check(product)
    params = [("blSPL", tcb.bootloader), ("teeSPL", tcb.tee), ("snpSPL", tcb.snp), ("ucodeSPL", tcb.microcode)]
    if product == TURIN:
        if tcb.fmc is None:
            raise ParseError("snp.malformed_report", "a Turin VCEK URL needs the fmc SPL")
        params.insert(0, ("fmcSPL", tcb.fmc))
    query = "&".join(f"{k}={v}" for k, v in params)
    return f"{base}/vcek/v1/{product}/{hwid_for(product, chip_id)}?{query}"


def cert_chain_url(product: str, kind: str = "vcek", base: str = KDS_BASE) -> str:
    """ASK+ARK (vcek) or ASVK+ARK (vlek) chain, PEM."""
    _check(product, kind)
    return f"{base}/{kind}/v1/{product}/cert_chain"


def crl_url(product: str, kind: str = "vcek", base: str = KDS_BASE) -> str:
    """The ARK-signed CRL, DER."""
    _check(product, kind)
    return f"{base}/{kind}/v1/{product}/crl"


def tcb_key(tcb: TcbVersion) -> str:
    key = f"bl{tcb.bootloader}-tee{tcb.tee}-snp{tcb.snp}-ucode{tcb.microcode}"
    return key + (f"-fmc{tcb.fmc}" if tcb.fmc is not None else "")


def default_cache_dir() -> Path:
    env = os.environ.get("VEIL_COLLATERAL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "veil" / "collateral"


class CollateralCache:
    """A directory of AMD collateral, readable offline. Writes are atomic (temp file + rename)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def _dir(self, product: str, kind: str) -> Path:
        _check(product, kind)
        return self.root / "amd" / product / kind

    def cert_chain_path(self, product: str, kind: str = "vcek") -> Path:
        return self._dir(product, kind) / "cert_chain.pem"

    def crl_path(self, product: str, kind: str = "vcek") -> Path:
        return self._dir(product, kind) / "crl.der"

    def vcek_path(self, product: str, chip_id: bytes, tcb: TcbVersion) -> Path:
        return self._dir(product, "vcek") / hwid_for(product, chip_id) / f"{tcb_key(tcb)}.der"

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    @staticmethod
    def _write(path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def read_cert_chain(self, product: str, kind: str = "vcek") -> bytes | None:
        return self._read(self.cert_chain_path(product, kind))

    def write_cert_chain(self, product: str, pem: bytes, kind: str = "vcek") -> Path:
        return self._write(self.cert_chain_path(product, kind), pem)

    def read_crl(self, product: str, kind: str = "vcek") -> bytes | None:
        return self._read(self.crl_path(product, kind))

    def write_crl(self, product: str, der: bytes, kind: str = "vcek") -> Path:
        return self._write(self.crl_path(product, kind), der)

    def read_vcek(self, product: str, chip_id: bytes, tcb: TcbVersion) -> bytes | None:
        return self._read(self.vcek_path(product, chip_id, tcb))

    def write_vcek(self, product: str, chip_id: bytes, tcb: TcbVersion, der: bytes) -> Path:
        return self._write(self.vcek_path(product, chip_id, tcb), der)


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


def fetch_collateral(
    product: str,
    chip_id: bytes,
    tcb: TcbVersion,
    cache: CollateralCache | None = None,
    *,
    client: Any = None,
    base: str = KDS_BASE,
) -> tuple[bytes, bytes, bytes]:
    """(VCEK DER, ASK+ARK PEM, CRL DER), from the cache when present, else from KDS (then cached)."""
    cache = cache or CollateralCache()
    vcek = cache.read_vcek(product, chip_id, tcb)
    if vcek is None:
        vcek = fetch(vcek_url(product, chip_id, tcb, base), client=client)
        cache.write_vcek(product, chip_id, tcb, vcek)
    chain = cache.read_cert_chain(product)
    if chain is None:
        chain = fetch(cert_chain_url(product, base=base), client=client)
        cache.write_cert_chain(product, chain)
    crl = cache.read_crl(product)
    if crl is None:
        crl = fetch(crl_url(product, base=base), client=client)
        cache.write_crl(product, crl)
    return vcek, chain, crl


def find_cached_vcek(report: Report, cache: CollateralCache,
                     product: str | None = None) -> tuple[str, bytes] | None:
    """(product, VCEK DER) cached for this report's chip and reported TCB, trying each product
    when the report (v2) does not say which it is."""
    products = [product] if product else ([report.product] if report.product else list(PRODUCTS))
    for p in products:
        try:
            tcb = TcbVersion.decode(report.reported_tcb, p)
            der = cache.read_vcek(p, report.chip_id, tcb)
        except VeilError:
            continue
        if der is not None:
            return p, der
    return None
