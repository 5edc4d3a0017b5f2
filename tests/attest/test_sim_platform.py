"""The SIMULATED SEV-SNP platform: real layout, real chain shape, same verifier, clearly labelled."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.attest.sim import SimPlatform, measure_code
from attest_verdicts import snp_verdict
from veil.attest.snp import SnpEvidence, SnpPolicy
from veil.attest.snp.validate import MinimumTcb
from veil.attest.trust import TrustRoots
from veil.attest.snp.abi import REPORT_SIZE, TcbVersion, parse_report
from veil.attest.snp.verify import vcek_extensions
from veil.errors import ParseError


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.create(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def trust(sim: SimPlatform) -> TrustRoots:
    return TrustRoots.production().with_simulation(sim.root_fingerprint)


def test_round_trip(sim: SimPlatform, trust: TrustRoots) -> None:
    m = measure_code()
    ev = sim.attest(b"nonce-and-key", measurement=m, host_data=b"\x07" * 32)
    assert len(ev.report) == REPORT_SIZE
    v = snp_verdict(
        ev,
        SnpPolicy(measurements=[m.hex()], host_data=["07" * 32]),
        trust=trust,
        expected_report_data=b"nonce-and-key".ljust(64, b"\0"),
    )
    assert v.accepted, v
    c = v.claims
    assert c and c.platform == "sim-snp" and c.simulated and c.measurement == m.hex()
    assert "SIMULATED" in v.message and "SIMULATED" in c.details["notice"]
    assert c.tcb == sim.tcb.to_json()
    # the wire form carries it intact
    assert snp_verdict(SnpEvidence.from_json(ev.to_json()), trust=trust).accepted


def test_report_layout(sim: SimPlatform) -> None:
    r = parse_report(sim.attest(b"x", measurement=bytes(48)).report)
    assert r.version == 3 and r.product == "Milan" and r.chip_id == sim.chip_id
    assert r.reported_tcb == r.current_tcb == sim.tcb.encode()
    assert r.policy == 0x30000 and not r.debug
    v2 = parse_report(sim.attest(b"x", measurement=bytes(48), version=2).report)
    assert v2.version == 2 and v2.product is None


def test_v2_report_verifies(sim: SimPlatform, trust: TrustRoots) -> None:
    assert snp_verdict(sim.attest(b"x", measurement=bytes(48), version=2), trust=trust).accepted


def test_debug_and_vmpl(sim: SimPlatform, trust: TrustRoots) -> None:
    dbg = sim.attest(b"x", measurement=bytes(48), debug=True)
    assert snp_verdict(dbg, trust=trust).reason == "snp.debug_guest"
    assert snp_verdict(dbg, SnpPolicy(allow_debug=True), trust=trust).accepted
    assert snp_verdict(sim.attest(b"x", measurement=bytes(48), vmpl=1), trust=trust).reason == "snp.vmpl_too_high"


def test_refused_without_trust(sim: SimPlatform) -> None:
    v = snp_verdict(sim.attest(b"x", measurement=bytes(48)))
    assert v.reason == "snp.untrusted_root" and "SIMULATED TEE" in v.message


def test_chain_looks_like_amds(sim: SimPlatform) -> None:
    assert "SIMULATED" in sim.ark.subject.rfc4514_string()
    assert "SIMULATED" in sim.ask.subject.rfc4514_string()
    assert "SIMULATED" in sim.vcek.subject.rfc4514_string()
    ext = vcek_extensions(sim.vcek)
    assert ext["product_name"] == "Milan-B0" and ext["hwid"] == sim.chip_id
    assert (ext["bootloader"], ext["tee"], ext["snp"], ext["microcode"]) == (
        sim.tcb.bootloader,
        sim.tcb.tee,
        sim.tcb.snp,
        sim.tcb.microcode,
    )
    assert sim.ark.public_key().key_size == 4096 and sim.ask.public_key().key_size == 4096  # type: ignore[union-attr]


def test_persistence(sim: SimPlatform, trust: TrustRoots) -> None:
    for f in sim.directory.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(sim.directory.stat().st_mode) == 0o700
    again = SimPlatform.load(sim.directory)
    assert again.root_fingerprint == sim.root_fingerprint and again.chip_id == sim.chip_id
    assert snp_verdict(again.attest(b"y", measurement=bytes(48)), trust=trust).accepted
    assert SimPlatform.load_or_create(sim.directory).root_fingerprint == sim.root_fingerprint


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(ParseError) as err:
        SimPlatform.load(tmp_path)
    assert err.value.reason == "sim.missing_platform"


def test_custom_tcb(tmp_path: Path) -> None:
    p = SimPlatform.create(tmp_path, tcb=TcbVersion(1, 2, 3, 4))
    trust = TrustRoots.production().with_simulation(p.root_fingerprint)
    ev = p.attest(b"", measurement=bytes(48))
    assert snp_verdict(ev, trust=trust).reason == "snp.tcb_too_old"  # below Milan's production floor
    v = snp_verdict(ev, SnpPolicy(minimum_tcb=MinimumTcb(bootloader=1, snp=3, microcode=4)), trust=trust)
    assert v.accepted and v.claims and v.claims.tcb == {"bootloader": 1, "tee": 2, "snp": 3, "microcode": 4}


@pytest.mark.parametrize(
    "kw",
    [{"measurement": bytes(47)}, {"measurement": bytes(48), "host_data": bytes(31)}],
)
def test_bad_inputs(sim: SimPlatform, kw: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ParseError):
        sim.attest(b"", **kw)
    with pytest.raises(ParseError):
        sim.attest(b"x" * 65, measurement=bytes(48))


def test_measure_code(tmp_path: Path) -> None:
    assert measure_code() == measure_code() and len(measure_code()) == 48
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("ignored")
    first = measure_code(tmp_path)
    (tmp_path / "notes.txt").write_text("still ignored")
    assert measure_code(tmp_path) == first
    (tmp_path / "sub" / "b.py").write_text("y = 3\n")
    assert measure_code(tmp_path) != first
    (tmp_path / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "sub" / "b.py").rename(tmp_path / "b.py")  # same content, other path
    assert measure_code(tmp_path) != first


_fuzz = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_fuzz
@given(st.integers(0, REPORT_SIZE - 1), st.integers(1, 255))
def test_tampered_sim_report_never_accepted(sim: SimPlatform, trust: TrustRoots, pos: int, xor: int) -> None:
    ev = sim.attest(b"fuzz", measurement=bytes(48))
    raw = bytearray(ev.report)
    raw[pos] ^= xor
    v = snp_verdict(dataclasses.replace(ev, report=bytes(raw)), trust=trust)
    assert not v.accepted
    assert v.reason in (
        "snp.report_signature_invalid",
        "snp.malformed_report",
        "snp.tcb_mismatch",
        "snp.hwid_mismatch",
        "snp.product_mismatch",
        "snp.signing_key_mismatch",
        "snp.unsupported_signature_algo",
        "snp.report_unsigned",
    )


@pytest.mark.parametrize("product", ["Genoa", "Turin"])
def test_other_products(tmp_path: Path, product: str) -> None:
    p = SimPlatform.create(tmp_path, product=product)
    trust = TrustRoots.production().with_simulation(p.root_fingerprint)
    ev = p.attest(b"t", measurement=bytes(48))
    r = parse_report(ev.report)
    assert r.product == product
    v = snp_verdict(ev, trust=trust)
    assert v.accepted, v
    assert v.claims and v.claims.details["product"] == product
    if product == "Turin":
        ext = vcek_extensions(p.vcek)
        assert len(ext["hwid"]) == 8 and ext["fmc"] == p.tcb.fmc
        assert v.claims.tcb == p.tcb.to_json() and "fmc" in v.claims.tcb
        # a v2 report has no CPUID: the chain says Turin and the Turin TCB layout still applies
        assert snp_verdict(p.attest(b"t", measurement=bytes(48), version=2), trust=trust).accepted
        # fmc is certified too
        bad = dataclasses.replace(r, reported_tcb=dataclasses.replace(p.tcb, fmc=1).encode())
        v = snp_verdict(dataclasses.replace(ev, report=p.sign_report(bad)), trust=trust)
        assert v.reason == "snp.tcb_mismatch" and "fmc" in v.message
        # only the first 8 bytes are the Turin hwID
        other = dataclasses.replace(r, chip_id=b"\x01" + r.chip_id[1:])
        assert snp_verdict(dataclasses.replace(ev, report=p.sign_report(other)), trust=trust).reason == "snp.hwid_mismatch"
    assert SimPlatform.load(tmp_path).product == product


def test_bad_product(tmp_path: Path) -> None:
    with pytest.raises(ParseError):
        SimPlatform.create(tmp_path, product="Naples")
    with pytest.raises(ParseError):
        SimPlatform.create(tmp_path, product="Turin", tcb=TcbVersion(1, 2, 3, 4))
