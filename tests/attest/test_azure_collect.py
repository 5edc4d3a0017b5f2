"""Azure vTPM collection with a fake TPM (no Azure CVM here): the output parses and verifies."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from attest_verdicts import azure_verdict
from veil.attest.azure import AzureVtpmPolicy, parse_evidence
from veil.attest.azure.collect import HCL_REPORT_INDEX, USER_DATA_INDEX, collect_evidence
from veil.errors import VeilError


class FakeTpm:
    """Replays the public Azure sample, as the paravisor and vTPM would have produced it."""

    def __init__(self, sample: dict[str, Any]) -> None:
        self.sample = sample
        self.writes: list[tuple[int, bytes]] = []

    def nv_write(self, index: int, data: bytes) -> None:
        self.writes.append((index, data))

    def nv_read(self, index: int) -> bytes:
        assert index == HCL_REPORT_INDEX
        s = self.sample["hcl_report"]
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    def quote(self, nonce: bytes) -> tuple[bytes, bytes, list[bytes]]:
        q = self.sample["tpm_quote"]
        return bytes.fromhex(q["message"]), bytes.fromhex(q["signature"]), [bytes.fromhex(p) for p in q["pcrs"]]


@pytest.fixture(scope="module")
def sample(vectors: Path) -> dict[str, Any]:
    return json.loads((vectors / "azure/snp-vtpm-milan/evidence.json").read_text())


def test_collected_evidence_verifies(sample: dict[str, Any], vectors: Path) -> None:
    tpm = FakeTpm(sample)
    doc = collect_evidence(b"challenge", tpm=tpm, user_data=bytes(64), vcek_pem=sample["vcek"])
    assert tpm.writes == [(USER_DATA_INDEX, bytes(64))]
    assert parse_evidence(doc).tpm_quote.attest.extra_data == b"challenge"
    roots = vectors / "roots"
    chain = (roots / "canonical_SEV-Milan.pem").read_bytes() + (roots / "canonical_ARK-Milan.pem").read_bytes()
    legacy = AzureVtpmPolicy(require_user_data_binding=False)  # the replayed sample's user-data is zeros
    assert azure_verdict("azure-snp-vtpm", json.loads(json.dumps(doc)), b"challenge", legacy, chain=chain).accepted


def test_user_data_size(sample: dict[str, Any]) -> None:
    with pytest.raises(VeilError):
        collect_evidence(b"n", tpm=FakeTpm(sample), user_data=b"short")


def test_td_quote_included(sample: dict[str, Any]) -> None:
    doc = collect_evidence(b"n", tpm=FakeTpm(sample), td_quote=b"\x04\x00quote")
    assert parse_evidence(doc).td_quote == b"\x04\x00quote"


def test_attester_writes_v2_evidence_with_the_hosts_vcek(sample: dict[str, Any]) -> None:
    """The registry's azure-snp-vtpm attester: the report_data goes to the user-data NV index (so
    the runtime claims carry it) and is the quote's nonce; the VCEK comes from the metadata service."""
    import httpx

    from veil.attest import registry
    from veil.attest.azure.collect import AzureVtpmAttester

    seen: list[str] = []

    def imds(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        assert request.headers["Metadata"] == "true"
        return httpx.Response(200, json={"vcekCert": sample["vcek"], "certificateChain": ""})

    tpm = FakeTpm(sample)
    attester = AzureVtpmAttester("azure-snp-vtpm", tpm, httpx.Client(transport=httpx.MockTransport(imds)))
    ev = attester.evidence(b"\x07" * 64)
    assert ev["platform"] == "azure-snp-vtpm" and ev["vtpm"]["version"] == 2
    assert tpm.writes == [(USER_DATA_INDEX, b"\x07" * 64)]
    assert seen == ["/metadata/THIM/amd/certification"] and parse_evidence(ev["vtpm"]).vcek
    attester.evidence(b"\x07" * 64)
    assert len(seen) == 1  # fetched once
    assert registry.platform("azure-snp-vtpm").attester and registry.platform("azure-tdx-vtpm").attester
    with pytest.raises(VeilError) as exc:
        attester.sealing_key()
    assert exc.value.reason == "sealing.unavailable"
