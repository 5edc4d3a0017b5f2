"""Collect vTPM evidence on a live Azure confidential VM (SNP or TDX) through tpm2-tools.

The paravisor exposes the HCL report at TPM NV index 0x01400001 and regenerates it after the guest
writes 64 bytes of user data to 0x01400002; the attestation key is persisted at 0x81000003.
TPM access goes through the ``TpmTools`` protocol so tests use a fake; ``Tpm2Cli`` shells out to
tpm2-tools. Not yet run on a real Azure CVM. The VCEK (SNP) and the TD quote of the HCL's TDREPORT
(TDX) come from Azure's instance metadata service (``imds_vcek``, ``imds_td_quote``), as
az-cvm-vtpm fetches them. Evidence is written in the v2 layout: the report_data is both the TPM
quote's nonce and the runtime claims' user-data.
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
            self._run(
                "tpm2_quote",
                "-c",
                f"{AK_HANDLE:#x}",
                "-l",
                "sha256:all",
                "-q",
                nonce.hex(),
                "-m",
                str(p / "msg"),
                "-s",
                str(p / "sig"),
                "-f",
                "plain",
                "-o",
                str(p / "pcrs"),
                "--pcrs_format",
                "values",
            )
            pcrs = (p / "pcrs").read_bytes()
            return (p / "msg").read_bytes(), (p / "sig").read_bytes(), [pcrs[i : i + 32] for i in range(0, len(pcrs), 32)]


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
        "version": 2 if user_data is not None else 1,
        "hcl_report": _b64url(hcl),
        "tpm_quote": {"message": message.hex(), "signature": signature.hex(), "pcrs": [p.hex() for p in pcrs]},
    }
    if vcek_pem is not None:
        doc["vcek"] = vcek_pem
    if td_quote is not None:
        doc["td_quote"] = _b64url(td_quote)
    return doc


IMDS = "http://169.254.169.254"


def imds_vcek(http: Any = None) -> str:
    """The VCEK (PEM) Azure's host provides for this CVM's chip and TCB (THIM endpoint)."""
    import httpx

    try:
        resp = (http or httpx).get(f"{IMDS}/metadata/THIM/amd/certification", headers={"Metadata": "true"}, timeout=10)
        resp.raise_for_status()
        return str(resp.json()["vcekCert"])
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise VeilError("azure.collect_failed", f"the instance metadata service gave no VCEK: {exc}") from None


def imds_td_quote(td_report: bytes, http: Any = None) -> bytes:
    """The TD quote Azure's quoting service makes of the HCL's TDREPORT."""
    import httpx

    try:
        resp = (http or httpx).post(
            f"{IMDS}/acc/tdquote", json={"report": _b64url(td_report)}, headers={"Metadata": "true"}, timeout=30
        )
        resp.raise_for_status()
        quote = resp.json()["quote"]
        return base64.urlsafe_b64decode(quote + "=" * (-len(quote) % 4))
    except (httpx.HTTPError, KeyError, ValueError, TypeError) as exc:
        raise VeilError("azure.collect_failed", f"the instance metadata service gave no TD quote: {exc}") from None


class AzureVtpmAttester:
    """A real Azure confidential VM (behind the paravisor): v2 vTPM evidence, the VCEK or TD quote
    from the instance metadata service (the VCEK fetched once). Not run on an Azure CVM yet."""

    def __init__(self, platform: str, tpm: TpmTools | None = None, http: Any = None) -> None:
        self.platform = platform
        self._tpm = tpm or Tpm2Cli()
        self._http = http  # None: a plain request to the metadata service
        self._vcek: str | None = None

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        from veil.attest.azure.hcl import parse_hcl_report

        if self.platform == "azure-snp-vtpm":
            self._vcek = self._vcek or imds_vcek(self._http)
            doc = collect_evidence(report_data, tpm=self._tpm, user_data=report_data, vcek_pem=self._vcek)
        else:
            doc = collect_evidence(report_data, tpm=self._tpm, user_data=report_data)
            hcl = parse_hcl_report(base64.urlsafe_b64decode(doc["hcl_report"] + "=" * (-len(doc["hcl_report"]) % 4)))
            doc["td_quote"] = _b64url(imds_td_quote(hcl.td_report, self._http))
        return {"platform": self.platform, "vtpm": doc}

    def launch_data(self) -> bytes:
        """None that the deployment chooses: under Azure's paravisor, Azure sets HOST_DATA /
        MRCONFIGID, so no bootstrap admin key is carried there and a coordinator on an Azure CVM
        accepts no first manifest (``manifest.no_bootstrap_key``) until the key has another
        measured home (fail closed)."""
        return bytes(32)

    def sealing_key(self) -> bytes:
        from veil.errors import ProtocolError

        raise ProtocolError(
            "sealing.unavailable",
            "an Azure CVM guest has no hardware sealing key (the paravisor "
            "holds the VMPL0 keys): run the coordinator without --db, or restore it with `veil recover`",
        )


def vtpm_attester(platform: str) -> Any:
    """Registry factories: ``azure-snp-vtpm`` and ``azure-tdx-vtpm``."""
    return lambda config: AzureVtpmAttester(platform)


snp_vtpm_attester = vtpm_attester("azure-snp-vtpm")
tdx_vtpm_attester = vtpm_attester("azure-tdx-vtpm")
