"""Collateral that evidence does not carry, kept where verifiers can read it offline.

Verifiers take a ``CollateralSource`` (``VerifyOptions.collateral``): they ask it for the CRL, the
VCEK or the Intel PCS collateral they need and refuse when it has none. ``CollateralCache`` is the
on-disk source that `veil collateral fetch` fills (only with collateral that verified) and that a
coordinator or worker reads to attach collateral to its evidence, so clients verify offline.

Layout (root: ``$VEIL_COLLATERAL_DIR`` or ``~/.cache/veil/collateral``)::

    amd/<Product>/vcek/cert_chain.pem        ASK + ARK
    amd/<Product>/vcek/crl.der               ARK-signed CRL
    amd/<Product>/vlek/cert_chain.pem        ASVK + ARK
    amd/<Product>/vlek/crl.der
    amd/<Product>/vcek/<hwid hex>/<tcb>.der  one VCEK per chip and TCB, tcb = "bl3-tee0-snp8-ucode115[-fmc0]"
    intel/tdx/<fmspc>/collateral.json        Intel PCS collateral (the nine PCS fields) for one FMSPC
    nvidia/rims/<RIM id>.swidtag             NVIDIA RIMs (NV_GPU_DRIVER_GH100_550.90.07, NV_GPU_VBIOS_...)
    nvidia/ocsp/<SHA-256 of the cert>.der    a signed OCSP response for one NVIDIA-issued certificate

Writes are atomic (temp file + rename). The host owns this disk: nothing read from it is trusted
without the signatures and times the verifiers check.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from veil.errors import ParseError, VeilError

if TYPE_CHECKING:
    from veil.attest.snp.abi import Report, TcbVersion

MAX_COLLATERAL_BYTES = 16 << 20  # collateral is kilobytes; refuse to slurp a huge planted file


class CollateralSource(Protocol):
    """Where a verifier gets collateral the evidence lacks (None: not available)."""

    def read_crl(self, product: str, kind: str = "vcek") -> bytes | None: ...

    def read_vcek(self, product: str, chip_id: bytes, tcb: TcbVersion) -> bytes | None: ...

    def read_tdx(self, fmspc: str) -> dict[str, Any] | None: ...


def default_cache_dir() -> Path:
    env = os.environ.get("VEIL_COLLATERAL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "veil" / "collateral"


def _fmspc(fmspc: str) -> str:
    value = fmspc.lower()
    if len(value) != 12 or any(c not in "0123456789abcdef" for c in value):
        raise ParseError("tdx.collateral_malformed", f"FMSPC {fmspc!r} is not 6 bytes of hex")
    return value


class CollateralCache:
    """A directory of AMD and Intel collateral (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    # ---- AMD ---------------------------------------------------------------------------------
    def _dir(self, product: str, kind: str) -> Path:
        from veil.attest.snp.kds import check_product

        check_product(product, kind)
        return self.root / "amd" / product / kind

    def cert_chain_path(self, product: str, kind: str = "vcek") -> Path:
        return self._dir(product, kind) / "cert_chain.pem"

    def crl_path(self, product: str, kind: str = "vcek") -> Path:
        return self._dir(product, kind) / "crl.der"

    def vcek_path(self, product: str, chip_id: bytes, tcb: TcbVersion) -> Path:
        from veil.attest.snp.kds import hwid_for, tcb_key

        return self._dir(product, "vcek") / hwid_for(product, chip_id) / f"{tcb_key(tcb)}.der"

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

    # ---- Intel -------------------------------------------------------------------------------
    def tdx_path(self, fmspc: str) -> Path:
        return self.root / "intel" / "tdx" / _fmspc(fmspc) / "collateral.json"

    def read_tdx(self, fmspc: str) -> dict[str, Any] | None:
        raw = self._read(self.tdx_path(fmspc))
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ParseError("tdx.collateral_malformed", f"{self.tdx_path(fmspc)} is not JSON") from None
        if not isinstance(value, dict):
            raise ParseError("tdx.collateral_malformed", "cached TDX collateral is not a JSON object")
        return value

    def write_tdx(self, fmspc: str, collateral: dict[str, Any]) -> Path:
        return self._write(self.tdx_path(fmspc), json.dumps(collateral, indent=1).encode())

    # ---- NVIDIA ------------------------------------------------------------------------------
    def rim_path(self, rim_id: str) -> Path:
        if not rim_id or any(c not in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-" for c in rim_id):
            raise ParseError("nvidia.rim_malformed", f"RIM id {rim_id!r} is not a plain name")
        return self.root / "nvidia" / "rims" / f"{rim_id}.swidtag"

    def read_rim(self, rim_id: str) -> bytes | None:
        return self._read(self.rim_path(rim_id))

    def write_rim(self, rim_id: str, xml: bytes) -> Path:
        return self._write(self.rim_path(rim_id), xml)

    def ocsp_path(self, cert_sha256: str) -> Path:
        if len(cert_sha256) != 64 or any(c not in "0123456789abcdef" for c in cert_sha256):
            raise ParseError("nvidia.ocsp_malformed", "a certificate fingerprint is 32 bytes of lower-case hex")
        return self.root / "nvidia" / "ocsp" / f"{cert_sha256}.der"

    def read_ocsp(self, cert_sha256: str) -> bytes | None:
        return self._read(self.ocsp_path(cert_sha256))

    def write_ocsp(self, cert_sha256: str, der: bytes) -> Path:
        return self._write(self.ocsp_path(cert_sha256), der)

    # ---- files -------------------------------------------------------------------------------
    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            if path.stat().st_size > MAX_COLLATERAL_BYTES:
                raise ParseError("collateral.too_large", f"{path} is too large to be collateral")
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


def find_cached_vcek(report: Report, cache: CollateralSource, product: str | None = None) -> tuple[str, bytes] | None:
    """(product, VCEK DER) cached for this report's chip and reported TCB, trying each product
    when the report (v2) does not say which it is."""
    from veil.attest.snp.abi import PRODUCTS, TcbVersion

    products = [product] if product else ([report.product] if report.product else list(PRODUCTS))
    for p in products:
        try:
            der = cache.read_vcek(p, report.chip_id, TcbVersion.decode(report.reported_tcb, p))
        except VeilError:
            continue
        if der is not None:
            return p, der
    return None
