"""Azure TDX CVMs: no public sample exists, so the HCL report, TDREPORT and TPM quote are built here."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from attest_verdicts import _two_stage, azure_verdict
from veil.attest.api import Binding, VerifiedEvidence, VerifyOptions
from veil.attest.azure import AzureVtpmPolicy
from veil.attest.azure.evidence import VtpmEvidence, parse_evidence
from veil.attest.azure.hcl import REPORT_TYPE_TDX, parse_hcl_report
from veil.attest.azure.validate import validate_vtpm
from veil.attest.azure.verify import hcl_report_data, tdx_hardware, verify_vtpm
from veil.attest.claims import Claims, Verdict
from veil.attest.trust import TrustRoots
from veil.errors import VerificationError

LEGACY = AzureVtpmPolicy(require_user_data_binding=False)  # these fakes put "ab"*64 in user-data


def verify_tdx_vtpm(doc: dict[str, Any], nonce: bytes, collateral: dict[str, Any], as_of: datetime | None = None) -> Verdict:
    return azure_verdict("azure-tdx-vtpm", doc, nonce, LEGACY, collateral=collateral, as_of=as_of)


def verify_vtpm_evidence(
    doc: dict[str, Any], nonce: bytes, hardware: Any, policy: AzureVtpmPolicy | None = None, *, platform: str
) -> Verdict:
    ev = parse_evidence(doc)
    options = VerifyOptions(Binding.to(nonce), TrustRoots.production(), None)

    def verify() -> VerifiedEvidence:
        claims, hw = verify_vtpm(ev, nonce, hardware, platform=platform, options=options)
        return VerifiedEvidence(claims, hw.checks)

    return _two_stage(verify, lambda v: validate_vtpm(v.claims, ev, policy or LEGACY))


from veil.attest.tdx.abi import parse_quote, parse_td_report
from veil.attest.tdx.validate import TdxPolicy

NONCE = b"fresh-nonce-42"
MRTD = bytes(range(48))
IN_WINDOW = datetime(2025, 7, 1, tzinfo=timezone.utc)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64u_int(n: int) -> str:
    return b64u(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def td_report(
    report_data: bytes,
    mrtd: bytes = MRTD,
    attributes: bytes = bytes.fromhex("0000001000000000"),
    rtmrs: tuple[bytes, ...] = (bytes(48),) * 4,
    xfam: bytes = bytes.fromhex("e702060000000000"),
    mr_seam: bytes = bytes(48),
) -> bytes:
    r = bytearray(1024)
    r[128:192] = report_data
    r[280:328] = mr_seam
    r[512:520] = attributes
    r[520:528] = xfam
    r[528:576] = mrtd
    for i, m in enumerate(rtmrs):
        r[720 + 48 * i : 768 + 48 * i] = m
    return bytes(r)


def hcl_report(runtime: dict[str, Any], make_hw: Any, report_type: int = REPORT_TYPE_TDX) -> bytes:
    """HCLA header ‖ hardware report (1184) ‖ IGVM header ‖ runtime JSON ‖ zero padding."""
    var = json.dumps(runtime).encode()
    hw = make_hw(hashlib.sha256(var).digest() + bytes(32)).ljust(1184, b"\0")
    igvm = struct.pack("<5I", 20 + len(var), 1, report_type, 1, len(var))
    header = struct.pack("<4s4I", b"HCLA", 1, 32 + 1184 + 20 + len(var), 2, 0).ljust(32, b"\0")
    return header + hw + igvm + var + bytes(100)


def tpms_attest(nonce: bytes, digest: bytes) -> bytes:
    return (
        struct.pack(">IH", 0xFF544347, 0x8018)
        + struct.pack(">H", 2)
        + b"\0\x0b"
        + struct.pack(">H", len(nonce))
        + nonce
        + struct.pack(">QIIB", 1, 2, 3, 1)
        + struct.pack(">Q", 7)
        + struct.pack(">IHB", 1, 0x000B, 3)
        + b"\xff\xff\xff"
        + struct.pack(">H", 32)
        + digest
    )


@pytest.fixture(scope="module")
def ak() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def evidence(
    ak: rsa.RSAPrivateKey,
    make_hw: Any,
    nonce: bytes = NONCE,
    td_quote: bytes | None = None,
    runtime_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    pub = ak.public_key().public_numbers()
    runtime = {
        "keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA", "e": b64u_int(pub.e), "n": b64u_int(pub.n)}],
        "vm-configuration": {"secure-boot": True, "tpm-enabled": True},
        "user-data": "ab" * 64,
        **(runtime_extra or {}),
    }
    pcrs = [hashlib.sha256(bytes([i])).digest() for i in range(24)]
    msg = tpms_attest(nonce, hashlib.sha256(b"".join(pcrs)).digest())
    sig = ak.sign(msg, padding.PKCS1v15(), hashes.SHA256())
    doc: dict[str, Any] = {
        "version": 1,
        "hcl_report": b64u(hcl_report(runtime, make_hw)),
        "tpm_quote": {"message": msg.hex(), "signature": sig.hex(), "pcrs": [p.hex() for p in pcrs]},
    }
    if td_quote is not None:
        doc["td_quote"] = b64u(td_quote)
    return doc


def fake_tdx_hardware(ev: VtpmEvidence, options: VerifyOptions) -> VerifiedEvidence:
    """Stands in for the TD quote check (no collateral for the Azure TDX samples); reads the
    TDREPORT and checks its binding to the runtime claims like tdx_hardware."""
    r = parse_td_report(ev.hcl.td_report)
    if r.report_data != hcl_report_data(ev.hcl):
        raise VerificationError("azure.hcl_binding_mismatch", "hardware report_data does not hash the runtime claims")
    return VerifiedEvidence(
        Claims(
            platform="tdx",
            measurement=r.mr_td.hex(),
            report_data=r.report_data,
            debug=bool(r.td_attributes[0] & 1),
            tcb={"status": "UpToDate", "advisory_ids": []},
            details={
                "td_attributes": r.td_attributes.hex(),
                "xfam": r.xfam.hex(),
                "mr_seam": r.mr_seam.hex(),
                "mr_config_id": r.mr_config_id.hex(),
                **{f"rtmr{i}": m.hex() for i, m in enumerate(r.rtmrs)},
            },
        ),
        (),
    )


def test_tdx_hcl_parses(ak: rsa.RSAPrivateKey) -> None:
    ev = parse_evidence(evidence(ak, td_report))
    assert ev.hcl.platform == "tdx" and ev.hcl.report_type == REPORT_TYPE_TDX
    report = parse_td_report(ev.hcl.td_report)
    assert report.mr_td == MRTD
    assert report.report_data[:32] == ev.hcl.var_data_digest() and report.report_data[32:] == bytes(32)
    assert ev.hcl.user_data == b"\xab" * 64
    assert ev.hcl.ak_jwk()["kid"] == "HCLAkPub"
    assert parse_hcl_report(ev.hcl_report_bytes).var_data == ev.hcl.var_data


def test_full_chain_with_fake_td_quote_check(ak: rsa.RSAPrivateKey) -> None:
    v = verify_vtpm_evidence(evidence(ak, td_report), NONCE, fake_tdx_hardware, platform="azure-tdx-vtpm")
    assert v.accepted, v
    c = v.claims
    assert c is not None and c.platform == "azure-tdx-vtpm" and c.measurement == MRTD.hex()
    assert c.report_data == b"\xab" * 64 and c.details["hardware_platform"] == "tdx"


def test_tdx_policy_applies(ak: rsa.RSAPrivateKey) -> None:
    pol = LEGACY.model_copy(update={"tdx": TdxPolicy(mrtd=["ff" * 48])})
    v = verify_vtpm_evidence(evidence(ak, td_report), NONCE, fake_tdx_hardware, pol, platform="azure-tdx-vtpm")
    assert v.reason == "tdx.mrtd_not_allowed"
    debug = evidence(ak, lambda rd: td_report(rd, attributes=bytes.fromhex("0100001000000000")))
    v = verify_vtpm_evidence(debug, NONCE, fake_tdx_hardware, platform="azure-tdx-vtpm")
    assert v.reason == "tdx.debug_forbidden"
    assert verify_vtpm_evidence(
        debug,
        NONCE,
        fake_tdx_hardware,
        LEGACY.model_copy(update={"tdx": LEGACY.tdx.model_copy(update={"allow_debug": True})}),
        platform="azure-tdx-vtpm",
    ).accepted


def test_wrong_nonce_and_foreign_ak(ak: rsa.RSAPrivateKey) -> None:
    v = verify_vtpm_evidence(evidence(ak, td_report), b"other", fake_tdx_hardware, platform="azure-tdx-vtpm")
    assert v.reason == "azure.nonce_mismatch"
    ev = evidence(ak, td_report)
    other = evidence(rsa.generate_private_key(public_exponent=65537, key_size=2048), td_report)
    ev["tpm_quote"] = other["tpm_quote"]
    v = verify_vtpm_evidence(ev, NONCE, fake_tdx_hardware, platform="azure-tdx-vtpm")
    assert v.reason == "azure.tpm_signature_invalid"


def test_report_data_not_binding_runtime(ak: rsa.RSAPrivateKey) -> None:
    ev = evidence(ak, lambda rd: td_report(bytes(64)))
    v = verify_vtpm_evidence(ev, NONCE, fake_tdx_hardware, platform="azure-tdx-vtpm")
    assert v.reason == "azure.hcl_binding_mismatch"


def _quote_body_report(quote: bytes) -> Any:
    b = parse_quote(quote).body
    return lambda rd: td_report(
        b.report_data, mrtd=b.mr_td, attributes=b.td_attributes, rtmrs=b.rtmrs, xfam=b.xfam, mr_seam=b.mr_seam
    )


def test_real_td_quote_checked_against_tdreport(ak: rsa.RSAPrivateKey, vectors: Path) -> None:
    """The real TD quote verifies and matches the TDREPORT, but it does not hash our runtime claims."""
    d = vectors / "tdx/uptodate"
    quote = (d / "quote.dat").read_bytes()
    col = json.loads((d / "collateral.json").read_text())
    ev = evidence(ak, _quote_body_report(quote), td_quote=quote)
    assert verify_tdx_vtpm(ev, NONCE, col, as_of=IN_WINDOW).reason == "azure.hcl_binding_mismatch"
    assert verify_tdx_vtpm(ev, NONCE, col, as_of=datetime(2026, 11, 21, tzinfo=timezone.utc)).reason == "tdx.collateral_expired"


def test_td_quote_of_another_td(ak: rsa.RSAPrivateKey, vectors: Path) -> None:
    d = vectors / "tdx/uptodate"
    quote = (d / "quote.dat").read_bytes()
    col = json.loads((d / "collateral.json").read_text())
    ev = evidence(ak, td_report, td_quote=quote)
    # a quote of another TD does not bind these runtime claims: refused before the TDREPORT comparison
    assert verify_tdx_vtpm(ev, NONCE, col, as_of=IN_WINDOW).reason == "azure.hcl_binding_mismatch"
    v = verify_vtpm_evidence(evidence(ak, td_report), NONCE, tdx_hardware(col), platform="azure-tdx-vtpm")
    assert v.reason == "azure.td_quote_missing"
