"""Veil's TDX quote parser agrees with dcap-qvl's, field by field, on every quote we have.

Any disagreement between Veil's parser and the reference library is a bug (issue 17.7). The
quotes: the shared vectors (v4 TD 1.0, v5 TD 1.5), the published samples in tests/data/tdx (see
tests/data/README.md: dcap-qvl's and Trustee's, including an Azure TDX CVM's), and sim-tdx quotes
in every layout it makes (v4 TD 1.0, v5 TD 1.0, v5 TD 1.5, with and without debug).
"""

from __future__ import annotations

from pathlib import Path

import dcap_qvl
import pytest

from veil.attest.sim.tdx import SimTdxPlatform
from veil.attest.tdx.abi import BODY_TYPE_TD10, BODY_TYPE_TD15, TdxQuote, parse_quote

DATA = Path(__file__).parents[1] / "data" / "tdx"
PUBLISHED = sorted(DATA.glob("*"))
BODY_FIELDS = {  # Veil's name -> dcap-qvl's
    "tee_tcb_svn": "tee_tcb_svn",
    "mr_seam": "mr_seam",
    "mr_signer_seam": "mr_signer_seam",
    "seam_attributes": "seam_attributes",
    "td_attributes": "td_attributes",
    "xfam": "xfam",
    "mr_td": "mr_td",
    "mr_config_id": "mr_config_id",
    "mr_owner": "mr_owner",
    "mr_owner_config": "mr_owner_config",
    "report_data": "report_data",
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimTdxPlatform:
    return SimTdxPlatform.create(tmp_path_factory.mktemp("sim-tdx-parity"))


def _quotes(vectors: Path, sim: SimTdxPlatform) -> dict[str, bytes]:
    quotes = {f"vectors/{n}": (vectors / "tdx" / n / "quote.dat").read_bytes() for n in ("uptodate", "no-tcb-level")}
    quotes.update({f"data/{p.name}": p.read_bytes() for p in PUBLISHED})
    for version, body, debug in (
        (4, BODY_TYPE_TD10, False),
        (5, BODY_TYPE_TD10, False),
        (5, BODY_TYPE_TD15, False),
        (4, BODY_TYPE_TD10, True),
    ):
        quotes[f"sim v{version} body{body} debug={debug}"] = sim.quote(
            b"parity",
            mr_td=bytes(range(48)),
            version=version,
            body_type=body,
            debug=debug,
            mr_config_id=b"\x42" * 48,
            rtmrs=tuple(bytes([i]) * 48 for i in range(4)),
        )
    return quotes


def _compare(name: str, veil: TdxQuote, ref: "dcap_qvl.Quote") -> None:
    h, rh = veil.header, ref.header
    assert (h.version, h.attestation_key_type, h.tee_type, h.qe_svn, h.pce_svn, h.qe_vendor_id, h.user_data) == (
        rh.version,
        rh.attestation_key_type,
        rh.tee_type,
        rh.qe_svn,
        rh.pce_svn,
        rh.qe_vendor_id,
        rh.user_data,
    ), name
    report = ref.report
    for mine, theirs in BODY_FIELDS.items():
        assert getattr(veil.body, mine) == getattr(report, theirs), (name, mine)
    assert veil.body.rtmrs == (report.rt_mr0, report.rt_mr1, report.rt_mr2, report.rt_mr3), name
    is_td15 = type(report).__name__.startswith("PyTdReport15")
    assert (veil.body_type == BODY_TYPE_TD15) == is_td15, name
    if is_td15:
        assert (veil.body.tee_tcb_svn2, veil.body.mr_service_td) == (report.tee_tcb_svn2, report.mr_service_td), name
    else:
        assert veil.body.tee_tcb_svn2 is None and veil.body.mr_service_td is None, name
    assert veil.qe_cert is not None, name
    assert veil.qe_cert.pck_chain.rstrip(b"\0") == ref.cert_chain_pem_bytes().rstrip(b"\0"), name
    assert ref.is_tdx() and ref.quote_type() == "TDX", name


def test_every_quote_parses_as_dcap_qvl_reports_it(vectors: Path, sim: SimTdxPlatform) -> None:
    quotes = _quotes(vectors, sim)
    assert len(quotes) >= 12
    layouts = set()
    for name, raw in quotes.items():
        veil = parse_quote(raw)
        _compare(name, veil, dcap_qvl.parse_quote(raw))
        _compare(name + " (unpadded)", parse_quote(veil.raw), dcap_qvl.parse_quote(veil.raw))
        layouts.add((veil.header.version, veil.body_type))
    assert layouts == {(4, BODY_TYPE_TD10), (5, BODY_TYPE_TD10), (5, BODY_TYPE_TD15)}


def test_debug_attribute_is_read_alike(sim: SimTdxPlatform) -> None:
    raw = sim.quote(b"d", mr_td=bytes(48), debug=True)
    assert parse_quote(raw).body.debug
    assert dcap_qvl.parse_quote(raw).report.td_attributes[0] & 1
