"""``sim-azure-snp``: a SIMULATED Azure SEV-SNP confidential VM. It gives NO hardware protection.

It produces exactly what an Azure CVM behind the paravisor gives its guest, in the v2 layout, so
the verifier that judges real Azure CVMs runs unchanged: an HCL report (``HCLA`` header, a
SEV-SNP report signed by the simulated chip of :mod:`veil.attest.sim.platform`, the IGVM header
and the runtime claims JSON with ``HCLAkPub``, ``vm-configuration`` and the report_data as
``user-data``), whose report_data is SHA-256(runtime claims); a TPM 2.0 quote (TPMS_ATTEST of
type ATTEST_QUOTE over 24 SHA-256 PCRs, the report_data as extraData) signed RSASSA-PKCS1-v1_5
by the simulated vTPM's attestation key; the VCEK, ASK/ARK and CRL of the simulated chip; and a
token from a simulated Microsoft Azure Attestation instance (:mod:`veil.attest.sim.maa`) that
*verified* that evidence first, as MAA does, then signed Azure's claims about it.

Roots (the simulated ARK and the simulated MAA root) are made per deployment and kept in the
platform directory; verifiers refuse them unless they are trusted as simulation roots, and every
claim is then labelled simulated. The measurement is the digest of the installed Veil code, as on
``sim-snp``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from veil.attest.sim.maa import SimMaa
from veil.attest.sim.platform import SimPlatform

if TYPE_CHECKING:
    from veil.manifest import ReferenceValues, ReleasePolicy

PLATFORM: Final = "sim-azure-snp"
SIM_MAA_ISSUER = "https://sim-azure.attest.veil.invalid"
PCR_COUNT = 24
_KEYS = "azure.json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64url_int(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def hcl_report(hw_report: bytes, runtime_claims: bytes, report_type: int = 2) -> bytes:
    """HCLA header ‖ hardware report (1184 bytes) ‖ IGVM request header ‖ runtime claims ‖ padding."""
    igvm = struct.pack("<5I", 20 + len(runtime_claims), 1, report_type, 1, len(runtime_claims))  # hash type 1: SHA-256
    header = struct.pack("<4s4I", b"HCLA", 1, 32 + 1184 + 20 + len(runtime_claims), 2, 0).ljust(32, b"\0")
    return header + hw_report.ljust(1184, b"\0") + igvm + runtime_claims + bytes(64)


def tpms_attest(nonce: bytes, pcr_digest: bytes, clock: int = 1) -> bytes:
    """TPMS_ATTEST (TPM 2.0 Part 2, 10.12.12) of type TPM_ST_ATTEST_QUOTE over SHA-256 PCRs 0..23."""
    return (struct.pack(">IH", 0xFF544347, 0x8018) + struct.pack(">H", 2) + b"\0\x0b"
            + struct.pack(">H", len(nonce)) + nonce + struct.pack(">QIIB", clock, 1, 0, 1)
            + struct.pack(">Q", 0x2000000000000) + struct.pack(">IHB", 1, 0x000B, 3) + b"\xff\xff\xff"
            + struct.pack(">H", 32) + pcr_digest)


class SimAzureSnp:
    """One simulated Azure SEV-SNP CVM: the simulated chip, its vTPM's attestation key and PCRs,
    and the simulated MAA instance, persisted in ``directory``."""

    def __init__(self, directory: Path, chip: SimPlatform, ak: rsa.RSAPrivateKey, maa: SimMaa) -> None:
        self.directory, self.chip, self.ak, self.maa = directory, chip, ak, maa
        self.pcrs = [hashlib.sha256(b"veil/sim-azure/pcr/%d" % i).digest() for i in range(PCR_COUNT)]

    @property
    def simulation_roots(self) -> list[str]:
        """What a manifest's ``trusted_simulation_roots`` must name: the chip's ARK and the MAA root."""
        return [self.chip.root_fingerprint, self.maa.root_fingerprint]

    @property
    def root_fingerprint(self) -> str:
        return self.chip.root_fingerprint

    def runtime_claims(self, report_data: bytes) -> bytes:
        pub = self.ak.public_key().public_numbers()
        return json.dumps({
            "keys": [{"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA", "e": _b64url_int(pub.e), "n": _b64url_int(pub.n)}],
            "vm-configuration": {"console-enabled": False, "secure-boot": True, "tpm-enabled": True,
                                 "vmUniqueId": "00000000-0000-0000-0000-000000000000"},
            "user-data": report_data.ljust(64, b"\0").hex().upper(),
        }, separators=(",", ":")).encode()

    def evidence(self, report_data: bytes, measurement: bytes) -> dict[str, Any]:
        """The CVM's evidence in Veil's wire form, with the MAA token for it."""
        from veil.attest.azure.evidence import parse_evidence

        runtime = self.runtime_claims(report_data)
        snp = self.chip.attest(hashlib.sha256(runtime).digest() + bytes(32), measurement=measurement)
        message = tpms_attest(report_data, hashlib.sha256(b"".join(self.pcrs)).digest())
        signature = self.ak.sign(message, padding.PKCS1v15(), hashes.SHA256())
        vtpm = {"version": 2, "hcl_report": _b64url(hcl_report(snp.report, runtime)),
                "tpm_quote": {"message": message.hex(), "signature": signature.hex(), "pcrs": [p.hex() for p in self.pcrs]},
                "vcek": _b64url(snp.vcek)}
        wire = {"platform": PLATFORM, "vtpm": vtpm, "chain": base64.b64encode(snp.chain_pem).decode(),
                "crl": base64.b64encode(snp.crl or b"").decode()}
        self._appraise_as_maa(wire, report_data)
        ev = parse_evidence(vtpm)
        report = ev.hcl.hw_report
        maa_claims = self.maa.cvm_claims(runtime=ev.hcl.runtime, report={
            "x-ms-sevsnpvm-launchmeasurement": report[0x90:0xC0].hex(), "x-ms-sevsnpvm-reportdata": report[0x50:0x90].hex(),
            "x-ms-sevsnpvm-is-debuggable": False, "x-ms-sevsnpvm-vmpl": 0})
        return {**wire, "maa": {"token": self.maa.issue(maa_claims), "certs": self.maa.certs()}}

    def _appraise_as_maa(self, wire: dict[str, Any], report_data: bytes) -> None:
        """What MAA does before it signs anything: verify the evidence (here with Veil's verifier,
        trusting this simulated chip). A token is never issued for evidence that does not verify."""
        from veil.attest.api import Binding, VerifyOptions
        from veil.attest.azure.platform import SIM_AZURE_SNP
        from veil.attest.trust import TrustRoots

        trust = TrustRoots.production().with_simulation(self.chip.root_fingerprint)
        SIM_AZURE_SNP.verify(wire, VerifyOptions(Binding.to(report_data), trust))

    # ---- persistence ------------------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> SimAzureSnp:
        path = Path(directory)
        chip = SimPlatform.load_or_create(path / "snp")
        keys = path / _KEYS
        if keys.exists():
            doc = json.loads(keys.read_text())
            ak = serialization.load_pem_private_key(doc["ak"].encode(), None)
            assert isinstance(ak, rsa.RSAPrivateKey)
            maa = SimMaa.from_json(doc["maa"])
        else:
            ak = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            maa = SimMaa(issuer=SIM_MAA_ISSUER)
            pem = ak.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            fd = os.open(keys, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"ak": pem.decode(), "maa": maa.to_json()}, fh)
        return cls(path, chip, ak, maa)


class SimAzureSnpAttester:
    """The attester of ``veil coordinator|worker --platform sim-azure-snp --sim-dir D``."""

    platform = PLATFORM

    def __init__(self, platform_dir: Path) -> None:
        from veil.attest.attester import SimSnpAttester
        from veil.attest.sim import measure_code

        self._cvm = SimAzureSnp.load_or_create(platform_dir)
        self._sealing = SimSnpAttester(platform_dir / "snp")  # the simulated chip's sealing key
        self.measurement = measure_code()

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        return self._cvm.evidence(report_data, self.measurement)

    def sealing_key(self) -> bytes:
        return self._sealing.sealing_key()


def sim_worker_reference(measurement: str) -> ReferenceValues:
    """A manifest's reference values for this twin: the code's measurement, and an MAA token from
    the simulated instance (its root is one of :attr:`SimAzureSnp.simulation_roots`)."""
    from veil.manifest import AzureReference, MaaReference, ReferenceValues

    return ReferenceValues(platform=PLATFORM, measurements=[measurement],
                           azure=AzureReference(maa=MaaReference(issuers=[SIM_MAA_ISSUER], attestation_types=["sevsnpvm"])))


def sim_release_policy(measurement: str) -> ReleasePolicy:
    """The model key's release policy on this twin: the code's measurement, and Azure Key Vault's
    Secure Key Release grammar exactly as Azure's CVM tutorial writes it, over the simulated MAA's
    verified claims (the key goes only to a CVM that MAA attested as compliant SEV-SNP)."""
    from veil.manifest import ReleasePolicy

    skr = {"version": "1.0.0", "anyOf": [{"authority": SIM_MAA_ISSUER, "allOf": [
        {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"}]}]}
    return ReleasePolicy(platforms=[PLATFORM], measurements=[measurement], allow_simulated=True, skr=skr)


def sim_azure_snp_attester(config: Any) -> SimAzureSnpAttester:
    from veil.errors import ParseError

    if config.sim_dir is None:
        raise ParseError("attest.missing_sim_dir", "sim-azure-snp needs the simulated platform's directory (--sim-dir)")
    return SimAzureSnpAttester(Path(config.sim_dir))
