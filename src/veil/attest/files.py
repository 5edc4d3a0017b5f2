"""Inputs of `veil evidence verify`, read from files, shared by every platform's verifier.

Each platform package exposes ``verify_files(inputs: EvidenceFiles) -> Verdict`` and the CLI
dispatches on ``--platform``; a platform reads only the fields it needs and refuses (ParseError,
reason ``cli.missing_input``) when one it needs is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class EvidenceFiles:
    platform: str
    as_of: datetime | None = None  # None: now (UTC)
    policy: Path | None = None  # reference values (JSON); None: production defaults
    allow_debug: bool = False
    report: Path | None = None  # sev-snp report.bin, nvidia report.hex|bin
    vcek: Path | None = None  # sev-snp VCEK/VLEK, DER or PEM
    chain: Path | None = None  # sev-snp ASK+ARK (or ASVK+ARK) PEM
    quote: Path | None = None  # tdx quote
    collateral: Path | None = None  # tdx PCS collateral JSON (also for the TDX quote inside azure-tdx-vtpm)
    cert_chain: Path | None = None  # nvidia leaf..root PEM
    nonce: bytes | None = None  # nvidia, azure: expected nonce
    evidence: Path | None = None  # azure vTPM evidence JSON
    token: Path | None = None  # azure-maa JWT
    jwks: Path | None = None  # azure-maa signing keys
    rim: Path | None = None  # nvidia reference integrity manifest (optional)


# platform name on the command line -> module exposing verify_files()
PLATFORM_MODULES: dict[str, str] = {
    "sev-snp": "veil.attest.snp",
    "tdx": "veil.attest.tdx",
    "nvidia": "veil.attest.nvidia",
    "azure-snp-vtpm": "veil.attest.azure",
    "azure-tdx-vtpm": "veil.attest.azure",
    "azure-maa": "veil.attest.azure",
}
