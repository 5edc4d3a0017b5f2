"""Collect vTPM evidence on a live Azure confidential VM (SNP or TDX) through tpm2-tools.

The paravisor exposes the HCL report at TPM NV index 0x01400001 and regenerates it after the guest
writes 64 bytes of user data to 0x01400002; the attestation key is persisted at 0x81000003.
TPM access goes through the ``TpmTools`` protocol so tests use a fake; ``Tpm2Cli`` shells out to
tpm2-tools. Not yet run on a real Azure CVM. The VCEK (SNP) or TD quote (TDX) come from Azure's
instance metadata service and are passed in by the caller.
"""

from __future__ import annotations

import base64
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Protocol

from veil.errors import VeilError

HCL_REPORT_INDEX = 0x01400001
USER_DATA_INDEX = 0x01400002
AK_HANDLE = 0x81000003


class TpmTools(Protocol):
    def nv_write(self, index: int, data: bytes) -> None: ...
    def nv_read(self, index: int) -> bytes: ...
    def quote(self, nonce: bytes) -> tuple[bytes, bytes, list[bytes]]:
        """(TPMS_ATTEST, raw RSASSA signature, SHA-256 PCRs 0..23) for a quote over all PCRs."""
        ...


class Tpm2Cli:
    """TpmTools on top of the tpm2-tools command-line programs."""

    def _run(self, *args: str) -> None:
        try:
            subprocess.run(args, check=True, capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            raise VeilError("azure.collect_failed", f"{args[0]}: {exc}") from exc

    def nv_write(self, index: int, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "in").write_bytes(data)
            self._run("tpm2_nvwrite", "-C", "o", f"{index:#x}", "-i", str(Path(d) / "in"))

    def nv_read(self, index: int) -> bytes:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "out"
            self._run("tpm2_nvread", "-C", "o", f"{index:#x}", "-o", str(out))
            return out.read_bytes()

    def quote(self, nonce: bytes) -> tuple[bytes, bytes, list[bytes]]:
        with tempfile.TemporaryDirectory() as d:
            p = Path(d)
            self._run("tpm2_quote", "-c", f"{AK_HANDLE:#x}", "-l", "sha256:all", "-q", nonce.hex(),
                      "-m", str(p / "msg"), "-s", str(p / "sig"), "-f", "plain",
                      "-o", str(p / "pcrs"), "--pcrs_format", "values")
            pcrs = (p / "pcrs").read_bytes()
            return (p / "msg").read_bytes(), (p / "sig").read_bytes(), [
                pcrs[i : i + 32] for i in range(0, len(pcrs), 32)
            ]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def collect_evidence(
    nonce: bytes,
    *,
    tpm: TpmTools | None = None,
    user_data: bytes | None = None,
    vcek_pem: str | None = None,
    td_quote: bytes | None = None,
) -> dict[str, Any]:
    """Evidence JSON (the layout evidence.py parses) binding ``nonce`` and optional user data."""
    tools = tpm or Tpm2Cli()
    if user_data is not None:
        if len(user_data) != 64:
            raise VeilError("azure.collect_failed", "user data must be 64 bytes")
        tools.nv_write(USER_DATA_INDEX, user_data)
    hcl = tools.nv_read(HCL_REPORT_INDEX)
    message, signature, pcrs = tools.quote(nonce)
    doc: dict[str, Any] = {
        "version": 1,
        "hcl_report": _b64url(hcl),
        "tpm_quote": {"message": message.hex(), "signature": signature.hex(),
                      "pcrs": [p.hex() for p in pcrs]},
    }
    if vcek_pem is not None:
        doc["vcek"] = vcek_pem
    if td_quote is not None:
        doc["td_quote"] = _b64url(td_quote)
    return doc
