"""``sim-azure-snp``, ``sim-azure-tdx``: SIMULATED Azure confidential VMs. NO hardware protection.

They produce exactly what an Azure CVM behind the paravisor gives its guest, in the v2 layout, so
the verifier that judges real Azure CVMs runs unchanged: an HCL report (``HCLA`` header, the
hardware report, the IGVM request header and the runtime claims JSON with ``HCLAkPub``,
``vm-configuration`` and the report_data as ``user-data``), whose hardware report_data is
SHA-256(runtime claims) ‖ zeros; a TPM 2.0 quote (TPMS_ATTEST of type ATTEST_QUOTE over 24 SHA-256
PCRs, the report_data as extraData) signed RSASSA-PKCS1-v1_5 by the simulated vTPM's attestation
key; and a token from a simulated Microsoft Azure Attestation instance (:mod:`veil.attest.sim.maa`)
that *verified* that evidence first, as MAA does, then signed Azure's claims about it.

The hardware under the simulated paravisor is ``sim-snp`` (a SEV-SNP report with its VCEK, ASK/ARK
and CRL) or ``sim-tdx`` (a TDREPORT in the HCL report, the TD quote of the same TD with its PCS
collateral), made by those twins' own attesters. Their roots and the simulated MAA root are made
per deployment and kept in the platform directory; verifiers refuse them unless they are trusted
as simulation roots, and every claim is then labelled simulated. The measurement (SNP launch
measurement, TDX MRTD) is the digest of the installed Veil code, as on the bare twins.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from veil.attest.sim.maa import SimMaa
from veil.errors import ParseError

if TYPE_CHECKING:
    from veil.attest.attester import Attester
    from veil.attest.registry import AttesterConfig
    from veil.attest.sim import SimulatedPlatform
    from veil.manifest import ReferenceValues, ReleasePolicy

SIM_MAA_ISSUER = "https://sim-azure.attest.veil.invalid"
PLATFORMS: Final = {"sim-azure-snp": "snp", "sim-azure-tdx": "tdx"}  # twin -> hardware under the paravisor
MAA_TYPES: Final = {"snp": "sevsnpvm", "tdx": "tdxvm"}
PCR_COUNT = 24
HCL_REPORT_TYPES: Final = {"snp": 2, "tdx": 4}
_KEYS = "azure.json"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64url_int(n: int) -> str:
    return _b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def hcl_report(hw_report: bytes, runtime_claims: bytes, report_type: int) -> bytes:
    """HCLA header ‖ hardware report (1184 bytes) ‖ IGVM request header ‖ runtime claims ‖ padding."""
    igvm = struct.pack("<5I", 20 + len(runtime_claims), 1, report_type, 1, len(runtime_claims))  # hash type 1: SHA-256
    header = struct.pack("<4s4I", b"HCLA", 1, 32 + 1184 + 20 + len(runtime_claims), 2, 0).ljust(32, b"\0")
    return header + hw_report.ljust(1184, b"\0") + igvm + runtime_claims + bytes(64)


def tpms_attest(nonce: bytes, pcr_digest: bytes, clock: int = 1) -> bytes:
    """TPMS_ATTEST (TPM 2.0 Part 2, 10.12.12) of type TPM_ST_ATTEST_QUOTE over SHA-256 PCRs 0..23."""
    return (
        struct.pack(">IH", 0xFF544347, 0x8018)
        + struct.pack(">H", 2)
        + b"\0\x0b"
        + struct.pack(">H", len(nonce))
        + nonce
        + struct.pack(">QIIB", clock, 1, 0, 1)
        + struct.pack(">Q", 0x2000000000000)
        + struct.pack(">IHB", 1, 0x000B, 3)
        + b"\xff\xff\xff"
        + struct.pack(">H", 32)
        + pcr_digest
    )


def td_report(quote: bytes) -> bytes:
    """The 1024-byte TDREPORT (Intel TDX module ABI: REPORTMACSTRUCT, TEE_TCB_INFO, TDINFO) of the
    TD whose quote this is: what the paravisor puts in the HCL report. Its MAC is local to the
    (simulated) CPU and checked by nobody outside it."""
    from veil.attest.tdx.abi import parse_quote

    body = parse_quote(quote).body
    out = bytearray(1024)
    out[0:4] = bytes([0x81, 0, 1, 0])  # REPORTTYPE: TDX, subtype 0, version 1
    out[128:192] = body.report_data
    out[256:264] = (0x1FF).to_bytes(8, "little")  # TEE_TCB_INFO.valid
    out[264:280], out[280:328], out[328:376] = body.tee_tcb_svn, body.mr_seam, body.mr_signer_seam
    out[376:384] = body.seam_attributes
    tdinfo = (
        body.td_attributes
        + body.xfam
        + body.mr_td
        + body.mr_config_id
        + body.mr_owner
        + body.mr_owner_config
        + b"".join(body.rtmrs)
    )
    out[512 : 512 + len(tdinfo)] = tdinfo
    out[224:256] = hashlib.sha256(b"veil/sim-azure-tdx/mac" + bytes(out[:224])).digest()
    return bytes(out)


class SimAzureCvm:
    """One simulated Azure CVM: the simulated hardware under the paravisor (a ``sim-snp`` or
    ``sim-tdx`` machine, and its attester), its vTPM's attestation key and PCRs, and the simulated
    MAA instance, persisted in ``directory`` (``snp/`` or ``tdx/``, and ``azure.json``, 0600)."""

    def __init__(self, platform: str, directory: Path, machine: SimulatedPlatform, ak: rsa.RSAPrivateKey, maa: SimMaa) -> None:
        self.platform, self.directory, self.machine, self.ak, self.maa = platform, directory, machine, ak, maa
        self.kind = PLATFORMS[platform]
        self.launch: bytes | None = None  # what the simulated VMM set at launch (HOST_DATA / MRCONFIGID)
        self.pcrs = [hashlib.sha256(b"veil/sim-azure/pcr/%d" % i).digest() for i in range(PCR_COUNT)]

    @functools.cached_property
    def hardware(self) -> Attester:
        """The simulated hardware's own attester (its report, measurement and sealing key)."""
        from veil.attest import registry

        return registry.attester(
            f"sim-{self.kind}", registry.AttesterConfig(sim_dir=self.directory / self.kind, launch_data=self.launch)
        )

    @property
    def simulation_roots(self) -> list[str]:
        """What a manifest's ``trusted_simulation_roots`` must name: the hardware's and the MAA's root."""
        return [self.machine.root_fingerprint, self.maa.root_fingerprint]

    @property
    def root_fingerprint(self) -> str:
        return self.machine.root_fingerprint

    def runtime_claims(self, report_data: bytes) -> bytes:
        pub = self.ak.public_key().public_numbers()
        return json.dumps(
            {
                "keys": [
                    {"kid": "HCLAkPub", "key_ops": ["sign"], "kty": "RSA", "e": _b64url_int(pub.e), "n": _b64url_int(pub.n)}
                ],
                "vm-configuration": {
                    "console-enabled": False,
                    "secure-boot": True,
                    "tpm-enabled": True,
                    "vmUniqueId": "00000000-0000-0000-0000-000000000000",
                },
                "user-data": report_data.ljust(64, b"\0").hex().upper(),
            },
            separators=(",", ":"),
        ).encode()

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        """The CVM's evidence in Veil's wire form, with the MAA token for it."""
        runtime = self.runtime_claims(report_data)
        hw = self.hardware.evidence(hashlib.sha256(runtime).digest() + bytes(32))
        message = tpms_attest(report_data, hashlib.sha256(b"".join(self.pcrs)).digest())
        vtpm: dict[str, Any] = {
            "version": 2,
            "tpm_quote": {
                "message": message.hex(),
                "signature": self.ak.sign(message, padding.PKCS1v15(), hashes.SHA256()).hex(),
                "pcrs": [p.hex() for p in self.pcrs],
            },
        }
        wire: dict[str, Any] = {"platform": self.platform, "vtpm": vtpm}
        if self.kind == "snp":
            snp = hw["snp"]  # report, vcek, chain, crl: base64
            hw_report = base64.b64decode(snp["report"])
            vtpm.update(
                hcl_report=_b64url(hcl_report(hw_report, runtime, HCL_REPORT_TYPES["snp"])),
                vcek=_b64url(base64.b64decode(snp["vcek"])),
            )
            wire.update(chain=snp["chain"], crl=snp["crl"])
            from veil.attest.snp.abi import parse_report

            parsed = parse_report(hw_report)
            report = {
                "x-ms-sevsnpvm-launchmeasurement": parsed.measurement.hex(),
                "x-ms-sevsnpvm-reportdata": parsed.report_data.hex(),
                "x-ms-sevsnpvm-is-debuggable": parsed.debug,
                "x-ms-sevsnpvm-vmpl": parsed.vmpl,
            }
        else:
            from veil.attest.tdx.abi import parse_quote

            quote = base64.b64decode(hw["tdx"]["quote"])
            vtpm.update(
                hcl_report=_b64url(hcl_report(td_report(quote), runtime, HCL_REPORT_TYPES["tdx"])), td_quote=_b64url(quote)
            )
            wire["collateral"] = hw["tdx"]["collateral"]
            body = parse_quote(quote).body
            report = {
                "tdx_mrtd": body.mr_td.hex(),
                "tdx_report_data": body.report_data.hex(),
                "tdx_mrseam": body.mr_seam.hex(),
                "tdx_td_attributes_debug": bool(body.td_attributes_int & 1),
                **{f"tdx_rtmr{i}": r.hex() for i, r in enumerate(body.rtmrs)},
            }
        self._appraise_as_maa(wire, report_data)
        runtime_json = json.loads(runtime)
        claims = self.maa.cvm_claims(runtime=runtime_json, report=report, kind=MAA_TYPES[self.kind])
        return {**wire, "maa": {"token": self.maa.issue(claims), "certs": self.maa.certs()}}

    def _appraise_as_maa(self, wire: dict[str, Any], report_data: bytes) -> None:
        """What MAA does before it signs anything: verify the evidence (here with Veil's verifier,
        trusting this simulated hardware). A token is never issued for evidence that does not verify."""
        from veil.attest import registry
        from veil.attest.api import Binding, VerifyOptions
        from veil.attest.trust import TrustRoots

        trust = TrustRoots.production().with_simulation(self.machine.root_fingerprint)
        registry.verifier(self.platform).verify(wire, VerifyOptions(Binding.to(report_data), trust))

    def sealing_key(self) -> bytes:
        return self.hardware.sealing_key()

    def launch_data(self) -> bytes:
        """The simulated hardware's HOST_DATA / MRCONFIGID (where Veil carries the bootstrap admin key)."""
        return self.hardware.launch_data()

    @property
    def measurement(self) -> bytes:
        return bytes(self.hardware.measurement)  # type: ignore[attr-defined]

    # ---- persistence ------------------------------------------------------------------------------
    @classmethod
    def load_or_create(cls, platform: str, directory: str | os.PathLike[str]) -> SimAzureCvm:
        from veil.attest import sim

        if platform not in PLATFORMS:
            raise ParseError("sim.unknown_platform", f"{platform!r} is not a simulated Azure CVM")
        path = Path(directory)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        machine = sim.load_or_create(f"sim-{PLATFORMS[platform]}", path / PLATFORMS[platform])
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
        return cls(platform, path, machine, ak, maa)


def sim_reference(platform: str, measurement: str) -> ReferenceValues:
    """A manifest's reference values for this twin (coordinators and workers): the code's
    measurement, and an MAA token from the simulated instance (its root is one of
    :attr:`SimAzureCvm.simulation_roots`)."""
    from veil.manifest import AzureReference, MaaReference, ReferenceValues

    kind = PLATFORMS[platform]
    maa = MaaReference(issuers=[SIM_MAA_ISSUER], attestation_types=[MAA_TYPES[kind]])
    # the measurement is the SNP launch measurement or the TDX MRTD
    return ReferenceValues.model_validate({"platform": platform, "measurements": [measurement], "azure": AzureReference(maa=maa)})


def sim_release_policy(platform: str, measurement: str) -> ReleasePolicy:
    """The model key's release policy on this twin: the code's measurement, and Azure Key Vault's
    Secure Key Release grammar exactly as Azure's CVM tutorial writes it, over the simulated MAA's
    verified claims (the key goes only to a CVM that MAA attested as a compliant CVM of its kind)."""
    from veil.manifest import ReleasePolicy

    skr = {
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": SIM_MAA_ISSUER,
                "allOf": [
                    {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": MAA_TYPES[PLATFORMS[platform]]},
                    {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"},
                ],
            }
        ],
    }
    return ReleasePolicy.model_validate(
        {"platforms": [platform], "measurements": [measurement], "allow_simulated": True, "skr": skr}
    )


def _attester(platform: str, config: AttesterConfig) -> SimAzureCvm:
    if config.sim_dir is None:
        raise ParseError("attest.missing_sim_dir", f"{platform} needs the simulated platform's directory (--sim-dir)")
    cvm = SimAzureCvm.load_or_create(platform, config.sim_dir)
    cvm.launch = config.launch_data
    return cvm


def sim_azure_snp_attester(config: AttesterConfig) -> SimAzureCvm:
    """The attester of ``veil coordinator|worker --platform sim-azure-snp --sim-dir D``."""
    return _attester("sim-azure-snp", config)


def sim_azure_tdx_attester(config: AttesterConfig) -> SimAzureCvm:
    """The attester of ``veil coordinator|worker --platform sim-azure-tdx --sim-dir D``."""
    return _attester("sim-azure-tdx", config)
