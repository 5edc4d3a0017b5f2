"""The CoCo/Kata Attestation Agent as an evidence source, against a fake of its REST API (a real
HTTP server on loopback answering /info and /aa/evidence as guest-components' api-server-rest
does), and the Agent's SEV-SNP layout rebuilt byte for byte from a real Agent's evidence."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from attest_verdicts import AMD_DATA, snp_verdict
from veil.attest import api, registry
from veil.attest.api import Binding, VerifyOptions
from veil.attest.coco import report_from_sev_json, snp_from_agent
from veil.attest.collateral import CollateralCache
from veil.attest.sim import SimPlatform, measure_code
from veil.attest.sim.tdx import SimTdxPlatform
from veil.attest.snp import SnpEvidence, parse_report
from veil.attest.snp.abi import TcbVersion
from veil.attest.trust import TrustRoots
from veil.errors import VeilError
from veil.testing import ServerThread

SAMPLE = Path(__file__).parent / "data" / "coco" / "trustee-e2e-snp-evidence.json"


def sev_json(report: bytes) -> dict[str, Any]:
    """The sev crate's serde form of a report, as the Agent's SNP attester serialises it."""
    r = parse_report(report)
    product = r.product

    def tcb(raw: int) -> dict[str, Any]:
        t = TcbVersion.decode(raw, product)
        return {"fmc": t.fmc, "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode}

    return {
        "version": r.version,
        "guest_svn": r.guest_svn,
        "policy": r.policy,
        "family_id": list(r.family_id),
        "image_id": list(r.image_id),
        "vmpl": r.vmpl,
        "sig_algo": r.signature_algo,
        "current_tcb": tcb(r.current_tcb),
        "plat_info": r.platform_info,
        "key_info": int(r.author_key_en) | int(r.mask_chip_key) << 1 | r.signing_key << 2,
        "report_data": list(r.report_data),
        "measurement": list(r.measurement),
        "host_data": list(r.host_data),
        "id_key_digest": list(r.id_key_digest),
        "author_key_digest": list(r.author_key_digest),
        "report_id": list(r.report_id),
        "report_id_ma": list(r.report_id_ma),
        "reported_tcb": tcb(r.reported_tcb),
        "cpuid_fam_id": r.cpuid_fam_id,
        "cpuid_mod_id": r.cpuid_mod_id,
        "cpuid_step": r.cpuid_step,
        "chip_id": list(r.chip_id),
        "committed_tcb": tcb(r.committed_tcb),
        "current": {"major": r.current_major, "minor": r.current_minor, "build": r.current_build},
        "committed": {"major": r.committed_major, "minor": r.committed_minor, "build": r.committed_build},
        "launch_tcb": tcb(r.launch_tcb),
        "signature": {"r": list(r.signature_r), "s": list(r.signature_s)},
    }


def fake_agent(tee: str, make: Any) -> Starlette:
    """api-server-rest: /info and /aa/evidence?runtime_data=<b64url>&encoding=base64."""
    calls: list[bytes] = []

    async def info(_: Request) -> Response:
        return JSONResponse({"version": "v1.0.0", "tee": tee, "additional_tees": []})

    async def evidence(request: Request) -> Response:
        raw = request.query_params["runtime_data"]
        assert request.query_params["encoding"] == "base64"
        data = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        calls.append(data)
        return Response(json.dumps(make(data.ljust(64, b"\0"))).encode(), media_type="application/octet-stream")

    app = Starlette(routes=[Route("/info", info), Route("/aa/evidence", evidence)])
    app.state.calls = calls
    return app


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.create(tmp_path_factory.mktemp("coco-snp"))


@pytest.fixture(scope="module")
def sim_tdx(tmp_path_factory: pytest.TempPathFactory) -> SimTdxPlatform:
    return SimTdxPlatform.create(tmp_path_factory.mktemp("coco-tdx"))


def test_real_agent_snp_evidence_rebuilds_exactly() -> None:
    """Trustee's recorded Agent evidence: the rebuilt bytes carry AMD's valid signature."""
    report, certs = snp_from_agent(json.loads(SAMPLE.read_text()))
    assert len(report) == 1184 and set(certs) == {"vcek"}
    ev = SnpEvidence(report, certs["vcek"], crl=(AMD_DATA / "Genoa-vcek-crl.der").read_bytes())
    v = snp_verdict(ev, as_of=dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc))
    assert v.accepted, v
    assert v.claims is not None and v.claims.details["product"] == "Genoa" and v.claims.details["firmware"] == "1.55.40"


def test_sev_json_round_trip(sim: SimPlatform) -> None:
    report = sim.attest(b"x" * 64, measurement=b"\x01" * 48).report
    assert report_from_sev_json(sev_json(report)) == report
    broken = sev_json(report)
    broken["measurement"] = broken["measurement"][:47]
    with pytest.raises(VeilError) as err:
        report_from_sev_json(broken)
    assert err.value.reason == "coco.malformed"


def test_snp_attester_through_the_agent(sim: SimPlatform, tmp_path: Path) -> None:
    def make(rd: bytes) -> dict[str, Any]:
        ev = sim.attest(rd, measurement=measure_code())
        return {"attestation_report": sev_json(ev.report), "cert_chain": [{"cert_type": "VCEK", "data": list(ev.vcek)}]}

    app = fake_agent("snp", make)
    cache = CollateralCache(tmp_path)
    cache.write_crl("Milan", sim.current_crl())  # the CRL the Agent does not serve comes from the cache
    with ServerThread(app) as agent:
        attester = registry.attester(
            "sev-snp", registry.AttesterConfig(collateral_dir=tmp_path, source="coco-aa", aa_url=agent.url)
        )
        evidence = attester.evidence(b"w" * 64)
    assert app.state.calls == [b"w" * 64]
    # the host's simulated chip signed it: with the simulation root trusted it verifies as sim-snp
    snp = {**evidence["snp"], "chain": base64.b64encode(sim.chain_pem).decode()}
    trust = TrustRoots.production().with_simulation(sim.root_fingerprint)
    verified = api.verify({"platform": "sim-snp", "snp": snp}, VerifyOptions(Binding.to(b"w" * 64), trust))
    assert verified.claims.measurement == measure_code().hex()


def test_tdx_attester_through_the_agent(sim_tdx: SimTdxPlatform, tmp_path: Path) -> None:
    def make(rd: bytes) -> dict[str, Any]:
        return {"cc_eventlog": None, "quote": base64.b64encode(sim_tdx.quote(rd, mr_td=measure_code())).decode()}

    cache = CollateralCache(tmp_path)
    cache.write_tdx(sim_tdx.fmspc.hex(), sim_tdx.current_collateral())
    with ServerThread(fake_agent("tdx", make)) as agent:
        attester = registry.attester("tdx", registry.AttesterConfig(collateral_dir=tmp_path, source="coco-aa", aa_url=agent.url))
        evidence = attester.evidence(b"t" * 64)
    trust = TrustRoots.production().with_simulation(sim_tdx.root_fingerprint)
    verified = api.verify({**evidence, "platform": "sim-tdx"}, VerifyOptions(Binding.to(b"t" * 64), trust))
    assert verified.claims.platform == "sim-tdx" and verified.claims.measurement == measure_code().hex()


def test_agent_refusals(tmp_path: Path) -> None:
    with ServerThread(fake_agent("tdx", lambda rd: {})) as agent:
        with pytest.raises(VeilError) as err:  # the pod's Agent attests TDX: it cannot serve SEV-SNP
            registry.attester("sev-snp", registry.AttesterConfig(source="coco-aa", aa_url=agent.url))
        assert err.value.reason == "coco.wrong_tee"
        attester = registry.attester("tdx", registry.AttesterConfig(collateral_dir=tmp_path, source="coco-aa", aa_url=agent.url))
        with pytest.raises(VeilError) as err:
            attester.evidence(b"t" * 64)  # an answer without a quote
        assert err.value.reason == "coco.malformed"
    from veil.attest.coco import AttestationAgent

    with pytest.raises(VeilError) as err:
        AttestationAgent("http://127.0.0.1:9").evidence(b"x")
    assert err.value.reason == "coco.unavailable"


@pytest.mark.parametrize("platform", ["sim-snp", "sim-tdx", "azure-snp-vtpm", "azure-tdx-vtpm"])
def test_a_platform_that_cannot_read_the_agent_refuses_it(platform: str, tmp_path: Path) -> None:
    """Asked for the Agent, an attester that cannot read it must not quietly use its devices."""
    config = registry.AttesterConfig(sim_dir=tmp_path, source="coco-aa", aa_url="http://127.0.0.1:9")
    with pytest.raises(VeilError) as err:
        registry.attester(platform, config)
    assert err.value.reason == "attest.source_unsupported"
