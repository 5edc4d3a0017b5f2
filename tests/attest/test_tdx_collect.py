"""TDX collection through configfs-tsm on a fake kernel tree (no TDX hardware here), and the
TdxAttester pairing the quote with the cached PCS collateral: evidence that verifies offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from veil.attest import api
from veil.attest.api import Binding, VerifyOptions
from veil.attest.attester import TdxAttester
from veil.attest.collateral import CollateralCache
from veil.attest.sim.tdx import SimTdxPlatform
from veil.attest.tdx.collect import collect_quote, fmspc_of
from veil.attest.trust import TrustRoots
from veil.attest.tsm import ConfigfsTsm
from veil.errors import ProtocolError


class FakeTdxKernel(ConfigfsTsm):
    """A configfs-tsm tree in tmp_path: writes bump ``generation``; outblob is a quote the
    (simulated) TDX module makes over what was written to inblob."""

    def __init__(self, root: Path, sim: SimTdxPlatform, provider: str = "tdx_guest", race: bool = False) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root)
        self.sim, self.provider, self.race = sim, provider, race
        self.log: list[str] = []

    def make_entry(self) -> Path:
        entry = super().make_entry()
        (entry / "generation").write_text("0\n")
        (entry / "provider").write_text(self.provider + "\n")
        self.log.append("mkdir")
        return entry

    def write_attr(self, entry: Path, name: str, data: bytes) -> None:
        super().write_attr(entry, name, data)
        gen = int((entry / "generation").read_text()) + (2 if self.race else 1)
        (entry / "generation").write_text(f"{gen}\n")
        self.log.append(f"write {name}")

    def read_attr(self, entry: Path, name: str) -> bytes:
        if name == "outblob":
            inblob = (entry / "inblob").read_bytes()
            assert len(inblob) == 64
            return self.sim.quote(inblob, mr_td=b"\x01" * 48)
        return super().read_attr(entry, name)

    def remove_entry(self, entry: Path) -> None:
        for f in entry.iterdir():
            f.unlink()
        entry.rmdir()
        self.log.append("rmdir")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimTdxPlatform:
    return SimTdxPlatform.create(tmp_path_factory.mktemp("sim-tdx-collect"))


def test_collect_writes_inblob_and_reads_the_quote(tmp_path: Path, sim: SimTdxPlatform) -> None:
    kernel = FakeTdxKernel(tmp_path / "report", sim)
    quote = collect_quote(b"\x07" * 64, tsm=kernel)
    assert quote[:2] == b"\x04\x00" and kernel.log == ["mkdir", "write inblob", "rmdir"]
    assert fmspc_of(quote) == sim.fmspc.hex()


@pytest.mark.parametrize(
    ("kernel_kw", "reason"),
    [
        ({"provider": "sev_guest"}, "tdx.collect_wrong_provider"),
        ({"race": True}, "tdx.collect_race"),
    ],
)
def test_refusals(tmp_path: Path, sim: SimTdxPlatform, kernel_kw: dict, reason: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ProtocolError) as e:
        collect_quote(bytes(64), tsm=FakeTdxKernel(tmp_path / "report", sim, **kernel_kw))
    assert e.value.reason == reason


def test_no_configfs_and_bad_size(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as e:
        collect_quote(bytes(64), tsm=ConfigfsTsm(tmp_path / "none"))
    assert e.value.reason == "tdx.collect_unavailable"
    with pytest.raises(ProtocolError):
        collect_quote(bytes(32), tsm=ConfigfsTsm(tmp_path))


def test_attester_serves_quote_and_cached_collateral(tmp_path: Path, sim: SimTdxPlatform) -> None:
    cache = CollateralCache(tmp_path / "cache")
    attester = TdxAttester(cache.root, tsm=FakeTdxKernel(tmp_path / "report", sim))
    with pytest.raises(ProtocolError) as e:  # nothing cached yet: no evidence leaves without collateral
        attester.evidence(b"r" * 64)
    assert e.value.reason == "tdx.collateral_missing"
    cache.write_tdx(sim.fmspc.hex(), sim.current_collateral())
    evidence = attester.evidence(b"r" * 64)
    assert evidence["platform"] == "tdx"
    # the same bytes, verified: they chain to the simulated root, so they verify as sim-tdx only
    trust = TrustRoots.production().with_simulation(sim.root_fingerprint)
    options = VerifyOptions(Binding.to(b"r" * 64), trust)
    with pytest.raises(Exception) as mismatch:
        api.verify(evidence, options)
    assert getattr(mismatch.value, "reason", "") == "evidence.platform_mismatch"
    assert api.verify({**evidence, "platform": "sim-tdx"}, options).claims.platform == "sim-tdx"


def test_tdx_has_no_sealing_key(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as e:
        TdxAttester(tmp_path).sealing_key()
    assert e.value.reason == "sealing.unavailable"
