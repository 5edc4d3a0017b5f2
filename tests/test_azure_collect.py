"""Azure vTPM collection with a fake TPM (no Azure CVM here): the output parses and verifies."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from veil.attest.azure import parse_evidence, verify_snp_vtpm
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
    assert verify_snp_vtpm(json.loads(json.dumps(doc)), b"challenge", chain_pem=chain).accepted


def test_user_data_size(sample: dict[str, Any]) -> None:
    with pytest.raises(VeilError):
        collect_evidence(b"n", tpm=FakeTpm(sample), user_data=b"short")


def test_td_quote_included(sample: dict[str, Any]) -> None:
    doc = collect_evidence(b"n", tpm=FakeTpm(sample), td_quote=b"\x04\x00quote")
    assert parse_evidence(doc).td_quote == b"\x04\x00quote"
