"""`veil collateral fetch/show`: KDS requests for a real Milan report (mock transport, no network),
the offline cache they fill, and `veil evidence verify` working from that cache alone."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from veil.cli.evidence import EvidenceFiles, verify_files
from veil.attest.sim import SimPlatform
from veil.attest.collateral import CollateralCache
from veil.attest.snp import kds
from veil.attest.snp.verify import TrustRoots
from veil.cli import collateral
from veil.cli.main import app as veil_app

runner = CliRunner()
AS_OF = "2025-06-01T00:00:00Z"
MILAN_CRL = (Path(__file__).parent / "data" / "amd" / "Milan-vcek-crl.der").read_bytes()  # AMD's real one
KDS = "https://kdsintf.amd.com"
# From the vector's README: Milan, reported TCB bl 3 / tee 0 / snp 8 / ucode 115. The chip id is
# the report's 64 bytes at 0x1A0, read here directly rather than through Veil's parser.
CHIP_ID_OFFSET = 0x1A0


class FakeKds:
    """AMD KDS answering from files, recording every URL; ``crl`` None means HTTP 404."""

    def __init__(self, vcek: bytes, chain: bytes, crl: bytes | None = None, *, product: str = "Milan") -> None:
        self.vcek, self.chain, self.crl, self.product = vcek, chain, crl, product
        self.urls: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(str(request.url))
        path = request.url.path
        if request.url.host != "kdsintf.amd.com" or request.method != "GET":
            return httpx.Response(400)
        if path == f"/vcek/v1/{self.product}/cert_chain":
            return httpx.Response(200, content=self.chain)
        if path == f"/vcek/v1/{self.product}/crl":
            return httpx.Response(200, content=self.crl) if self.crl is not None else httpx.Response(404)
        if path.startswith(f"/vcek/v1/{self.product}/") and request.url.params.get("ucodeSPL") is not None:
            return httpx.Response(200, content=self.vcek)
        return httpx.Response(404)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(
            collateral, "make_client", lambda timeout=15.0: httpx.Client(transport=httpx.MockTransport(self.handler))
        )


@pytest.fixture
def milan(vectors) -> Path:
    return vectors / "sev-snp" / "milan-vcek"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any real HTTP transport use fails the test: only the mock transport may answer."""

    def refuse(self, request):  # pragma: no cover - only hit on a bug
        raise AssertionError(f"network access attempted: {request.url}")

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", refuse)


def fetch(*args: str):
    result = runner.invoke(collateral.app, ["fetch", *args, "--json"])
    out = json.loads(result.stdout) if result.stdout.strip() else None
    return result.exit_code, out


def verify(*args: str):
    result = runner.invoke(veil_app, ["evidence", "verify", "--platform", "sev-snp", *args, "--json"])
    return result.exit_code, (json.loads(result.stdout) if result.stdout.strip() else None)


def _forged_crl(chain_pem: bytes) -> bytes:
    """A CRL naming AMD's ARK-Milan as issuer but signed by another key."""
    ark = [c for c in x509.load_pem_x509_certificates(chain_pem) if c.subject == c.issuer][0]
    key = rsa.generate_private_key(65537, 2048)
    now = dt.datetime(2024, 12, 31, tzinfo=dt.timezone.utc)
    b = x509.CertificateRevocationListBuilder().issuer_name(ark.subject).last_update(now).next_update(now + dt.timedelta(days=7))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    return b.sign(key, hashes.SHA384(), rsa_padding=pss).public_bytes(Encoding.DER)


def _files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def test_urls_for_the_milan_report(milan, tmp_path, monkeypatch) -> None:
    report = (milan / "report.bin").read_bytes()
    hwid = report[CHIP_ID_OFFSET : CHIP_ID_OFFSET + 64].hex()
    fake = FakeKds((milan / "vcek.der").read_bytes(), (milan / "ask_ark.pem").read_bytes())
    fake.install(monkeypatch)
    code, out = fetch(
        "--report", str(milan / "report.bin"), "--product", "Milan", "--cache", str(tmp_path), "--no-crl", "--as-of", AS_OF
    )
    assert code == 0, out
    assert fake.urls == [
        f"{KDS}/vcek/v1/Milan/{hwid}?blSPL=3&teeSPL=0&snpSPL=8&ucodeSPL=115",
        f"{KDS}/vcek/v1/Milan/cert_chain",
    ]
    assert out["product"] == "Milan" and out["hwid"] == hwid
    assert out["reported_tcb"] == {"bootloader": 3, "tee": 0, "snp": 8, "microcode": 115}
    assert _files(tmp_path) == sorted(
        [
            f"amd/Milan/vcek/{hwid}/bl3-tee0-snp8-ucode115.der",
            "amd/Milan/vcek/cert_chain.pem",
        ]
    )
    assert (tmp_path / "amd/Milan/vcek" / hwid / "bl3-tee0-snp8-ucode115.der").read_bytes() == (milan / "vcek.der").read_bytes()

    # again: everything comes from the cache, no request at all
    fake.urls.clear()
    code, out = fetch(
        "--report", str(milan / "report.bin"), "--product", "Milan", "--cache", str(tmp_path), "--no-crl", "--as-of", AS_OF
    )
    assert code == 0 and fake.urls == [] and sorted(out["from_cache"]) == ["cert_chain", "vcek"]


def test_evidence_verify_works_offline_from_the_filled_cache(milan, tmp_path, monkeypatch) -> None:
    fake = FakeKds((milan / "vcek.der").read_bytes(), (milan / "ask_ark.pem").read_bytes(), MILAN_CRL)
    fake.install(monkeypatch)
    code, out = fetch("--report", str(milan / "report.bin"), "--product", "Milan", "--cache", str(tmp_path), "--as-of", AS_OF)
    assert code == 0, out
    monkeypatch.setenv("VEIL_COLLATERAL_DIR", str(tmp_path))
    # the VCEK as the cache holds it, and no --chain or --crl: both are read from the cache
    shown = json.loads(runner.invoke(collateral.app, ["show", "--report", str(milan / "report.bin"), "--json"]).stdout)
    assert shown["cached"] and shown["product"] == "Milan" and shown["crl"] is not None
    code, out = verify("--report", str(milan / "report.bin"), "--vcek", shown["vcek"], "--as-of", AS_OF)
    assert code == 0, out
    assert out["verdict"] == "accept" and out["claims"]["measurement"].startswith("7a1e5c26")


def test_evidence_verify_with_the_report_alone(milan, tmp_path, monkeypatch) -> None:
    FakeKds((milan / "vcek.der").read_bytes(), (milan / "ask_ark.pem").read_bytes()).install(monkeypatch)
    assert (
        fetch(
            "--report", str(milan / "report.bin"), "--product", "Milan", "--cache", str(tmp_path), "--no-crl", "--as-of", AS_OF
        )[0]
        == 0
    )
    monkeypatch.setenv("VEIL_COLLATERAL_DIR", str(tmp_path))
    code, out = verify("--report", str(milan / "report.bin"), "--as-of", AS_OF)
    assert code == 1 and out["reason"] == "snp.crl_missing", out  # --no-crl cached no revocation data
    CollateralCache(tmp_path).write_crl("Milan", MILAN_CRL)
    code, out = verify("--report", str(milan / "report.bin"), "--as-of", AS_OF)
    assert code == 0, out


def test_forged_crl_is_refused_and_nothing_is_cached(milan, tmp_path, monkeypatch) -> None:
    chain = (milan / "ask_ark.pem").read_bytes()
    fake = FakeKds((milan / "vcek.der").read_bytes(), chain, _forged_crl(chain))
    fake.install(monkeypatch)
    code, out = fetch("--report", str(milan / "report.bin"), "--product", "Milan", "--cache", str(tmp_path), "--as-of", AS_OF)
    assert code == 1 and out["reason"] == "snp.crl_signature_invalid"
    assert fake.urls[-1] == f"{KDS}/vcek/v1/Milan/crl"
    assert _files(tmp_path) == []


def test_kds_failure_and_foreign_vcek_cache_nothing(vectors, milan, tmp_path, monkeypatch) -> None:
    FakeKds((milan / "vcek.der").read_bytes(), (milan / "ask_ark.pem").read_bytes(), None).install(monkeypatch)
    code, out = fetch("--report", str(milan / "report.bin"), "--product", "Milan", "--cache", str(tmp_path), "--as-of", AS_OF)
    assert code == 1 and out["reason"] == "snp.kds_unavailable"  # the CRL answered 404
    # another chip's VCEK (the debug vector's) does not certify this report
    other = vectors / "sev-snp" / "milan-debug"
    FakeKds((other / "vcek.der").read_bytes(), (milan / "ask_ark.pem").read_bytes()).install(monkeypatch)
    code, out = fetch(
        "--report", str(milan / "report.bin"), "--product", "Milan", "--cache", str(tmp_path), "--no-crl", "--as-of", AS_OF
    )
    assert code == 1 and out["reason"].startswith("snp."), out
    assert _files(tmp_path) == []


def test_usage_errors(milan, tmp_path) -> None:
    code, out = fetch("--report", str(milan / "report.bin"), "--cache", str(tmp_path))
    assert code == 2 and out["reason"] == "cli.missing_input" and "--product" in out["message"]  # v2: no CPUID
    code, out = fetch("--report", str(milan / "report.bin"), "--product", "Naples", "--cache", str(tmp_path))
    assert code == 2 and out["reason"] == "snp.unknown_product"
    code, out = fetch("--report", str(milan / "vcek.der"), "--product", "Milan", "--cache", str(tmp_path))
    assert code == 2 and out["reason"] == "snp.malformed_report"


def test_sim_platform_crl_is_checked_and_cached(tmp_path) -> None:
    """A valid ARK-signed CRL is cached and then used offline; a CRL revoking the ASK is refused."""
    sim = SimPlatform.create(tmp_path / "sim")
    trust = TrustRoots.production().with_simulation(sim.root_fingerprint)
    ev = sim.attest(b"\x01" * 64, measurement=b"\x02" * 48)  # v3: the CPUID says Milan
    cache = CollateralCache(tmp_path / "cache")

    revoked = FakeKds(sim.vcek_der, sim.chain_pem, sim.issue_crl([sim.ask.serial_number]))
    client = httpx.Client(transport=httpx.MockTransport(revoked.handler))
    with pytest.raises(collateral.VeilError) as exc:
        collateral.fetch_for_report(ev.report, cache, client=client, trust=trust)
    assert exc.value.reason == "snp.revoked" and not (tmp_path / "cache").exists()

    good = FakeKds(sim.vcek_der, sim.chain_pem, sim.issue_crl())
    client = httpx.Client(transport=httpx.MockTransport(good.handler))
    result = collateral.fetch_for_report(ev.report, cache, client=client, trust=trust)
    assert result.crl and set(result.written) == {"vcek", "cert_chain", "crl"}
    assert len(good.urls) == 3 and good.urls[0].startswith(f"{KDS}/vcek/v1/Milan/{sim.chip_id.hex()}?")
    (tmp_path / "r.bin").write_bytes(ev.report)
    verdict = verify_files(
        EvidenceFiles(
            platform="sim-snp",
            report=tmp_path / "r.bin",
            vcek=Path(result.written["vcek"]),
            cache_dir=cache.root,
            simulation_roots=(sim.root_fingerprint,),
        )
    )
    assert verdict.accepted, verdict.message
    listing = {e["item"] for e in collateral.cache_listing(cache)}
    assert listing == {"vcek", "cert_chain", "crl"}
    out = runner.invoke(collateral.app, ["show", "--cache", str(cache.root)])
    assert out.exit_code == 0 and "Milan" in out.stdout
