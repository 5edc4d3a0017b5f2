"""Revocation is required: the verifier takes the CRL from the evidence or its collateral cache,
refuses without one, and bounds its age (AMD's real CRLs, and the simulator's)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from attest_verdicts import AMD_DATA, StaticCollateral, snp_verdict
from veil.attest.sim import SimPlatform
from veil.attest.snp import SnpEvidence
from veil.attest.snp.verify import MAX_CRL_AGE
from veil.attest.trust import TrustRoots

UTC = dt.timezone.utc
MILAN_CRL = (AMD_DATA / "Milan-vcek-crl.der").read_bytes()  # issued 2025-05-06, next update 2026-05-12
GENOA_CRL = (AMD_DATA / "Genoa-vcek-crl.der").read_bytes()  # issued 2024-10-23, revokes serial 0x020001


@pytest.fixture(scope="module")
def milan(vectors: Path) -> SnpEvidence:
    d = vectors / "sev-snp" / "milan-vcek"
    return SnpEvidence((d / "report.bin").read_bytes(), (d / "vcek.der").read_bytes(), (d / "ask_ark.pem").read_bytes())


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.create(tmp_path_factory.mktemp("sim-crl"))


def test_crl_required(milan: SnpEvidence) -> None:
    v = snp_verdict(milan, as_of=dt.datetime(2025, 6, 1, tzinfo=UTC), collateral=StaticCollateral({}))
    assert v.reason == "snp.crl_missing" and v.error == "verification"


def test_crl_from_the_cache_or_the_evidence(milan: SnpEvidence) -> None:
    when = dt.datetime(2025, 6, 1, tzinfo=UTC)
    from_cache = snp_verdict(milan, as_of=when)  # the verifier's cache holds AMD's Milan CRL
    carried = snp_verdict(dataclasses.replace(milan, crl=MILAN_CRL), as_of=when, collateral=StaticCollateral({}))
    for v in (from_cache, carried):
        assert v.accepted, v
        crl = next(c for c in v.checks if c.name == "revocation (CRL)")
        assert "#6 issued 2025-05-06, next update 2026-05-12 (25 days old, 0 revoked)" in crl.result


@pytest.mark.parametrize(
    ("when", "reason"),
    [
        (dt.datetime(2025, 5, 1, tzinfo=UTC), "snp.crl_not_yet_valid"),  # before AMD issued it
        (dt.datetime(2026, 6, 1, tzinfo=UTC), "snp.crl_expired"),  # past its next update
    ],
)
def test_real_crl_time_window(milan: SnpEvidence, when: dt.datetime, reason: str) -> None:
    assert snp_verdict(dataclasses.replace(milan, crl=MILAN_CRL), as_of=when).reason == reason


def test_real_genoa_crl_lists_its_revocation() -> None:
    crl = x509.load_der_x509_crl(GENOA_CRL)
    assert crl.get_revoked_certificate_by_serial_number(0x020001) is not None
    assert "ARK-Genoa" in crl.issuer.rfc4514_string()


def test_crl_of_another_product_refused(milan: SnpEvidence) -> None:
    v = snp_verdict(dataclasses.replace(milan, crl=GENOA_CRL), as_of=dt.datetime(2025, 6, 1, tzinfo=UTC))
    assert v.reason == "snp.crl_signature_invalid"


def test_stale_crl_refused_even_before_its_next_update(sim: SimPlatform) -> None:
    """A CRL whose own next update lies far ahead is still refused once older than MAX_CRL_AGE."""
    trust = TrustRoots.production().with_simulation(sim.root_fingerprint)
    long_lived = sim.issue_crl(days=3 * 365)
    ev = dataclasses.replace(sim.attest(b"n", measurement=bytes(48)), crl=long_lived)
    assert snp_verdict(ev, trust=trust).accepted
    later = dt.datetime.now(UTC) + MAX_CRL_AGE + dt.timedelta(days=1)
    assert snp_verdict(ev, trust=trust, as_of=later).reason == "snp.crl_stale"


def test_sim_evidence_carries_a_current_crl(sim: SimPlatform) -> None:
    ev = sim.attest(b"n", measurement=bytes(48))
    assert ev.crl is not None and ev.crl == sim.current_crl()  # reused, not re-signed each time
    assert (sim.directory / "crl.der").stat().st_mode & 0o777 == 0o600
