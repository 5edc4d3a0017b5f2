"""AMD KDS URL building and the offline collateral cache (no network in tests)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from veil.attest.collateral import CollateralCache
from veil.attest.snp import kds
from veil.attest.snp.abi import TcbVersion
from veil.errors import ParseError, VerificationError

CHIP = bytes(range(64))


def test_vcek_url_milan() -> None:
    url = kds.vcek_url("Milan", CHIP, TcbVersion(3, 0, 8, 115))
    assert url == (f"https://kdsintf.amd.com/vcek/v1/Milan/{CHIP.hex()}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115")


def test_vcek_url_turin_uses_8_byte_hwid_and_fmc() -> None:
    url = kds.vcek_url("Turin", CHIP, TcbVersion(1, 2, 3, 4, fmc=5))
    assert url == f"https://kdsintf.amd.com/vcek/v1/Turin/{CHIP[:8].hex()}?fmcSPL=5&blSPL=1&teeSPL=2&snpSPL=3&ucodeSPL=4"
    with pytest.raises(ParseError):
        kds.vcek_url("Turin", CHIP, TcbVersion(1, 2, 3, 4))


def test_chain_and_crl_urls() -> None:
    assert kds.cert_chain_url("Genoa") == "https://kdsintf.amd.com/vcek/v1/Genoa/cert_chain"
    assert kds.cert_chain_url("Genoa", "vlek") == "https://kdsintf.amd.com/vlek/v1/Genoa/cert_chain"
    assert kds.crl_url("Milan") == "https://kdsintf.amd.com/vcek/v1/Milan/crl"
    assert kds.crl_url("Turin", "vlek") == "https://kdsintf.amd.com/vlek/v1/Turin/crl"
    with pytest.raises(ParseError):
        kds.crl_url("Naples")
    with pytest.raises(ParseError):
        kds.crl_url("Milan", "vdek")


def test_cache_round_trip(tmp_path: Path) -> None:
    cache = CollateralCache(tmp_path)
    tcb = TcbVersion(3, 0, 8, 115)
    assert cache.read_vcek("Milan", CHIP, tcb) is None and cache.read_cert_chain("Milan") is None
    p = cache.write_vcek("Milan", CHIP, tcb, b"der")
    assert p == tmp_path / "amd" / "Milan" / "vcek" / CHIP.hex() / "bl3-tee0-snp8-ucode115.der"
    assert cache.read_vcek("Milan", CHIP, tcb) == b"der"
    cache.write_cert_chain("Milan", b"pem")
    cache.write_crl("Milan", b"crl", kind="vlek")
    assert cache.read_cert_chain("Milan") == b"pem"
    assert cache.read_crl("Milan", "vlek") == b"crl" and cache.read_crl("Milan") is None
    assert not list(tmp_path.rglob(".tmp-*"))  # atomic writes leave no temp files


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VEIL_COLLATERAL_DIR", str(tmp_path))
    assert CollateralCache().root == tmp_path
    monkeypatch.delenv("VEIL_COLLATERAL_DIR")
    assert CollateralCache().root == Path.home() / ".cache" / "veil" / "collateral"


def test_fetch_errors() -> None:
    client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(404)))
    with pytest.raises(VerificationError) as err:
        kds.fetch("https://kdsintf.amd.com/vcek/v1/Milan/crl", client=client)
    assert err.value.reason == "snp.kds_unavailable"
