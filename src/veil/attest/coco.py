"""Evidence from a Confidential Containers (Kata) pod: the guest's Attestation Agent.

Inside a CoCo pod the TEE devices (``/dev/sev-guest``, configfs-tsm) are visible only to privileged
containers; the guest's Attestation Agent serves evidence instead, through its REST server
(guest-components ``api-server-rest``, ``127.0.0.1:8006``):

* ``GET /info`` -> ``{"tee": "snp" | "tdx" | "az-snp-vtpm" | "az-tdx-vtpm" | ..., ...}``;
* ``GET /aa/evidence?runtime_data=<base64url, no padding>&encoding=base64`` -> the primary
  attester's evidence (JSON), whose report_data is ``runtime_data`` zero-padded to 64 bytes.

The JSON is the attester's own (guest-components ``attestation-agent/attester``):

* SEV-SNP: ``{"attestation_report": <the sev crate's serde form of the report>, "cert_chain":
  [{"cert_type": "VCEK" | "VLEK" | "ASK" | "ARK" | "CRL" | ..., "data": [bytes]}] | null}``; the
  report is rebuilt byte for byte from its fields (``report_from_sev_json``) so Veil's verifier
  checks the signature over exactly what the chip signed;
* TDX: ``{"cc_eventlog": <base64> | null, "quote": <base64 quote>}``;
* Azure vTPM (az-snp-vtpm, az-tdx-vtpm): the layout :mod:`veil.attest.azure.evidence` reads.

The collateral the Agent does not serve (SNP: the CRL, a VCEK when the host table has none; TDX:
the PCS collateral) comes from the collateral cache, as for the other sources.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import httpx

from veil.errors import ParseError, ProtocolError

DEFAULT_URL = "http://127.0.0.1:8006"
MAX_EVIDENCE = 1 << 20
AA_TEES = {"snp": "sev-snp", "tdx": "tdx", "az-snp-vtpm": "azure-snp-vtpm", "az-tdx-vtpm": "azure-tdx-vtpm"}


class AttestationAgent:
    """A client of the Attestation Agent's REST API (``url``: the api-server-rest address)."""

    def __init__(self, url: str = DEFAULT_URL, *, client: httpx.Client | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout)

    def _get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        try:
            resp = self._client.get(f"{self.url}{path}", params=params)
        except httpx.HTTPError as exc:
            raise ProtocolError("coco.unavailable", f"Attestation Agent at {self.url}: {exc}") from None
        if resp.status_code != 200:
            raise ProtocolError("coco.refused", f"Attestation Agent answered HTTP {resp.status_code} for {path}")
        if len(resp.content) > MAX_EVIDENCE:
            raise ProtocolError("coco.refused", "Attestation Agent answer is implausibly large")
        return resp.content

    def platform(self) -> str | None:
        """The Veil platform the Agent's primary attester is (None when the Agent has no /info)."""
        try:
            info = httpx.Response(200, content=self._get("/info")).json()
        except ProtocolError:
            return None
        except ValueError:
            raise ParseError("coco.malformed", "Attestation Agent /info is not JSON") from None
        return AA_TEES.get(str(info.get("tee", ""))) if isinstance(info, dict) else None

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """The primary attester's evidence over ``report_data`` (at most 64 bytes)."""
        if len(report_data) > 64:
            raise ParseError("coco.bad_report_data", "report_data is at most 64 bytes")
        runtime = base64.urlsafe_b64encode(report_data).rstrip(b"=").decode()
        body = self._get("/aa/evidence", {"runtime_data": runtime, "encoding": "base64"})
        try:
            value = httpx.Response(200, content=body).json()
        except ValueError:
            raise ParseError("coco.malformed", "Attestation Agent evidence is not JSON") from None
        if not isinstance(value, dict):
            raise ParseError("coco.malformed", "Attestation Agent evidence must be a JSON object")
        return value


# ---- the attesters' layouts ----------------------------------------------------------------------


def _bytes(value: Any, size: int | None, what: str) -> bytes:
    if not isinstance(value, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in value):
        raise ParseError("coco.malformed", f"{what} must be a list of bytes")
    if size is not None and len(value) != size:
        raise ParseError("coco.malformed", f"{what} is {len(value)} bytes, want {size}")
    return bytes(value)


def _int(obj: dict[str, Any], name: str, default: int | None = None) -> int:
    value = obj.get(name, default)
    if value is None and default is not None:
        value = default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ParseError("coco.malformed", f"{name} must be a non-negative integer")
    return value


def _tcb(value: Any, what: str) -> int:
    from veil.attest.snp.abi import TcbVersion

    if not isinstance(value, dict):
        raise ParseError("coco.malformed", f"{what} must be an object")
    fmc = value.get("fmc")
    tcb = TcbVersion(
        _int(value, "bootloader"),
        _int(value, "tee"),
        _int(value, "snp"),
        _int(value, "microcode"),
        None if fmc is None else _int(value, "fmc"),
    )
    return tcb.encode()


def report_from_sev_json(obj: Any) -> bytes:
    """The 1184-byte SEV-SNP report from the sev crate's serde form (as the Agent sends it)."""
    from veil.attest.snp.abi import Report

    if not isinstance(obj, dict):
        raise ParseError("coco.malformed", "attestation_report must be an object")
    key_info = _int(obj, "key_info")
    signature = obj.get("signature")
    current, committed = obj.get("current"), obj.get("committed")
    if not isinstance(signature, dict) or not isinstance(current, dict) or not isinstance(committed, dict):
        raise ParseError("coco.malformed", "attestation_report lacks signature, current or committed")
    report = Report(
        version=_int(obj, "version"),
        guest_svn=_int(obj, "guest_svn"),
        policy=_int(obj, "policy"),
        family_id=_bytes(obj.get("family_id"), 16, "family_id"),
        image_id=_bytes(obj.get("image_id"), 16, "image_id"),
        vmpl=_int(obj, "vmpl"),
        signature_algo=_int(obj, "sig_algo"),
        current_tcb=_tcb(obj.get("current_tcb"), "current_tcb"),
        platform_info=_int(obj, "plat_info"),
        author_key_en=bool(key_info & 1),
        mask_chip_key=bool(key_info & 2),
        signing_key=(key_info >> 2) & 7,
        report_data=_bytes(obj.get("report_data"), 64, "report_data"),
        measurement=_bytes(obj.get("measurement"), 48, "measurement"),
        host_data=_bytes(obj.get("host_data"), 32, "host_data"),
        id_key_digest=_bytes(obj.get("id_key_digest"), 48, "id_key_digest"),
        author_key_digest=_bytes(obj.get("author_key_digest"), 48, "author_key_digest"),
        report_id=_bytes(obj.get("report_id"), 32, "report_id"),
        report_id_ma=_bytes(obj.get("report_id_ma"), 32, "report_id_ma"),
        reported_tcb=_tcb(obj.get("reported_tcb"), "reported_tcb"),
        chip_id=_bytes(obj.get("chip_id"), 64, "chip_id"),
        committed_tcb=_tcb(obj.get("committed_tcb"), "committed_tcb"),
        current_build=_int(current, "build"),
        current_minor=_int(current, "minor"),
        current_major=_int(current, "major"),
        committed_build=_int(committed, "build"),
        committed_minor=_int(committed, "minor"),
        committed_major=_int(committed, "major"),
        launch_tcb=_tcb(obj.get("launch_tcb"), "launch_tcb"),
        signature_r=_bytes(signature.get("r"), 72, "signature.r"),
        signature_s=_bytes(signature.get("s"), 72, "signature.s"),
        cpuid_fam_id=_int(obj, "cpuid_fam_id", 0),
        cpuid_mod_id=_int(obj, "cpuid_mod_id", 0),
        cpuid_step=_int(obj, "cpuid_step", 0),
        launch_mit_vector=_int(obj, "launch_mit_vector", 0),
        current_mit_vector=_int(obj, "current_mit_vector", 0),
    )
    return report.to_bytes()


def snp_from_agent(evidence: dict[str, Any]) -> tuple[bytes, dict[str, bytes]]:
    """(report, certificates by name: vcek, vlek, ask, ark, crl) from the Agent's SNP evidence."""
    report = report_from_sev_json(evidence.get("attestation_report"))
    certs: dict[str, bytes] = {}
    for entry in evidence.get("cert_chain") or []:
        if not isinstance(entry, dict):
            raise ParseError("coco.malformed", "cert_chain entries must be objects")
        kind = entry.get("cert_type")
        if isinstance(kind, str) and kind.lower() in ("vcek", "vlek", "ask", "ark", "crl"):
            certs[kind.lower()] = _bytes(entry.get("data"), None, f"cert_chain {kind}")
    return report, certs


def tdx_quote_from_agent(evidence: dict[str, Any]) -> bytes:
    """The TD quote from the Agent's TDX evidence (the CC event log is not used by Veil)."""
    quote = evidence.get("quote")
    if not isinstance(quote, str):
        raise ParseError("coco.malformed", "TDX evidence has no base64 quote")
    try:
        return base64.b64decode(quote, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("coco.malformed", "the TDX quote is not base64") from None
