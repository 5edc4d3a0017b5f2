"""``sim-snp``: a SIMULATED SEV-SNP platform. It gives NO hardware protection.

It exists so development, tests and the demo run the very verifier that checks real AMD
hardware: reports use the exact SNP ABI layout and are signed by a locally generated
ARK -> ASK -> VCEK chain that mimics AMD's (RSA-4096 RSASSA-PSS SHA-384, a P-384 VCEK carrying
AMD's TCB/hwID/productName extensions). Every certificate subject says SIMULATED, and verifiers
refuse it unless the caller explicitly trusts ``root_fingerprint``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from veil.attest.snp import SnpEvidence
from veil.attest.snp.abi import (
    POLICY_DEBUG,
    GENOA,
    MILAN,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    TURIN,
    Report,
    SigningKey,
    TcbVersion,
)
from veil.attest.snp.verify import (
    OID_BL_SPL,
    OID_FMC_SPL,
    OID_HWID,
    OID_PRODUCT_NAME,
    OID_SNP_SPL,
    OID_STRUCT_VERSION,
    OID_TEE_SPL,
    OID_UCODE_SPL,
    SIMULATED_MARKER,
    fingerprint,
)
from veil.errors import ParseError

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
# plausible current TCBs, above each product's production floor (veil.attest.snp.validate)
DEFAULT_TCBS: dict[str, TcbVersion] = {
    MILAN: TcbVersion(bootloader=9, tee=0, snp=23, microcode=213),
    GENOA: TcbVersion(bootloader=10, tee=0, snp=23, microcode=84),
    TURIN: TcbVersion(bootloader=1, tee=1, snp=3, microcode=80, fmc=0),
}
CRL_REFRESH = dt.timedelta(hours=12)  # the simulated KDS issues a new CRL this often
FIRMWARE = (1, 55, 21)  # major, minor, build
# product -> (VCEK productName, CPUID family, model, stepping) of the simulated chip
PRODUCT_IDS: dict[str, tuple[str, int, int, int]] = {
    MILAN: ("Milan-B0", 0x19, 0x01, 0x01),
    GENOA: ("Genoa-B1", 0x19, 0x11, 0x01),
    TURIN: ("Turin", 0x1A, 0x02, 0x00),
}
_FILES = ("ark.key", "ark.pem", "ask.key", "ask.pem", "vcek.key", "vcek.der", "platform.json")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} {SIMULATED_MARKER}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Veil {SIMULATED_MARKER} TEE (not AMD)"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "sim-snp: no hardware protection"),
        ]
    )


def _der_int(v: int) -> bytes:
    body = v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der_ia5(s: str) -> bytes:
    body = s.encode("ascii")
    return bytes([0x16, len(body)]) + body


def _ext(oid: str, value: bytes) -> x509.UnrecognizedExtension:
    return x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value)


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: Any,
    signer: rsa.RSAPrivateKey,
    *,
    ca: bool,
    years: int,
    extensions: list[x509.UnrecognizedExtension] = (),  # type: ignore[assignment]
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365 * years))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=False)
    return builder.sign(signer, hashes.SHA384(), rsa_padding=PSS)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass
class SimPlatform:
    """One simulated SNP machine: its chain, VCEK key, chip id and TCB, persisted in a directory."""

    directory: Path
    ark_key: rsa.RSAPrivateKey
    ark: x509.Certificate
    ask_key: rsa.RSAPrivateKey
    ask: x509.Certificate
    vcek_key: ec.EllipticCurvePrivateKey
    vcek: x509.Certificate
    chip_id: bytes
    tcb: TcbVersion
    product: str = MILAN

    # ---- creation and persistence ---------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, tcb: TcbVersion | None = None, product: str = MILAN) -> "SimPlatform":
        """Generate a fresh chain (once per deployment) and persist it with 0600 files.

        ``product`` picks the layout being simulated (Milan by default; Turin has an 8-byte
        hwID, an fmc SPL and its own TCB byte order).
        """
        if product not in PRODUCT_IDS:
            raise ParseError("sim.bad_input", f"unknown product {product!r}")
        if tcb is None:
            tcb = DEFAULT_TCBS[product]
        if (tcb.fmc is not None) != (product == TURIN):
            raise ParseError("sim.bad_input", "a Turin TCB needs fmc, and only Turin has one")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        ark_key = rsa.generate_private_key(65537, 4096)
        ask_key = rsa.generate_private_key(65537, 4096)
        vcek_key = ec.generate_private_key(ec.SECP384R1())
        # Turin reports an 8-byte chip id (zero-extended to the 64-byte field)
        chip_id = secrets.token_bytes(8) + bytes(56) if product == TURIN else secrets.token_bytes(64)
        ark = _cert(_name(f"ARK-{product}"), _name(f"ARK-{product}"), ark_key.public_key(), ark_key, ca=True, years=25)
        ask = _cert(_name(f"SEV-{product}"), ark.subject, ask_key.public_key(), ark_key, ca=True, years=25)
        vcek = cls._issue_vcek(ask, ask_key, vcek_key, chip_id, tcb, product)
        platform = cls(d, ark_key, ark, ask_key, ask, vcek_key, vcek, chip_id, tcb, product)
        platform._save()
        return platform

    @staticmethod
    def _issue_vcek(
        ask: x509.Certificate,
        ask_key: rsa.RSAPrivateKey,
        vcek_key: ec.EllipticCurvePrivateKey,
        chip_id: bytes,
        tcb: TcbVersion,
        product: str,
    ) -> x509.Certificate:
        exts = [
            _ext(OID_STRUCT_VERSION, _der_int(1 if product == TURIN else 0)),
            _ext(OID_PRODUCT_NAME, _der_ia5(PRODUCT_IDS[product][0])),
            _ext(OID_BL_SPL, _der_int(tcb.bootloader)),
            _ext(OID_TEE_SPL, _der_int(tcb.tee)),
            _ext(OID_SNP_SPL, _der_int(tcb.snp)),
            _ext(OID_UCODE_SPL, _der_int(tcb.microcode)),
            _ext(OID_HWID, chip_id[:8] if product == TURIN else chip_id),
        ]
        if tcb.fmc is not None:
            exts.append(_ext(OID_FMC_SPL, _der_int(tcb.fmc)))
        return _cert(_name("SEV-VCEK"), ask.subject, vcek_key.public_key(), ask_key, ca=False, years=7, extensions=exts)

    def _save(self) -> None:
        d = self.directory
        _write_private(d / "ark.key", _pem_key(self.ark_key))
        _write_private(d / "ask.key", _pem_key(self.ask_key))
        _write_private(d / "vcek.key", _pem_key(self.vcek_key))
        _write_private(d / "ark.pem", self.ark.public_bytes(serialization.Encoding.PEM))
        _write_private(d / "ask.pem", self.ask.public_bytes(serialization.Encoding.PEM))
        _write_private(d / "vcek.der", self.vcek.public_bytes(serialization.Encoding.DER))
        meta = {
            "warning": "SIMULATED SEV-SNP platform (veil sim-snp): no hardware protection",
            "chip_id": self.chip_id.hex(),
            "tcb": self.tcb.to_json(),
            "product": self.product,
            "root_fingerprint": self.root_fingerprint,
        }
        _write_private(d / "platform.json", json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> "SimPlatform":
        """Load a platform made by ``create`` (ParseError ``sim.missing_platform`` if absent)."""
        d = Path(directory)
        missing = [f for f in _FILES if not (d / f).is_file()]
        if missing:
            raise ParseError("sim.missing_platform", f"{d} has no simulated platform (missing {', '.join(missing)})")
        meta = json.loads((d / "platform.json").read_text())

        def key(name: str) -> Any:
            return serialization.load_pem_private_key((d / name).read_bytes(), password=None)

        t = meta["tcb"]
        return cls(
            d,
            key("ark.key"),
            x509.load_pem_x509_certificate((d / "ark.pem").read_bytes()),
            key("ask.key"),
            x509.load_pem_x509_certificate((d / "ask.pem").read_bytes()),
            key("vcek.key"),
            x509.load_der_x509_certificate((d / "vcek.der").read_bytes()),
            bytes.fromhex(meta["chip_id"]),
            TcbVersion(t["bootloader"], t["tee"], t["snp"], t["microcode"], t.get("fmc")),
            meta.get("product", MILAN),
        )

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> "SimPlatform":
        d = Path(directory)
        return cls.load(d) if (d / "platform.json").is_file() else cls.create(d)

    # ---- collateral -----------------------------------------------------------------------------
    @property
    def root_fingerprint(self) -> str:
        """SHA-256 (hex) of the simulated ARK's DER: what a client must trust explicitly."""
        return fingerprint(self.ark)

    @property
    def simulation_roots(self) -> list[str]:
        return [self.root_fingerprint]

    @property
    def chain_pem(self) -> bytes:
        """ASK then ARK, as AMD's KDS serves ``cert_chain``."""
        return self.ask.public_bytes(serialization.Encoding.PEM) + self.ark.public_bytes(serialization.Encoding.PEM)

    @property
    def vcek_der(self) -> bytes:
        return self.vcek.public_bytes(serialization.Encoding.DER)

    def issue_crl(
        self,
        revoked_serials: Sequence[int] = (),
        *,
        days: int = 7,
        issued: dt.datetime | None = None,
    ) -> bytes:
        """An ARK-signed CRL (DER) like AMD's KDS serves, listing ``revoked_serials``, issued at
        ``issued`` (default: just now) and valid ``days``."""
        now = issued or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        b = x509.CertificateRevocationListBuilder().issuer_name(self.ark.subject)
        b = b.last_update(now).next_update(now + dt.timedelta(days=days))
        for serial in revoked_serials:
            b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
        return b.sign(self.ark_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(serialization.Encoding.DER)

    def current_crl(self) -> bytes:
        """The ARK-signed CRL the simulated KDS serves now: kept in the platform directory and
        issued again every ``CRL_REFRESH`` (so attestation does not pay an RSA-4096 signature)."""
        path = self.directory / "crl.der"
        try:
            data = path.read_bytes()
            crl = x509.load_der_x509_crl(data)
            if dt.datetime.now(dt.timezone.utc) - crl.last_update_utc < CRL_REFRESH:
                return data
        except (OSError, ValueError):
            pass
        data = self.issue_crl()
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        _write_private(tmp, data)
        os.replace(tmp, path)
        return data

    # ---- reports ---------------------------------------------------------------------------------
    def sign_report(self, report: Report) -> bytes:
        """Sign bytes 0x000-0x29F with the VCEK and return the full 1184-byte report."""
        der = self.vcek_key.sign(report.signed_bytes(), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        return report.with_signature(r, s).to_bytes()

    def build_report(
        self,
        report_data: bytes,
        *,
        measurement: bytes,
        host_data: bytes = b"\0" * 32,
        policy: int = 0x30000,
        vmpl: int = 0,
        debug: bool = False,
        version: int = 3,
    ) -> Report:
        """The unsigned report the simulated firmware would produce for this guest."""
        if len(report_data) > 64:
            raise ParseError("sim.bad_input", "report_data is at most 64 bytes")
        if len(measurement) != 48:
            raise ParseError("sim.bad_input", "measurement must be 48 bytes (SHA-384)")
        if len(host_data) != 32:
            raise ParseError("sim.bad_input", "host_data must be 32 bytes")
        if not 0 <= vmpl <= 3 or not 0 <= policy < 1 << 64 or version not in (2, 3, 5):
            raise ParseError("sim.bad_input", "vmpl is 0-3, policy a u64, version 2, 3 or 5")
        if debug:
            policy |= POLICY_DEBUG
        tcb = self.tcb.encode()
        _, fam, mod, step = PRODUCT_IDS[self.product] if version >= 3 else ("", 0, 0, 0)
        major, minor, build = FIRMWARE
        return Report(
            version=version,
            guest_svn=0,
            policy=policy,
            family_id=b"\0" * 16,
            image_id=b"\0" * 16,
            vmpl=vmpl,
            signature_algo=SIGNATURE_ALGO_ECDSA_P384_SHA384,
            current_tcb=tcb,
            platform_info=0x3,  # SMT enabled, TSME enabled
            author_key_en=False,
            mask_chip_key=False,
            signing_key=SigningKey.VCEK,
            report_data=report_data.ljust(64, b"\0"),
            measurement=measurement,
            host_data=host_data,
            id_key_digest=b"\0" * 48,
            author_key_digest=b"\0" * 48,
            report_id=secrets.token_bytes(32),
            report_id_ma=b"\xff" * 32,
            reported_tcb=tcb,
            chip_id=self.chip_id,
            committed_tcb=tcb,
            current_build=build,
            current_minor=minor,
            current_major=major,
            committed_build=build,
            committed_minor=minor,
            committed_major=major,
            launch_tcb=tcb,
            signature_r=b"\0" * 72,
            signature_s=b"\0" * 72,
            cpuid_fam_id=fam,
            cpuid_mod_id=mod,
            cpuid_step=step,
        )

    def attest(
        self,
        report_data: bytes,
        *,
        measurement: bytes,
        host_data: bytes = b"\0" * 32,
        policy: int = 0x30000,
        vmpl: int = 0,
        debug: bool = False,
        version: int = 3,
    ) -> SnpEvidence:
        """A signed SIMULATED report plus its collateral (chain and current CRL), ready to verify."""
        report = self.build_report(
            report_data, measurement=measurement, host_data=host_data, policy=policy, vmpl=vmpl, debug=debug, version=version
        )
        return SnpEvidence(report=self.sign_report(report), vcek=self.vcek_der, chain_pem=self.chain_pem, crl=self.current_crl())


def measure_code(package_dir: str | os.PathLike[str] | None = None) -> bytes:
    """The simulated launch measurement: SHA-384 over the installed ``veil`` package's .py files.

    Sorted relative paths and contents, each length-prefixed, so it is deterministic and no two
    trees hash alike. Clients pin this value for sim-snp the way they pin MEASUREMENT on hardware.
    """
    if package_dir is None:
        import veil

        package_dir = Path(veil.__file__).parent
    root = Path(package_dir)
    h = hashlib.sha384(b"veil/sim-snp/code-measurement/v1")
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        rel = path.relative_to(root).as_posix().encode()
        data = path.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel)
        h.update(len(data).to_bytes(8, "big") + data)
    return h.digest()
