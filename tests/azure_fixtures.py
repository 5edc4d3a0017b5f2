"""Azure CVM evidence with an MAA token: the real v2 sample (tests/data/azure, whose runtime claims
carry its report_data) and a token from a (simulated) MAA instance that attested those claims."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from veil.attest.azure import parse_evidence
from veil.attest.sim.maa import SimMaa
from veil.manifest import AzureReference, MaaReference, ReferenceValues

V2 = json.loads((Path(__file__).parent / "data" / "azure" / "trustee-az-snp-vtpm-evidence-v2.json").read_text())
V2_REPORT_DATA = bytes.fromhex("982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef")
V2_EVIDENCE = parse_evidence(V2)
# the sample's SNP launch measurement (Azure's paravisor image)
V2_MEASUREMENT = V2_EVIDENCE.hcl.hw_report[0x90:0xC0].hex()


def maa_token(maa: SimMaa, *, now: dt.datetime, runtime: dict[str, Any] | None = None, **tee: Any) -> dict[str, Any]:
    """The token MAA would give for the v2 sample: its runtime claims and report claims."""
    ev = V2_EVIDENCE
    report = {
        "x-ms-sevsnpvm-launchmeasurement": V2_MEASUREMENT,
        "x-ms-sevsnpvm-is-debuggable": False,
        "x-ms-sevsnpvm-reportdata": ev.hcl.hw_report[0x50:0x90].hex(),
        "x-ms-sevsnpvm-vmpl": 0,
    }
    claims = maa.cvm_claims(runtime=runtime if runtime is not None else ev.hcl.runtime, report=report)
    claims["x-ms-isolation-tee"].update(tee)
    return {"token": maa.issue(claims, now=now), "certs": maa.certs()}


def worker_reference(maa: SimMaa | None = None, pinned: list[str] | None = None) -> ReferenceValues:
    """The manifest's reference values for this CVM, requiring an MAA token signed under ``pinned``."""
    mref = MaaReference(issuers=[maa.issuer] if maa else [], signing_roots=pinned or [])
    return ReferenceValues(platform="azure-snp-vtpm", measurements=[V2_MEASUREMENT], azure=AzureReference(maa=mref))
