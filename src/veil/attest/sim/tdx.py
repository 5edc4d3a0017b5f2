"""``sim-tdx``: a SIMULATED Intel TDX platform. It gives NO hardware protection.

It exists so development, tests and ``veil up --platform sim-tdx`` run the very verifier that
checks real TDX quotes. It produces DCAP quotes v4 (TD 1.0 body) and v5 (TD 1.0 or 1.5 body) in
Intel's exact layout, with a quoting enclave report signed by a PCK certificate that carries
Intel's SGX extension (FMSPC, CPUSVN, PCESVN...), and Intel PCS collateral (TCB info, QE identity,
CRLs) signed by a TCB signing certificate: all under a root CA generated once per deployment
instead of Intel's. dcap-qvl verifies it exactly as it verifies hardware, against that root
(``QuoteVerifier(root_ca_der)``, its ``verify_with_root_ca``). Every certificate subject says
SIMULATED, and verifiers refuse the root unless the caller trusts ``root_fingerprint``.

Written here by hand because no maintained library produces TDX quotes: the layouts follow
Intel's "TDX DCAP Quoting Library API" (quote v4/v5, QE report certification data) and the
PCS API (collateral JSON), as dcap-qvl reads them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from veil.attest.tdx.abi import BODY_TYPE_TD10, BODY_TYPE_TD15, TD_ATTR_DEBUG, TD_ATTR_SEPT_VE_DISABLE
from veil.attest.tdx.evidence import TdxEvidence
from veil.attest.tdx.verify import SIMULATED_MARKER
from veil.errors import ParseError

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
TEE_TYPE_TDX = 0x81
SGX_EXTENSION_OID = "1.2.840.113741.1.13.1"
XFAM = 0x00000000000602E7  # x87, SSE, AVX, AVX-512 state, PK, as common TDs report
QE_ATTRIBUTES = bytes.fromhex("1500000000000000e700000000000000")  # INIT | MODE64BIT | PROVISIONKEY
QE_ISVPRODID, QE_ISVSVN = 2, 4
TEE_TCB_SVN = bytes([5, 1, 3]) + bytes(13)  # TDX module ISVSVN 5, module version 1 (identity "TDX_01")
CPU_SVN = bytes([3, 3, 2, 2, 4, 1, 0, 5]) + bytes(8)
PCE_SVN = 11
TCB_DATE = "2024-03-13T00:00:00Z"
COLLATERAL_REFRESH = dt.timedelta(hours=12)
COLLATERAL_VALIDITY = dt.timedelta(days=30)  # as Intel's PCS collateral
# rtmr0..2 as a firmware, kernel and command line would extend them; rtmr3 (runtime) stays zero
DEFAULT_RTMRS = tuple(hashlib.sha384(f"veil/sim-tdx/rtmr{i}".encode()).digest() for i in range(3)) + (bytes(48),)
TCB_STATUSES = ("UpToDate", "SWHardeningNeeded", "ConfigurationNeeded", "OutOfDate")
_KEYS = ("root", "pck_ca", "tcb", "pck", "ak")


# ---- a little DER, for Intel's SGX extension (its values are plain INTEGER/OCTET STRING/ENUMERATED) --


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    length = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return _der(0x06, body)


def _int(tag: int, value: int) -> bytes:
    return _der(tag, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big"))


def _entry(oid_suffix: str, value: bytes) -> bytes:
    return _der(0x30, _oid(f"{SGX_EXTENSION_OID}.{oid_suffix}") + value)


def sgx_extension(ppid: bytes, cpu_svn: bytes, pce_svn: int, fmspc: bytes, platform_instance: bytes) -> bytes:
    """The SEQUENCE Intel puts in a PCK certificate (OID 1.2.840.113741.1.13.1)."""
    tcb = b"".join(_entry(f"2.{i + 1}", _int(0x02, cpu_svn[i])) for i in range(16))
    tcb += _entry("2.17", _int(0x02, pce_svn)) + _entry("2.18", _der(0x04, cpu_svn))
    config = b"".join(_entry(f"7.{i}", _der(0x01, b"\x00")) for i in (1, 2, 3))
    return _der(
        0x30,
        b"".join(
            (
                _entry("1", _der(0x04, ppid)),
                _entry("2", _der(0x30, tcb)),
                _entry("3", _der(0x04, b"\x00\x00")),  # PCE-ID
                _entry("4", _der(0x04, fmspc)),
                _entry("5", _int(0x0A, 1)),  # SGX type: Scalable
                _entry("6", _der(0x04, platform_instance)),
                _entry("7", _der(0x30, config)),  # dynamic platform, cached keys, SMT: all false
            )
        ),
    )


# ---- certificates ----------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{cn} ({SIMULATED_MARKER})"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"Veil {SIMULATED_MARKER} TEE (not Intel)"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "sim-tdx: no hardware protection"),
        ]
    )


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path: int | None = None,
    extension: bytes | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365 * (25 if ca else 7)))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=not ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSION_OID), extension), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256/SHA-256 as Intel's formats carry it: r ‖ s, 32 bytes each."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


@dataclass
class SimTdxPlatform:
    """One simulated TDX machine: its CA hierarchy, quoting enclave and TCB, kept in a directory."""

    directory: Path
    keys: dict[str, ec.EllipticCurvePrivateKey]
    root: x509.Certificate
    pck_ca: x509.Certificate
    tcb_signer: x509.Certificate
    pck: x509.Certificate
    fmspc: bytes
    qe_mrsigner: bytes
    mr_seam: bytes
    tcb_status: str = "UpToDate"

    # ---- creation and persistence ------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | os.PathLike[str], *, tcb_status: str = "UpToDate") -> SimTdxPlatform:
        """Generate a fresh hierarchy once per deployment (0600 files). ``tcb_status`` is the
        status Intel's (simulated) TCB info gives this platform's TCB level."""
        if tcb_status not in TCB_STATUSES:
            raise ParseError("sim.bad_input", f"tcb_status is one of {', '.join(TCB_STATUSES)}")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in _KEYS}
        fmspc = b"\x5e" + secrets.token_bytes(2) + bytes(3)  # a made-up family; Intel's start 00..b0
        root_name = _name("Intel SGX Root CA")
        root = _cert(root_name, root_name, keys["root"].public_key(), keys["root"], ca=True, path=1)
        pck_ca = _cert(_name("Intel SGX PCK Platform CA"), root_name, keys["pck_ca"].public_key(), keys["root"], ca=True, path=0)
        tcb = _cert(_name("Intel SGX TCB Signing"), root_name, keys["tcb"].public_key(), keys["root"], ca=False)
        ext = sgx_extension(secrets.token_bytes(16), CPU_SVN, PCE_SVN, fmspc, secrets.token_bytes(16))
        pck = _cert(
            _name("Intel SGX PCK Certificate"), pck_ca.subject, keys["pck"].public_key(), keys["pck_ca"], ca=False, extension=ext
        )
        platform = cls(d, keys, root, pck_ca, tcb, pck, fmspc, secrets.token_bytes(32), secrets.token_bytes(48), tcb_status)
        platform._save()
        return platform

    def _save(self) -> None:
        d = self.directory
        for name, key in self.keys.items():
            _write_private(
                d / f"{name}.key",
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
            )
        for name in ("root", "pck_ca", "tcb_signer", "pck"):
            _write_private(d / f"{name}.pem", getattr(self, name).public_bytes(serialization.Encoding.PEM))
        meta = {
            "warning": "SIMULATED Intel TDX platform (veil sim-tdx): no hardware protection",
            "fmspc": self.fmspc.hex(),
            "qe_mrsigner": self.qe_mrsigner.hex(),
            "mr_seam": self.mr_seam.hex(),
            "tcb_status": self.tcb_status,
            "root_fingerprint": self.root_fingerprint,
        }
        _write_private(d / "platform.json", json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SimTdxPlatform:
        d = Path(directory)
        if not (d / "platform.json").is_file():
            raise ParseError("sim.missing_platform", f"{d} has no simulated TDX platform")
        meta = json.loads((d / "platform.json").read_text())
        keys = {}
        for name in _KEYS:
            key = serialization.load_pem_private_key((d / f"{name}.key").read_bytes(), password=None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            keys[name] = key
        certs = {
            n: x509.load_pem_x509_certificate((d / f"{n}.pem").read_bytes()) for n in ("root", "pck_ca", "tcb_signer", "pck")
        }
        return cls(
            d,
            keys,
            certs["root"],
            certs["pck_ca"],
            certs["tcb_signer"],
            certs["pck"],
            bytes.fromhex(meta["fmspc"]),
            bytes.fromhex(meta["qe_mrsigner"]),
            bytes.fromhex(meta["mr_seam"]),
            meta.get("tcb_status", "UpToDate"),
        )

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> SimTdxPlatform:
        d = Path(directory)
        return cls.load(d) if (d / "platform.json").is_file() else cls.create(d)

    @property
    def root_fingerprint(self) -> str:
        """SHA-256 (hex) of the simulated root CA's DER: what a client must trust explicitly."""
        return hashlib.sha256(self.root.public_bytes(serialization.Encoding.DER)).hexdigest()

    @property
    def simulation_roots(self) -> list[str]:
        return [self.root_fingerprint]

    # ---- collateral (Intel PCS layout) ----------------------------------------------------------
    def issue_collateral(
        self, *, issued: dt.datetime | None = None, validity: dt.timedelta = COLLATERAL_VALIDITY, revoke_pck: bool = False
    ) -> dict[str, Any]:
        """TCB info, QE identity and both CRLs as Intel's PCS serves them, signed now (or ``issued``);
        ``revoke_pck``: the PCK CRL lists this platform's PCK certificate (Intel revoked it)."""
        now = issued or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
        nxt = now + validity
        root_key, tcb_key = self.keys["root"], self.keys["tcb"]
        tcb_info = json.dumps(self._tcb_info(now, nxt), separators=(",", ":"))
        qe_identity = json.dumps(
            {
                "id": "TD_QE",
                "version": 2,
                "issueDate": _iso(now),
                "nextUpdate": _iso(nxt),
                "tcbEvaluationDataNumber": 17,
                "miscselect": "00000000",
                "miscselectMask": "FFFFFFFF",
                "attributes": "11000000000000000000000000000000",
                "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
                "mrsigner": self.qe_mrsigner.hex().upper(),
                "isvprodid": QE_ISVPRODID,
                "tcbLevels": [{"tcb": {"isvsvn": QE_ISVSVN}, "tcbDate": TCB_DATE, "tcbStatus": "UpToDate"}],
            },
            separators=(",", ":"),
        )

        def crl(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, revoked: x509.Certificate | None = None) -> str:
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(issuer.subject)
                .last_update(now)
                .next_update(nxt)
                .add_extension(x509.CRLNumber(1), critical=False)
            )
            if revoked is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder().serial_number(revoked.serial_number).revocation_date(now).build()
                )
            return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER).hex()

        return {
            "pck_crl_issuer_chain": _pem(self.pck_ca) + _pem(self.root),
            "root_ca_crl": crl(self.root, root_key),
            "pck_crl": crl(self.pck_ca, self.keys["pck_ca"], self.pck if revoke_pck else None),
            "tcb_info_issuer_chain": _pem(self.tcb_signer) + _pem(self.root),
            "tcb_info": tcb_info,
            "tcb_info_signature": _raw_signature(tcb_key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": _pem(self.tcb_signer) + _pem(self.root),
            "qe_identity": qe_identity,
            "qe_identity_signature": _raw_signature(tcb_key, qe_identity.encode()).hex(),
        }

    def _tcb_info(self, now: dt.datetime, nxt: dt.datetime) -> dict[str, Any]:
        def components(svns: bytes) -> list[dict[str, int]]:
            return [{"svn": v} for v in svns]

        advisories = [] if self.tcb_status == "UpToDate" else ["INTEL-SA-00837"]
        levels = [
            {
                "tcb": {"sgxtcbcomponents": components(CPU_SVN), "pcesvn": PCE_SVN, "tdxtcbcomponents": components(TEE_TCB_SVN)},
                "tcbDate": TCB_DATE,
                "tcbStatus": self.tcb_status,
                "advisoryIDs": advisories,
            }
        ]
        if self.tcb_status == "UpToDate":  # an older level below, as Intel lists them
            levels.append(
                {
                    "tcb": {"sgxtcbcomponents": components(bytes(16)), "pcesvn": 5, "tdxtcbcomponents": components(bytes(16))},
                    "tcbDate": "2023-02-15T00:00:00Z",
                    "tcbStatus": "OutOfDate",
                    "advisoryIDs": ["INTEL-SA-00837"],
                }
            )
        module = {"mrsigner": "00" * 48, "attributes": "0000000000000000", "attributesMask": "FFFFFFFFFFFFFFFF"}
        return {
            "id": "TDX",
            "version": 3,
            "issueDate": _iso(now),
            "nextUpdate": _iso(nxt),
            "fmspc": self.fmspc.hex().upper(),
            "pceId": "0000",
            "tcbType": 0,
            "tcbEvaluationDataNumber": 17,
            "tdxModule": module,
            "tdxModuleIdentities": [
                {
                    **module,
                    "id": "TDX_01",
                    "tcbLevels": [{"tcb": {"isvsvn": TEE_TCB_SVN[0]}, "tcbDate": TCB_DATE, "tcbStatus": "UpToDate"}],
                }
            ],
            "tcbLevels": levels,
        }

    def current_collateral(self) -> dict[str, Any]:
        """The collateral the simulated PCS serves now: kept in the directory, issued again every
        ``COLLATERAL_REFRESH`` (like a PCCS cache refreshing from Intel)."""
        path = self.directory / "collateral.json"
        try:
            cached = json.loads(path.read_text())
            issued = dt.datetime.fromisoformat(json.loads(cached["tcb_info"])["issueDate"].replace("Z", "+00:00"))
            if dt.datetime.now(dt.timezone.utc) - issued < COLLATERAL_REFRESH:
                return dict(cached)
        except (OSError, ValueError, KeyError, TypeError):
            pass
        fresh = self.issue_collateral()
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        _write_private(tmp, json.dumps(fresh).encode())
        os.replace(tmp, path)
        return fresh

    # ---- quotes -----------------------------------------------------------------------------------
    def td_report_body(
        self,
        report_data: bytes,
        *,
        mr_td: bytes,
        rtmrs: tuple[bytes, ...] = DEFAULT_RTMRS,
        mr_config_id: bytes = bytes(48),
        mr_owner: bytes = bytes(48),
        debug: bool = False,
        body_type: int = BODY_TYPE_TD10,
    ) -> bytes:
        """The TD report body the simulated TDX module would sign into a quote."""
        if len(report_data) > 64 or len(mr_td) != 48 or len(mr_config_id) != 48 or len(mr_owner) != 48:
            raise ParseError("sim.bad_input", "report_data is at most 64 bytes; MRTD, MRCONFIGID, MROWNER are 48")
        if len(rtmrs) != 4 or any(len(r) != 48 for r in rtmrs):
            raise ParseError("sim.bad_input", "four 48-byte RTMRs")
        attributes = TD_ATTR_SEPT_VE_DISABLE | (TD_ATTR_DEBUG if debug else 0)
        body = b"".join(
            (
                TEE_TCB_SVN,
                self.mr_seam,
                bytes(48),
                bytes(8),  # tee_tcb_svn, mr_seam, mr_signer_seam (Intel's: 0), seam attributes
                attributes.to_bytes(8, "little"),
                XFAM.to_bytes(8, "little"),
                mr_td,
                mr_config_id,
                mr_owner,
                bytes(48),
                *rtmrs,
                report_data.ljust(64, b"\0"),
            )
        )
        if body_type == BODY_TYPE_TD15:
            body += TEE_TCB_SVN + bytes(48)  # tee_tcb_svn2, mr_service_td (no service TD)
        return body

    def quote(self, report_data: bytes, *, mr_td: bytes, version: int = 4, body_type: int = BODY_TYPE_TD10, **body: Any) -> bytes:
        """A DCAP quote v4 (TD 1.0) or v5 (TD 1.0 or 1.5) over a TD report body."""
        if version not in (4, 5) or (version == 4 and body_type != BODY_TYPE_TD10):
            raise ParseError("sim.bad_input", "quote v4 carries a TD 1.0 body; v5 a TD 1.0 or 1.5 body")
        td = self.td_report_body(report_data, mr_td=mr_td, body_type=body_type, **body)
        header = struct.pack("<HHIHH", version, 2, TEE_TYPE_TDX, 0, PCE_SVN) + INTEL_QE_VENDOR_ID + bytes(20)
        signed = header + (struct.pack("<HI", body_type, len(td)) if version == 5 else b"") + td
        ak = self.keys["ak"]
        auth_data = secrets.token_bytes(32)
        qe_report = self._qe_report(hashlib.sha256(_raw_public(ak) + auth_data).digest())
        chain = (_pem(self.pck) + _pem(self.pck_ca) + _pem(self.root)).encode()
        qe_cert = (
            qe_report
            + _raw_signature(self.keys["pck"], qe_report)
            + struct.pack("<H", len(auth_data))
            + auth_data
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        signature_data = _raw_signature(ak, signed) + _raw_public(ak) + struct.pack("<HI", 6, len(qe_cert)) + qe_cert
        return signed + struct.pack("<I", len(signature_data)) + signature_data

    def _qe_report(self, report_data_head: bytes) -> bytes:
        """The quoting enclave's SGX report (384 bytes) binding the attestation key."""
        report = (
            CPU_SVN
            + struct.pack("<I", 0)
            + bytes(28)
            + QE_ATTRIBUTES
            + hashlib.sha256(b"veil/sim-tdx/qe").digest()
            + bytes(32)
            + self.qe_mrsigner
            + bytes(96)
            + struct.pack("<HH", QE_ISVPRODID, QE_ISVSVN)
            + bytes(60)
            + report_data_head.ljust(64, b"\0")
        )
        assert len(report) == 384
        return report

    def evidence(self, report_data: bytes, *, mr_td: bytes, **quote: Any) -> TdxEvidence:
        """A SIMULATED quote plus its current collateral, ready to verify offline."""
        return TdxEvidence(self.quote(report_data, mr_td=mr_td, **quote), self.current_collateral())

    def sealing_secret(self) -> bytes:
        """The simulated platform's secret for the simulated sealing key (the attester mixes in MRTD)."""
        return self.keys["ak"].private_numbers().private_value.to_bytes(32, "big")
