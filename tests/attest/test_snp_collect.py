"""Report collection protocol, against a fake configfs-tsm tree and a fake /dev/sev-guest ioctl.

The fake "kernel" answers with simulated reports; nothing here has touched real hardware.
"""

from __future__ import annotations

import dataclasses

import ctypes
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from veil.attest.sim import SimPlatform
from attest_verdicts import snp_verdict
from veil.attest.collateral import CollateralCache
from veil.attest.snp import SnpPolicy, kds
from veil.attest.trust import TrustRoots
from veil.attest.snp import collect
from veil.attest.snp.abi import TcbVersion, parse_report
from veil.errors import ParseError, ProtocolError

MEASUREMENT = bytes(range(48))


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.create(tmp_path_factory.mktemp("sim"))


class FakeKernel(collect.ConfigfsTsm):
    """A configfs-tsm report tree in tmp_path; writes bump ``generation``, outblob comes from the sim."""

    def __init__(self, root: Path, sim: SimPlatform, provider: str = "sev_guest", aux: bytes = b"") -> None:
        super().__init__(root)
        self.sim, self.provider, self.aux = sim, provider, aux
        self.log: list[tuple[str, str]] = []
        self.entries: list[Path] = []
        self.race = False

    def make_entry(self) -> Path:
        entry = super().make_entry()
        self.entries.append(entry)
        (entry / "generation").write_text("0\n")
        (entry / "provider").write_text(self.provider + "\n")
        (entry / "auxblob").write_bytes(self.aux)
        self.log.append(("mkdir", entry.name))
        return entry

    def write_attr(self, entry: Path, name: str, data: bytes) -> None:
        super().write_attr(entry, name, data)
        gen = int((entry / "generation").read_text()) + 1 + (1 if self.race else 0)
        (entry / "generation").write_text(f"{gen}\n")
        self.log.append(("write", name))

    def read_attr(self, entry: Path, name: str) -> bytes:
        self.log.append(("read", name))
        if name == "outblob":
            inblob = (entry / "inblob").read_bytes()
            assert len(inblob) == 64
            vmpl = int((entry / "privlevel").read_text()) if (entry / "privlevel").exists() else 0
            return self.sim.attest(inblob, measurement=MEASUREMENT, vmpl=vmpl).report
        return super().read_attr(entry, name)

    def remove_entry(self, entry: Path) -> None:
        for f in entry.iterdir():
            f.unlink()
        entry.rmdir()
        self.log.append(("rmdir", entry.name))


def test_configfs_protocol(tmp_path: Path, sim: SimPlatform) -> None:
    fake = FakeKernel(tmp_path, sim)
    got = fake.get_report(b"nonce", vmpl=1)
    assert got.source == "configfs-tsm" and got.provider == "sev_guest"
    r = parse_report(got.report)
    assert r.report_data == b"nonce".ljust(64, b"\0") and r.vmpl == 1
    ops = [op for op in fake.log]
    assert ops[0][0] == "mkdir" and ops[-1][0] == "rmdir"
    assert ops.index(("write", "privlevel")) < ops.index(("write", "inblob")) < ops.index(("read", "outblob"))
    assert not any(tmp_path.iterdir())  # entry removed


def test_configfs_report_verifies(tmp_path: Path, sim: SimPlatform) -> None:
    aux = collect.build_cert_table(
        {
            "vcek": sim.vcek_der,
            "ask": sim.ask.public_bytes(serialization.Encoding.DER),
            "ark": sim.ark.public_bytes(serialization.Encoding.DER),
            "crl": sim.current_crl(),
        }
    )
    got = collect.get_report(b"k" * 64, tsm=FakeKernel(tmp_path, sim, aux=aux), device=tmp_path / "none")
    assert set(got.certificates) == {"vcek", "ask", "ark", "crl"}
    ev = collect.to_evidence(got, cache=CollateralCache(tmp_path / "cache"))
    v = snp_verdict(
        ev, SnpPolicy(), trust=TrustRoots.production().with_simulation(sim.root_fingerprint), expected_report_data=b"k" * 64
    )
    assert v.accepted and v.claims and v.claims.simulated


def test_to_evidence_from_cache(tmp_path: Path, sim: SimPlatform) -> None:
    (tmp_path / "tsm").mkdir()
    got = FakeKernel(tmp_path / "tsm", sim).get_report(b"x")
    cache = CollateralCache(tmp_path / "cache")
    with pytest.raises(ProtocolError) as err:
        collect.to_evidence(got, cache=cache)
    assert err.value.reason == "snp.collateral_missing"
    report = parse_report(got.report)
    cache.write_vcek("Milan", report.chip_id, TcbVersion.decode(report.reported_tcb, "Milan"), sim.vcek_der)
    with pytest.raises(ProtocolError) as err:  # a VCEK but no CRL: clients could not check revocation
        collect.to_evidence(got, cache=cache)
    assert err.value.reason == "snp.collateral_missing" and "CRL" in err.value.message
    cache.write_crl("Milan", sim.current_crl())
    ev = collect.to_evidence(got, cache=cache)
    assert ev.chain_pem == b""  # the host sent no chain: the verifier uses the (here: simulated) root's
    assert snp_verdict(
        dataclasses.replace(ev, chain_pem=sim.chain_pem), trust=TrustRoots.production().with_simulation(sim.root_fingerprint)
    ).accepted


def test_configfs_race_and_provider(tmp_path: Path, sim: SimPlatform) -> None:
    fake = FakeKernel(tmp_path / "a", sim)
    (tmp_path / "a").mkdir()
    fake.race = True
    with pytest.raises(ProtocolError) as err:
        fake.get_report(b"x")
    assert err.value.reason == "snp.collect_race"
    (tmp_path / "b").mkdir()
    with pytest.raises(ProtocolError) as err:
        FakeKernel(tmp_path / "b", sim, provider="tdx_guest").get_report(b"x")
    assert err.value.reason == "snp.collect_wrong_provider"


def test_report_data_too_long(tmp_path: Path, sim: SimPlatform) -> None:
    with pytest.raises(ParseError):
        FakeKernel(tmp_path, sim).get_report(b"x" * 65)


def test_nothing_available(tmp_path: Path) -> None:
    with pytest.raises(ProtocolError) as err:
        collect.get_report(b"x", tsm_root=tmp_path / "none", device=tmp_path / "sev-guest")
    assert err.value.reason == "snp.collect_unavailable"


def test_sev_guest_ioctl(tmp_path: Path, sim: SimPlatform) -> None:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")
    calls: list[int] = []

    def fake_ioctl(fd: int, request: int, arg: Any) -> int:
        calls.append(request)
        version, req_addr, resp_addr, _ = struct.unpack_from("<B7xQQQ", arg, 0)
        assert version == 1
        user_data = ctypes.string_at(req_addr, 64)
        vmpl = struct.unpack("<I", ctypes.string_at(req_addr + 64, 4))[0]
        report = sim.attest(user_data, measurement=MEASUREMENT, vmpl=vmpl).report
        resp = struct.pack("<II24x", 0, len(report)) + report
        ctypes.memmove(resp_addr, resp, len(resp))
        return 0

    got = collect.get_report(b"abc", vmpl=2, tsm_root=tmp_path / "no-tsm", device=device, ioctl=fake_ioctl)
    assert calls == [0xC0205300]  # _IOWR('S', 0, struct snp_guest_request_ioctl)
    assert got.source == "sev-guest" and got.certificates == {}
    r = parse_report(got.report)
    assert r.report_data[:3] == b"abc" and r.vmpl == 2


def test_sev_guest_errors(tmp_path: Path) -> None:
    device = tmp_path / "sev-guest"
    device.write_bytes(b"")

    def failing(fd: int, request: int, arg: Any) -> int:
        struct.pack_into("<Q", arg, 24, 0x1234)
        raise OSError(5, "Input/output error")

    with pytest.raises(ProtocolError) as err:
        collect.get_report_sev_guest(b"x", device=device, ioctl=failing)
    assert "0x1234" in err.value.message

    def bad_status(fd: int, request: int, arg: Any) -> int:
        resp_addr = struct.unpack_from("<Q", arg, 16)[0]
        ctypes.memmove(resp_addr, struct.pack("<II", 0x16, 0), 8)
        return 0

    with pytest.raises(Exception) as err2:
        collect.get_report_sev_guest(b"x", device=device, ioctl=bad_status)
    assert getattr(err2.value, "reason", "") == "snp.collect_failed"


def test_cert_table() -> None:
    table = collect.build_cert_table({"vcek": b"A" * 10, "ask": b"B" * 3, "crl": b"C"})
    assert collect.parse_cert_table(table) == {"vcek": b"A" * 10, "ask": b"B" * 3, "crl": b"C"}
    assert collect.parse_cert_table(bytes(24)) == {}
    for bad in (b"", table[:30], table[:24] + b"\xff" * 24):
        with pytest.raises(ParseError):
            collect.parse_cert_table(bad)


def test_collect_evidence_one_call(tmp_path: Path, sim: SimPlatform) -> None:
    aux = collect.build_cert_table(
        {
            "vcek": sim.vcek_der,
            "ask": sim.ask.public_bytes(serialization.Encoding.DER),
            "ark": sim.ark.public_bytes(serialization.Encoding.DER),
            "crl": sim.issue_crl([]),
        }
    )
    ev = collect.collect_evidence(b"rd", tsm=FakeKernel(tmp_path, sim, aux=aux), cache=CollateralCache(tmp_path / "c"))
    assert ev.crl is not None
    trust = TrustRoots.production().with_simulation(sim.root_fingerprint)
    assert snp_verdict(ev, trust=trust, expected_report_data=b"rd".ljust(64, b"\0")).accepted
