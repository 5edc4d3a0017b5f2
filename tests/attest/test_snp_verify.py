"""SEV-SNP verification against real AMD evidence, and every way it must refuse."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from veil.attest.sim import SimPlatform
from veil.attest.sim.platform import PSS
from attest_verdicts import snp_verdict
from veil.attest.snp import SnpEvidence, SnpPolicy
from veil.attest.snp.validate import MinimumTcb
from veil.attest.trust import TrustRoots
from veil.attest.snp.abi import parse_report
from veil.attest.trust import AMD_ARK_FINGERPRINTS
from veil.attest.snp.verify import (
    AMD_INTERMEDIATE_FINGERPRINTS,
    OID_PRODUCT_NAME,
    fingerprint,
    load_chain,
    verify_vcek_chain,
)
from veil.errors import ParseError, VerificationError

IN_WINDOW = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
MEASUREMENT = "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"


def _evidence(vectors: Path, name: str) -> SnpEvidence:
    d = vectors / "sev-snp" / name
    return SnpEvidence((d / "report.bin").read_bytes(), (d / "vcek.der").read_bytes(), (d / "ask_ark.pem").read_bytes())


@pytest.fixture(scope="module")
def milan(vectors: Path) -> SnpEvidence:
    return _evidence(vectors, "milan-vcek")


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.create(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def sim_trust(sim: SimPlatform) -> TrustRoots:
    return TrustRoots.production().with_simulation(sim.root_fingerprint)


def _reject(verdict, reason: str) -> None:  # type: ignore[no-untyped-def]
    assert not verdict.accepted, verdict
    assert verdict.reason == reason, verdict


# ---- real hardware ---------------------------------------------------------------------------


def test_milan_vcek_accepted(milan: SnpEvidence) -> None:
    v = snp_verdict(milan, SnpPolicy(measurements=[MEASUREMENT]), as_of=IN_WINDOW)
    assert v.accepted, v
    c = v.claims
    assert c is not None
    assert c.platform == "sev-snp" and not c.simulated and not c.debug
    assert c.measurement == MEASUREMENT
    assert c.tcb == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert c.details["firmware"] == "1.52.4" and c.details["product"] == "Milan"
    assert c.details["policy"] == "0x30000" and c.details["vmpl"] == 0


def test_milan_debug_refused_then_allowed(vectors: Path) -> None:
    ev = _evidence(vectors, "milan-debug")
    v = snp_verdict(ev, as_of=IN_WINDOW)
    _reject(v, "snp.debug_guest")
    assert v.claims is not None and v.claims.debug  # genuine: claims are there
    # go-sev-guest's sample comes from pre-production firmware: below the Milan floor as well
    _reject(snp_verdict(ev, SnpPolicy(allow_debug=True), as_of=IN_WINDOW), "snp.tcb_too_old")
    lowered = SnpPolicy(allow_debug=True, minimum_tcb=MinimumTcb(bootloader=2, snp=5, microcode=68))
    ok = snp_verdict(ev, lowered, as_of=IN_WINDOW)
    assert ok.accepted and ok.claims and ok.claims.tcb == {"bootloader": 2, "tee": 0, "snp": 5, "microcode": 68}


def test_turin_chain(vectors: Path) -> None:
    d = vectors / "sev-snp" / "turin-vcek-chain"
    r = verify_vcek_chain((d / "vcek.der").read_bytes(), (d / "ask_ark.pem").read_bytes(), as_of=IN_WINDOW)
    assert r.product == "Turin" and not r.simulated and r.key_kind == "vcek"
    assert r.hwid is not None and len(r.hwid) == 8
    assert "fmc" in r.tcb_extensions
    assert AMD_ARK_FINGERPRINTS[r.root_fingerprint] == "Turin"
    with pytest.raises(VerificationError) as err:
        verify_vcek_chain(
            (d / "vcek.der").read_bytes(),
            (d / "ask_ark.pem").read_bytes(),
            as_of=dt.datetime(2032, 1, 1, tzinfo=dt.timezone.utc),
        )
    assert err.value.reason == "snp.certificate_expired"


def test_pinned_fingerprints_match_roots(vectors: Path) -> None:
    for product in ("Milan", "Genoa", "Turin"):
        (cert,) = load_chain((vectors / "roots" / f"canonical_ARK-{product}.pem").read_bytes())
        assert AMD_ARK_FINGERPRINTS[fingerprint(cert)] == product
        for name, kind in ((f"canonical_SEV-{product}.pem", "ask"), (f"canonical_SEV-VLEK-{product}.pem", "asvk")):
            (inter,) = load_chain((vectors / "roots" / name).read_bytes())
            assert AMD_INTERMEDIATE_FINGERPRINTS[fingerprint(inter)] == (product, kind)


def test_expected_report_data(milan: SnpEvidence) -> None:
    rd = parse_report(milan.report).report_data
    assert snp_verdict(milan, as_of=IN_WINDOW, expected_report_data=rd).accepted
    _reject(snp_verdict(milan, as_of=IN_WINDOW, expected_report_data=bytes(64)), "binding.report_data_mismatch")


# ---- tampering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [0x04, 0x10, 0x38, 0x50, 0x8F, 0x90, 0xC0, 0x140, 0x160, 0x1A0, 0x1E8, 0x1F0, 0x29F])
def test_changed_signed_byte(milan: SnpEvidence, offset: int) -> None:
    raw = bytearray(milan.report)
    raw[offset] ^= 0x01
    v = snp_verdict(dataclasses.replace(milan, report=bytes(raw)), as_of=IN_WINDOW)
    assert not v.accepted
    assert v.reason in ("snp.report_signature_invalid", "snp.malformed_report")


def test_every_signed_byte_matters(milan: SnpEvidence) -> None:
    """Flip each byte of the signed region: nothing verifies (reserved bytes fail to parse)."""
    from veil.attest.snp.abi import parse_report as parse
    from veil.attest.snp.verify import verify_report

    chain = milan.chain_pem
    for offset in range(0, 0x2A0, 7):
        raw = bytearray(milan.report)
        raw[offset] ^= 0x80
        with pytest.raises((ParseError, VerificationError)):
            verify_report(parse(bytes(raw)), milan.vcek, chain, as_of=IN_WINDOW)


def test_changed_signature(milan: SnpEvidence) -> None:
    raw = bytearray(milan.report)
    raw[0x2A0] ^= 0x01
    _reject(snp_verdict(dataclasses.replace(milan, report=bytes(raw)), as_of=IN_WINDOW), "snp.report_signature_invalid")


def test_vcek_of_another_chip(milan: SnpEvidence, vectors: Path) -> None:
    other = (vectors / "sev-snp" / "milan-debug" / "vcek.der").read_bytes()
    _reject(snp_verdict(dataclasses.replace(milan, vcek=other), as_of=IN_WINDOW), "snp.report_signature_invalid")


def test_missing_certificates(milan: SnpEvidence) -> None:
    ask, ark = load_chain(milan.chain_pem)
    only_ark = ark.public_bytes(serialization.Encoding.PEM)
    only_ask = ask.public_bytes(serialization.Encoding.PEM)
    for chain in (only_ark, only_ask):
        _reject(snp_verdict(dataclasses.replace(milan, chain_pem=chain), as_of=IN_WINDOW), "snp.chain_incomplete")
    # no chain at all: AMD's ASK and ARK for the VCEK's product, shipped with Veil
    alone = snp_verdict(dataclasses.replace(milan, chain_pem=b""), as_of=IN_WINDOW)
    assert alone.accepted and any("AMD's, shipped with Veil" in c.result for c in alone.checks)
    _reject(snp_verdict(dataclasses.replace(milan, vcek=b""), as_of=IN_WINDOW), "snp.malformed_certificate")


def test_swapped_order_still_verifies(milan: SnpEvidence) -> None:
    ask, ark = load_chain(milan.chain_pem)
    swapped = ark.public_bytes(serialization.Encoding.PEM) + ask.public_bytes(serialization.Encoding.PEM)
    assert snp_verdict(dataclasses.replace(milan, chain_pem=swapped), as_of=IN_WINDOW).accepted


def test_other_products_chain(milan: SnpEvidence, vectors: Path) -> None:
    """Genoa's ASK+ARK (a real, trusted AMD chain) did not sign a Milan VCEK."""
    roots = vectors / "roots"
    genoa = (roots / "canonical_SEV-Genoa.pem").read_bytes() + (roots / "canonical_ARK-Genoa.pem").read_bytes()
    _reject(snp_verdict(dataclasses.replace(milan, chain_pem=genoa), as_of=IN_WINDOW), "snp.chain_signature_invalid")
    # Milan's ASK under Genoa's ARK
    mixed = (roots / "canonical_SEV-Milan.pem").read_bytes() + (roots / "canonical_ARK-Genoa.pem").read_bytes()
    _reject(snp_verdict(dataclasses.replace(milan, chain_pem=mixed), as_of=IN_WINDOW), "snp.chain_signature_invalid")


def test_forged_ark_with_amd_name(milan: SnpEvidence, sim: SimPlatform) -> None:
    """Same subject as ARK-Milan but another key: the fingerprint pin refuses it."""
    ask, ark = load_chain(milan.chain_pem)
    now = dt.datetime.now(dt.timezone.utc)
    forged = (
        x509.CertificateBuilder()
        .subject_name(ark.subject)
        .issuer_name(ark.subject)
        .public_key(sim.ark_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(sim.ark_key, hashes.SHA384(), rsa_padding=PSS)
    )
    chain = ask.public_bytes(serialization.Encoding.PEM) + forged.public_bytes(serialization.Encoding.PEM)
    v = snp_verdict(dataclasses.replace(milan, chain_pem=chain), as_of=IN_WINDOW)
    _reject(v, "snp.untrusted_root")
    assert "not a trusted AMD root" in v.message


def test_no_trusted_roots(milan: SnpEvidence) -> None:
    _reject(snp_verdict(milan, trust=TrustRoots(amd={}), as_of=IN_WINDOW), "snp.untrusted_root")


@pytest.mark.parametrize(
    "when,reason",
    [
        (dt.datetime(2030, 4, 4, tzinfo=dt.timezone.utc), "snp.certificate_expired"),
        (dt.datetime(2023, 4, 1, tzinfo=dt.timezone.utc), "snp.certificate_not_yet_valid"),
    ],
)
def test_validity_window(milan: SnpEvidence, when: dt.datetime, reason: str) -> None:
    _reject(snp_verdict(milan, as_of=when), reason)


def test_naive_as_of_is_utc(milan: SnpEvidence) -> None:
    assert snp_verdict(milan, as_of=dt.datetime(2025, 6, 1)).accepted


# ---- simulated platform through the same verifier ----------------------------------------------


def _resign(sim: SimPlatform, ev: SnpEvidence, **changes: object) -> SnpEvidence:
    report = dataclasses.replace(parse_report(ev.report), **changes)
    return dataclasses.replace(ev, report=sim.sign_report(report))


def test_sim_untrusted_by_default(sim: SimPlatform) -> None:
    v = snp_verdict(sim.attest(b"n", measurement=bytes(48)))
    _reject(v, "snp.untrusted_root")
    assert "SIMULATED" in v.message and "simulated TEE" in v.message.replace("SIMULATED TEE", "simulated TEE")


def test_sim_trusted(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    v = snp_verdict(sim.attest(b"n", measurement=bytes(48)), trust=sim_trust)
    assert v.accepted and v.claims and v.claims.simulated and v.claims.platform == "sim-snp"
    assert "SIMULATED" in v.message
    # real AMD evidence stays "sev-snp" even when a simulation root is trusted too


def test_real_evidence_not_simulated_under_sim_trust(milan: SnpEvidence, sim_trust: TrustRoots) -> None:
    v = snp_verdict(milan, trust=sim_trust, as_of=IN_WINDOW)
    assert v.accepted and v.claims and v.claims.platform == "sev-snp" and not v.claims.simulated


def test_sim_root_of_another_deployment(sim: SimPlatform, tmp_path: Path) -> None:
    other = SimPlatform.create(tmp_path / "other")
    trust = TrustRoots.production().with_simulation(other.root_fingerprint)
    _reject(snp_verdict(sim.attest(b"n", measurement=bytes(48)), trust=trust), "snp.untrusted_root")


def test_tcb_mismatch(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    ev = sim.attest(b"n", measurement=bytes(48))
    newer = dataclasses.replace(sim.tcb, snp=sim.tcb.snp + 1).encode()
    bad = _resign(sim, ev, reported_tcb=newer)
    v = snp_verdict(bad, trust=sim_trust)
    _reject(v, "snp.tcb_mismatch")


def test_hwid_mismatch(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    ev = sim.attest(b"n", measurement=bytes(48))
    _reject(snp_verdict(_resign(sim, ev, chip_id=b"\x42" * 64), trust=sim_trust), "snp.hwid_mismatch")
    _reject(snp_verdict(_resign(sim, ev, mask_chip_key=True, chip_id=bytes(64)), trust=sim_trust), "snp.hwid_mismatch")


def test_signing_key_field(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    ev = sim.attest(b"n", measurement=bytes(48))
    _reject(snp_verdict(_resign(sim, ev, signing_key=1), trust=sim_trust), "snp.signing_key_mismatch")
    _reject(snp_verdict(_resign(sim, ev, signing_key=7), trust=sim_trust), "snp.report_unsigned")
    _reject(snp_verdict(_resign(sim, ev, signature_algo=2), trust=sim_trust), "snp.unsupported_signature_algo")


def test_product_mismatch_with_cpuid(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    ev = sim.attest(b"n", measurement=bytes(48))
    _reject(snp_verdict(_resign(sim, ev, cpuid_fam_id=0x1A, cpuid_mod_id=0x02), trust=sim_trust), "snp.product_mismatch")


def test_revoked(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    ev = sim.attest(b"n", measurement=bytes(48))
    clean = dataclasses.replace(ev, crl=sim.issue_crl([12345]))
    assert snp_verdict(clean, trust=sim_trust).accepted
    revoked = dataclasses.replace(ev, crl=sim.issue_crl([sim.ask.serial_number]))
    _reject(snp_verdict(revoked, trust=sim_trust), "snp.revoked")


def test_crl_checks(sim: SimPlatform, sim_trust: TrustRoots, tmp_path: Path) -> None:
    ev = sim.attest(b"n", measurement=bytes(48))
    stale = dataclasses.replace(ev, crl=sim.issue_crl([], days=1))
    _reject(
        snp_verdict(stale, trust=sim_trust, as_of=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=3)),
        "snp.crl_expired",
    )
    other = SimPlatform.create(tmp_path / "other")
    _reject(snp_verdict(dataclasses.replace(ev, crl=other.issue_crl([])), trust=sim_trust), "snp.crl_signature_invalid")
    _reject(snp_verdict(dataclasses.replace(ev, crl=b"not a crl"), trust=sim_trust), "snp.malformed_crl")


def _vcek_with_key(sim: SimPlatform, key: object, *extensions: x509.ExtensionType) -> bytes:
    now = dt.datetime.now(dt.timezone.utc)
    builder = x509.CertificateBuilder()
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    cert = (
        builder.subject_name(sim.vcek.subject)
        .issuer_name(sim.ask.subject)
        .public_key(key)  # type: ignore[arg-type]
        .serial_number(7)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(sim.ask_key, hashes.SHA384(), rsa_padding=PSS)
    )
    return cert.public_bytes(serialization.Encoding.DER)


def test_wrong_key_type(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    ev = sim.attest(b"n", measurement=bytes(48))
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    _reject(snp_verdict(dataclasses.replace(ev, vcek=_vcek_with_key(sim, p256)), trust=sim_trust), "snp.wrong_key_type")
    small = rsa.generate_private_key(65537, 2048).public_key()
    _reject(snp_verdict(dataclasses.replace(ev, vcek=_vcek_with_key(sim, small)), trust=sim_trust), "snp.wrong_key_type")


def test_vcek_without_amd_extensions(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    """A P-384 leaf signed by the ASK but carrying no TCB/hwID extensions is refused."""
    key = ec.generate_private_key(ec.SECP384R1())
    ev = sim.attest(b"n", measurement=bytes(48))
    leaf = _vcek_with_key(sim, key.public_key())
    named = _vcek_with_key(
        sim, key.public_key(), x509.UnrecognizedExtension(x509.ObjectIdentifier(OID_PRODUCT_NAME), b"\x16\x08Milan-B0")
    )
    report = parse_report(ev.report)
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA384())))
    forged = SnpEvidence(report.with_signature(r, s).to_bytes(), leaf, ev.chain_pem, ev.crl)
    _reject(snp_verdict(forged, trust=sim_trust), "snp.unknown_product")
    _reject(snp_verdict(dataclasses.replace(forged, vcek=named), trust=sim_trust), "snp.tcb_mismatch")


def test_pem_vcek_and_garbage() -> None:
    ev = SnpEvidence(b"\0" * 10, b"junk", b"junk")
    _reject(snp_verdict(ev), "snp.malformed_report")


# ---- snp_verdict never raises for bad evidence ----------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["report", "vcek", "chain_pem"]),
    st.integers(0, 5000),
    st.integers(1, 255),
    st.booleans(),
)
def test_fuzz_verify_never_raises(milan: SnpEvidence, field: str, pos: int, xor: int, truncate: bool) -> None:
    data = bytearray(getattr(milan, field))
    pos %= len(data)
    if truncate:
        del data[pos:]
    else:
        data[pos] ^= xor
    v = snp_verdict(dataclasses.replace(milan, **{field: bytes(data)}), as_of=IN_WINDOW)
    assert v.reason and (v.accepted is False or v.reason == "ok")


# ---- VLEK <- ASVK <- ARK ---------------------------------------------------------------------------


def _vlek_evidence(sim: SimPlatform) -> tuple[SnpEvidence, SnpEvidence]:
    """A VLEK chain under the sim ARK (as a cloud provider's would be under AMD's)."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import NameOID

    from veil.attest.sim.platform import _der_ia5, _der_int
    from veil.attest.snp.verify import OID_BL_SPL, OID_CSP_ID, OID_SNP_SPL, OID_TEE_SPL, OID_UCODE_SPL

    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    asvk_key = rsa.generate_private_key(65537, 4096)
    asvk_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VLEK-Milan SIMULATED")])
    asvk = (
        x509.CertificateBuilder()
        .subject_name(asvk_name)
        .issuer_name(sim.ark.subject)
        .public_key(asvk_key.public_key())
        .serial_number(99)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(sim.ark_key, hashes.SHA384(), rsa_padding=PSS)
    )
    vlek_key = ec.generate_private_key(ec.SECP384R1())
    tcb = sim.tcb
    exts = [
        (OID_PRODUCT_NAME, _der_ia5("Milan-B0")),
        (OID_BL_SPL, _der_int(tcb.bootloader)),
        (OID_TEE_SPL, _der_int(tcb.tee)),
        (OID_SNP_SPL, _der_int(tcb.snp)),
        (OID_UCODE_SPL, _der_int(tcb.microcode)),
        (OID_CSP_ID, _der_ia5("veil-test-csp")),
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SEV-VLEK")]))
        .issuer_name(asvk_name)
        .public_key(vlek_key.public_key())
        .serial_number(5)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
    )
    for oid, value in exts:
        builder = builder.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False)
    vlek = builder.sign(asvk_key, hashes.SHA384(), rsa_padding=PSS)
    chain = asvk.public_bytes(serialization.Encoding.PEM) + sim.ark.public_bytes(serialization.Encoding.PEM)

    def signed(signing_key: int) -> SnpEvidence:
        report = dataclasses.replace(
            parse_report(sim.attest(b"vlek", measurement=bytes(48)).report),
            signing_key=signing_key,
            chip_id=bytes(64),
            mask_chip_key=True,
        )
        r, s = decode_dss_signature(vlek_key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA384())))
        return SnpEvidence(
            report.with_signature(r, s).to_bytes(), vlek.public_bytes(serialization.Encoding.DER), chain, sim.current_crl()
        )

    return signed(1), signed(0)


def test_vlek_chain(sim: SimPlatform, sim_trust: TrustRoots) -> None:
    good, wrong_field = _vlek_evidence(sim)
    v = snp_verdict(good, trust=sim_trust)
    assert v.accepted, v
    assert v.claims and v.claims.details["signing_key"] == "vlek"
    _reject(snp_verdict(wrong_field, trust=sim_trust), "snp.signing_key_mismatch")


def test_vlek_under_amd_ask_refused(milan: SnpEvidence, vectors: Path) -> None:
    """A VCEK presented with AMD's ASVK (VLEK intermediate): kinds must match before anything else."""
    roots = vectors / "roots"
    chain = (roots / "canonical_SEV-VLEK-Milan.pem").read_bytes() + (roots / "canonical_ARK-Milan.pem").read_bytes()
    v = snp_verdict(dataclasses.replace(milan, chain_pem=chain), as_of=IN_WINDOW)
    _reject(v, "snp.chain_signature_invalid")  # the ASVK did not sign this VCEK
