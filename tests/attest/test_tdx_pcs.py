"""`veil collateral fetch --platform tdx`: Intel PCS collateral fetched through dcap-qvl from a
PCCS (here a fake one: a real HTTP server on loopback answering Intel's PCS API for a sim-tdx
platform), verified with the quote, then cached, so that the TD's evidence verifies offline."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from typer.testing import CliRunner

from veil.attest.collateral import CollateralCache
from veil.attest.sim.tdx import SimTdxPlatform
from veil.cli import collateral as collateral_cli
from veil.testing import ServerThread

runner = CliRunner()


def fake_pccs(sim: SimTdxPlatform, *, tamper: bool = False) -> Starlette:
    """Intel's PCS v4 API (and a PCCS's rootcacrl) serving ``sim``'s collateral."""
    col = sim.current_collateral()
    seen: list[str] = []

    def chain(value: str) -> dict[str, str]:
        return {"content-type": "application/json"} | {"x": "1"} | {"SGX-chain": urllib.parse.quote(value)}

    async def pckcrl(request: Request) -> Response:
        seen.append(str(request.url))
        assert request.query_params["ca"] == "platform" and request.query_params["encoding"] == "der"
        return Response(
            bytes.fromhex(col["pck_crl"]), headers={"SGX-PCK-CRL-Issuer-Chain": urllib.parse.quote(col["pck_crl_issuer_chain"])}
        )

    async def rootcacrl(request: Request) -> Response:
        seen.append(str(request.url))
        return Response(col["root_ca_crl"].encode())  # a PCCS answers with hex

    async def tcb(request: Request) -> Response:
        seen.append(str(request.url))
        assert request.query_params["fmspc"].lower() == sim.fmspc.hex()
        info = json.loads(col["tcb_info"])
        if tamper:
            info["tcbEvaluationDataNumber"] += 1
        body = '{"tcbInfo":' + json.dumps(info, separators=(",", ":")) + ',"signature":"' + col["tcb_info_signature"] + '"}'
        return Response(body, headers={"TCB-Info-Issuer-Chain": urllib.parse.quote(col["tcb_info_issuer_chain"])})

    async def qe_identity(request: Request) -> Response:
        seen.append(str(request.url))
        body = '{"enclaveIdentity":' + col["qe_identity"] + ',"signature":"' + col["qe_identity_signature"] + '"}'
        return Response(body, headers={"SGX-Enclave-Identity-Issuer-Chain": urllib.parse.quote(col["qe_identity_issuer_chain"])})

    app = Starlette(
        routes=[
            Route("/sgx/certification/v4/pckcrl", pckcrl),
            Route("/sgx/certification/v4/rootcacrl", rootcacrl),
            Route("/tdx/certification/v4/tcb", tcb),
            Route("/tdx/certification/v4/qe/identity", qe_identity),
        ]
    )
    app.state.seen = seen
    return app


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimTdxPlatform:
    return SimTdxPlatform.create(tmp_path_factory.mktemp("sim-tdx-pcs"))


def _fetch(quote: Path, cache: Path, url: str, *extra: str):  # type: ignore[no-untyped-def]
    result = runner.invoke(
        collateral_cli.app,
        ["fetch", "--platform", "tdx", "--quote", str(quote), "--cache", str(cache), "--pccs-url", url, "--json", *extra],
    )
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None


def test_fetch_verify_cache_then_verify_offline(sim: SimTdxPlatform, tmp_path: Path) -> None:
    from veil.cli.evidence import EvidenceFiles, verify_files

    quote = tmp_path / "quote.bin"
    quote.write_bytes(sim.quote(b"q" * 64, mr_td=b"\x05" * 48))
    app = fake_pccs(sim)
    with ServerThread(app) as pccs:
        code, out = _fetch(quote, tmp_path / "cache", pccs.url)  # the simulated root is not trusted
        assert code == 1 and out["reason"] == "tdx.collateral_root_untrusted"
        assert not (tmp_path / "cache").exists()  # nothing unverified is cached
        code, out = _fetch(quote, tmp_path / "cache", pccs.url, "--simulation-root", sim.root_fingerprint)
    assert code == 0, out
    assert out["fmspc"] == sim.fmspc.hex() and out["tcb_status"] == "UpToDate" and out["simulated"]
    paths = {urllib.parse.urlparse(u).path for u in app.state.seen}
    assert "/tdx/certification/v4/tcb" in paths and "/sgx/certification/v4/pckcrl" in paths
    assert CollateralCache(tmp_path / "cache").read_tdx(sim.fmspc.hex()) is not None
    # offline now: `veil evidence verify` takes the collateral from the cache by the quote's FMSPC
    verdict = verify_files(
        EvidenceFiles(
            platform="sim-tdx",
            quote=quote,
            cache_dir=tmp_path / "cache",
            simulation_roots=(sim.root_fingerprint,),
            report_data=b"q" * 64,
        )
    )
    assert verdict.accepted, verdict
    none = verify_files(
        EvidenceFiles(platform="sim-tdx", quote=quote, cache_dir=tmp_path / "empty", simulation_roots=(sim.root_fingerprint,))
    )
    assert none.reason == "tdx.collateral_missing" and none.error == "parse"


def test_tampered_pcs_answer_is_not_cached(sim: SimTdxPlatform, tmp_path: Path) -> None:
    quote = tmp_path / "quote.bin"
    quote.write_bytes(sim.quote(b"q" * 64, mr_td=b"\x05" * 48))
    with ServerThread(fake_pccs(sim, tamper=True)) as pccs:
        code, out = _fetch(quote, tmp_path / "cache", pccs.url, "--simulation-root", sim.root_fingerprint)
    assert code == 1 and out["reason"] == "tdx.collateral_signature_invalid"
    assert CollateralCache(tmp_path / "cache").read_tdx(sim.fmspc.hex()) is None


def test_unreachable_pccs(sim: SimTdxPlatform, tmp_path: Path) -> None:
    quote = tmp_path / "quote.bin"
    quote.write_bytes(sim.quote(b"q", mr_td=bytes(48)))
    code, out = _fetch(quote, tmp_path / "cache", "http://127.0.0.1:9")  # nothing listens on the discard port
    assert code == 1 and out["reason"] == "tdx.pcs_unavailable"
