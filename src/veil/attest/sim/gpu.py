"""A SIMULATED NVIDIA H100 (``veil up --sim-gpu``): the real evidence formats, NO hardware protection.

It produces exactly what a CC-mode H100 and NVIDIA's services give a worker, so the coordinator
runs the verifier that judges real GPUs: an SPDM 1.1 GET_MEASUREMENTS report signed with ECDSA
P-384 by a DICE-style leaf (its TCG TcbInfo extension certifies the FWID), a chain leaf ←
provisioner CA ← device root, a driver RIM and a VBIOS RIM (SWID tags enveloped-signed with
XML-DSig ECDSA-SHA384 / C14N 1.1 by ``signxml``, chain RIM signer ← RIM root) and signed OCSP
responses for every certificate that needs one. Both roots are generated per deployment, their
subjects say SIMULATED, and verifiers refuse them unless the caller trusts their fingerprints as
simulation roots; a GPU verified against them is labelled simulated.

Dev-tools mode: a real GPU in CC dev-tools mode measures its configuration differently, so its
report no longer matches the RIMs' golden values. The simulation models that on one block
(``DEVTOOLS_BLOCK``), and NVML's CC state (which the host reports) says so too unless the
simulated host lies (``host_says_devtools``): the attack tests use both.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veil.attest.nvidia import NvidiaEvidence
from veil.attest.nvidia.abi import OpaqueField
from veil.attest.nvidia.rim import DSIG_NS, SHA384_NS, SWID_NS, rim_ids
from veil.attest.nvidia.verify import TCG_DICE_TCB_INFO, fingerprint
from veil.attest.sim.certs import signing_key_usage

SIMULATED = "SIMULATED"
SHA384_OID = bytes.fromhex("608648016503040202")
DEFAULT_FWID = bytes.fromhex("ab" * 48)
DEFAULT_DRIVER = "550.90.07"
DEFAULT_VBIOS = bytes.fromhex("009f009601000000")  # 96.00.9F.00.01
BLOCKS = 16  # measurement blocks the simulated GPU reports (a real H100 reports 64)
DRIVER_BLOCKS = frozenset(range(9, BLOCKS + 1))  # the driver RIM's indices; the VBIOS RIM has the rest
DEVTOOLS_BLOCK = 9  # the block that measures the CC configuration (dev-tools changes it)
OPAQUE_IDS = {OpaqueField.PROJECT: b"1010\x00", OpaqueField.PROJECT_SKU: b"0200\x00", OpaqueField.CHIP_SKU: b"882\x00"}
_FILE = "gpu.json"


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n]) if n < 0x80 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def nvidia_tcb_info(public_key: ec.EllipticCurvePublicKey, fwid: bytes) -> bytes:
    """The GH100 leaf's TcbInfo value: SEQUENCE { 1, SubjectPublicKeyInfo, FWID(sha384) }."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    fwid_seq = _der(0x30, _der(0x06, SHA384_OID) + _der(0x04, fwid))
    return _der(0x30, _der(0x02, b"\x01") + spki + fwid_seq)


def build_report(
    key: ec.EllipticCurvePrivateKey,
    nonce: bytes,
    *,
    blocks: dict[int, bytes],
    opaque: dict[int, bytes],
    trailing: bytes = b"",
    version: int = 0x11,
    operation: int = 0xFF,
) -> bytes:
    """An SPDM GET_MEASUREMENTS request + signed response, DMTF digest blocks of type 1."""
    request = bytes([version, 0xE0, 0x01, operation]) + nonce + b"\x00"
    record = b""
    for index, value in sorted(blocks.items()):
        dmtf = bytes([0x01]) + len(value).to_bytes(2, "little") + value
        record += bytes([index, 0x01]) + len(dmtf).to_bytes(2, "little") + dmtf
    opaque_bytes = b"".join(k.to_bytes(2, "little") + len(v).to_bytes(2, "little") + v for k, v in opaque.items())
    response = (
        bytes([version, 0x60, 0x00, 0x00, len(blocks)])
        + len(record).to_bytes(3, "little")
        + record
        + bytes(range(32))
        + len(opaque_bytes).to_bytes(2, "little")
        + opaque_bytes
    )
    signed = request + response
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA384())))
    return signed + r.to_bytes(48, "big") + s.to_bytes(48, "big") + trailing


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Veil {SIMULATED} GPU (not NVIDIA)"),
        ]
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_before: dt.datetime,
    not_after: dt.datetime,
    tcb_info: bytes | None = None,
    ocsp_signing: bool = False,
) -> x509.Certificate:
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    b = b.add_extension(signing_key_usage(ca), critical=True)
    if ocsp_signing:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
    if tcb_info is not None:
        b = b.add_extension(x509.UnrecognizedExtension(TCG_DICE_TCB_INFO, tcb_info), critical=False)
    return b.sign(issuer_key, hashes.SHA384())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def _load_key(pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def golden_blocks() -> dict[int, bytes]:
    """The simulated firmware's measurements in CC production mode (what its RIMs say)."""
    return {i: hashlib.sha384(b"veil/sim-gpu/measurement/%d" % i).digest() for i in range(1, BLOCKS + 1)}


@dataclass
class SimGpu:
    """One simulated GH100 with its roots, RIM signer and OCSP responders (see the module docstring).

    The keyword fields change what the GPU reports (tests of refusals); ``devtools`` puts it in
    CC dev-tools mode, ``host_says_devtools`` is what NVML reports (defaults to the truth).
    """

    fwid: bytes = DEFAULT_FWID
    cert_fwid: bytes | None = None  # what the leaf certifies; defaults to ``fwid``
    driver: str = DEFAULT_DRIVER
    vbios: bytes = DEFAULT_VBIOS
    blocks: dict[int, bytes] = field(default_factory=golden_blocks)
    not_before: dt.datetime = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    not_after: dt.datetime = dt.datetime(2034, 1, 1, tzinfo=dt.timezone.utc)
    devtools: bool = False
    host_says_devtools: bool | None = None
    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict, repr=False)
    certs: dict[str, x509.Certificate] = field(default_factory=dict, repr=False)
    rim_docs: dict[str, bytes] = field(default_factory=dict, repr=False)  # made once, like NVIDIA's files

    def __post_init__(self) -> None:
        for name in ("root", "ca", "leaf", "rim_root", "rim_signer"):
            self.keys.setdefault(name, ec.generate_private_key(ec.SECP384R1()))
        if self.certs:
            return
        k, nb, na = self.keys, self.not_before, self.not_after
        root, ca = f"{SIMULATED} Device Identity CA", f"{SIMULATED} GH100 Provisioner"
        rim_root = f"{SIMULATED} CoRIM signing Root CA"
        self.certs = {
            "root": _cert(root, k["root"], root, k["root"], ca=True, not_before=nb, not_after=na),
            "ca": _cert(ca, k["ca"], root, k["root"], ca=True, not_before=nb, not_after=na),
            "leaf": _cert(
                f"GH100 A01 GSP FMC LF {SIMULATED}",
                k["leaf"],
                ca,
                k["ca"],
                ca=False,
                not_before=nb,
                not_after=na,
                tcb_info=nvidia_tcb_info(k["leaf"].public_key(), self.cert_fwid or self.fwid),
            ),
            "rim_root": _cert(rim_root, k["rim_root"], rim_root, k["rim_root"], ca=True, not_before=nb, not_after=na),
            "rim_signer": _cert(
                f"{SIMULATED} RIM Signer", k["rim_signer"], rim_root, k["rim_root"], ca=False, not_before=nb, not_after=na
            ),
        }

    # ---- identity -------------------------------------------------------------------------------
    @property
    def root_fingerprint(self) -> str:
        return fingerprint(self.certs["root"])

    @property
    def rim_root_fingerprint(self) -> str:
        return fingerprint(self.certs["rim_root"])

    @property
    def simulation_roots(self) -> list[str]:
        """What a manifest's ``trusted_simulation_roots`` must name to accept this GPU."""
        return [self.root_fingerprint, self.rim_root_fingerprint]

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs["leaf"]

    def chain_pem(self) -> bytes:
        return b"".join(self.certs[n].public_bytes(Encoding.PEM) for n in ("leaf", "ca", "root"))

    # ---- the report -----------------------------------------------------------------------------
    def measured(self) -> dict[int, bytes]:
        blocks = dict(self.blocks)
        if self.devtools and DEVTOOLS_BLOCK in blocks:
            blocks[DEVTOOLS_BLOCK] = hashlib.sha384(b"veil/sim-gpu/devtools-configuration").digest()
        return blocks

    def opaque(self) -> dict[int, bytes]:
        return {
            int(OpaqueField.VBIOS_VERSION): self.vbios,
            int(OpaqueField.DRIVER_VERSION): self.driver.encode() + b"\x00",
            **{int(k): v for k, v in OPAQUE_IDS.items()},
            int(OpaqueField.FWID): self.fwid,
        }

    def report(self, nonce: bytes, trailing: bytes = b"") -> bytes:
        return build_report(self.keys["leaf"], nonce, blocks=self.measured(), opaque=self.opaque(), trailing=trailing)

    # ---- RIMs -----------------------------------------------------------------------------------
    def _rim(self, version: str, indices: frozenset[int], tag: str) -> bytes:
        from lxml import etree  # type: ignore[import-untyped]
        from signxml.signer import XMLSigner
        from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod

        golden = golden_blocks()
        root = etree.Element(
            f"{{{SWID_NS}}}SoftwareIdentity",
            nsmap={None: SWID_NS, "ns2": SHA384_NS},
            attrib={
                "name": "GH100",
                "tagId": tag,
                "version": "1.0",
                "corpus": "false",
                "patch": "false",
                "supplemental": "false",
                "tagVersion": "0",
            },
        )
        etree.SubElement(root, f"{{{SWID_NS}}}Entity", name=f"Veil {SIMULATED} (not NVIDIA)", role="softwareCreator tagCreator")
        etree.SubElement(root, f"{{{SWID_NS}}}Meta", colloquialVersion=version, edition="GPU", product="GH100")
        payload = etree.SubElement(root, f"{{{SWID_NS}}}Payload")
        for block in range(1, BLOCKS + 1):
            res = etree.SubElement(
                payload,
                f"{{{SWID_NS}}}Resource",
                type="Measurement",
                index=str(block - 1),
                active="True" if block in indices else "False",
                alternatives="1",
                name=f"Measurement_{block - 1}",
                size="48",
            )
            res.set(f"{{{SHA384_NS}}}Hash0", (golden[block] if block in indices else bytes(48)).hex())
        signed = XMLSigner(
            signature_algorithm=SignatureMethod.ECDSA_SHA384,
            digest_algorithm=DigestAlgorithm.SHA384,
            c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
        ).sign(
            root,
            key=self.keys["rim_signer"],
            cert=[self.certs[n].public_bytes(Encoding.PEM).decode() for n in ("rim_signer", "rim_root")],
        )
        assert signed.find(f"{{{DSIG_NS}}}Signature") is not None
        signed_xml: bytes = etree.tostring(signed)
        return signed_xml

    def rims(self) -> dict[str, bytes]:
        """RIM id -> document: this GPU's driver RIM and VBIOS RIM, as NVIDIA's RIM service files them."""
        from veil.attest.nvidia.abi import format_vbios_version

        if self.rim_docs:
            return dict(self.rim_docs)
        vbios = format_vbios_version(self.vbios)
        driver_id, vbios_id = rim_ids(self.driver, vbios, {"project": "1010", "project_sku": "0200", "chip_sku": "882"})
        every = frozenset(range(1, BLOCKS + 1))
        self.rim_docs = {
            driver_id: self._rim(self.driver, DRIVER_BLOCKS, driver_id),
            vbios_id: self._rim(vbios, every - DRIVER_BLOCKS, vbios_id),
        }
        return dict(self.rim_docs)

    # ---- revocation -----------------------------------------------------------------------------
    def ocsp_responses(self, now: dt.datetime | None = None, revoked: frozenset[str] = frozenset()) -> dict[str, bytes]:
        """Certificate fingerprint -> DER OCSP response (issuer-signed) for the provisioner CA and
        the RIM signer; names in ``revoked`` ("ca", "rim_signer") are answered REVOKED."""
        now = now or dt.datetime.now(dt.timezone.utc)
        out = {}
        for name, issuer in (("ca", "root"), ("rim_signer", "rim_root")):
            cert = self.certs[name]
            status = ocsp.OCSPCertStatus.REVOKED if name in revoked else ocsp.OCSPCertStatus.GOOD
            builder = (
                ocsp.OCSPResponseBuilder()
                .add_response(
                    cert=cert,
                    issuer=self.certs[issuer],
                    algorithm=hashes.SHA384(),
                    cert_status=status,
                    this_update=now - dt.timedelta(minutes=1),
                    next_update=now + dt.timedelta(days=1),
                    revocation_time=now - dt.timedelta(hours=1) if name in revoked else None,
                    revocation_reason=x509.ReasonFlags.key_compromise if name in revoked else None,
                )
                .responder_id(ocsp.OCSPResponderEncoding.HASH, self.certs[issuer])
            )
            out[fingerprint(cert)] = builder.sign(self.keys[issuer], hashes.SHA384()).public_bytes(Encoding.DER)
        return out

    # ---- evidence -------------------------------------------------------------------------------
    def host_cc(self) -> dict[str, int]:
        says = self.devtools if self.host_says_devtools is None else self.host_says_devtools
        return {"cc_feature": 1, "dev_tools_mode": int(says)}

    def evidence(
        self, nonce: bytes, *, now: dt.datetime | None = None, revoked: frozenset[str] = frozenset(), with_collateral: bool = True
    ) -> NvidiaEvidence:
        """Everything a worker sends for this GPU: report, chain and (by default) RIMs, OCSP, CC state."""
        if not with_collateral:
            return NvidiaEvidence(self.report(nonce), self.chain_pem())
        return NvidiaEvidence(
            self.report(nonce),
            self.chain_pem(),
            tuple(self.rims().values()),
            tuple(self.ocsp_responses(now, revoked).values()),
            self.host_cc(),
        )

    def collect(self, challenge: bytes, public_key: bytes) -> list[NvidiaEvidence]:
        """A worker's GPU collector (``veil worker --gpu sim``): evidence over the composite nonce."""
        from veil.attest.composite import gpu_nonce

        return [self.evidence(gpu_nonce(challenge, public_key))]

    # ---- persistence (one simulated GPU per deployment) ----------------------------------------
    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        doc = {
            "keys": {n: _pem_key(k) for n, k in self.keys.items()},
            "certs": {n: c.public_bytes(Encoding.PEM).decode() for n, c in self.certs.items()},
            "rims": {i: r.decode() for i, r in self.rims().items()},
            "fwid": self.fwid.hex(),
            "driver": self.driver,
            "vbios": self.vbios.hex(),
        }
        fd = os.open(path / _FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SimGpu:
        doc = json.loads((Path(directory) / _FILE).read_text())
        return cls(
            fwid=bytes.fromhex(doc["fwid"]),
            driver=doc["driver"],
            vbios=bytes.fromhex(doc["vbios"]),
            keys={n: _load_key(k) for n, k in doc["keys"].items()},
            certs={n: x509.load_pem_x509_certificate(c.encode()) for n, c in doc["certs"].items()},
            rim_docs={i: r.encode() for i, r in doc["rims"].items()},
        )

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> SimGpu:
        if (Path(directory) / _FILE).exists():
            return cls.load(directory)
        now = dt.datetime.now(dt.timezone.utc)
        gpu = cls(not_before=now - dt.timedelta(days=1), not_after=now + dt.timedelta(days=3650))
        gpu.save(directory)
        return gpu

    def rim_digests(self) -> list[str]:
        """SHA-256 of this GPU's RIM documents (what a manifest pins in allowed_rim_digests)."""
        return [hashlib.sha256(r).hexdigest() for r in self.rims().values()]


class SimNvml:
    """The subset of pynvml that ``collect`` uses, answering for simulated GPUs (ctypes arrays like
    the real one)."""

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[SimGpu], cc: int = 1, init_error: bool = False, report_error: bool = False) -> None:
        self.gpus, self.cc = gpus, cc
        self.init_error, self.report_error = init_error, report_error
        self.shut_down = False

    def nvmlInit(self) -> None:
        if self.init_error:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlSystemGetConfComputeState(self) -> Any:
        devtools = any(g.host_cc()["dev_tools_mode"] for g in self.gpus)
        return SimpleNamespace(ccFeature=self.cc, devToolsMode=int(devtools), environment=1)

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, handle: int, nonce: bytes) -> Any:
        if self.report_error:
            raise self.NVMLError("Timeout")
        data = self.gpus[handle].report(bytes(nonce))
        return SimpleNamespace(attestationReport=(ctypes.c_uint8 * 8192)(*data), attestationReportSize=len(data))

    def nvmlDeviceGetConfComputeGpuCertificate(self, handle: int) -> Any:
        chain = self.gpus[handle].chain_pem()
        return SimpleNamespace(attestationCertChain=(ctypes.c_uint8 * 0x5000)(*chain), attestationCertChainSize=len(chain))
