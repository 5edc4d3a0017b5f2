"""AMD SEV-SNP: report ABI, VCEK/VLEK chains to pinned ARKs, policy, collection.

``verify_evidence`` is the one entry point: parse (abi) -> verify (crypto) -> validate (policy)
-> report_data binding, returning a ``Verdict`` and never raising for bad evidence.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from veil.attest.binding import check_report_data
from veil.attest.claims import Claims, Verdict
from veil.attest.files import EvidenceFiles
from veil.attest.snp.abi import Report, TcbVersion, parse_report
from veil.attest.snp.validate import SnpPolicy, validate_report
from veil.attest.snp.verify import TrustRoots, VerifiedReport, report_claims, verify_report
from veil.errors import ParseError, VeilError

__all__ = [
    "Report",
    "SnpEvidence",
    "SnpPolicy",
    "TcbVersion",
    "TrustRoots",
    "parse_report",
    "verify_evidence",
    "verify_files",
]

PLATFORM = "sev-snp"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(obj: dict[str, Any], name: str, required: bool = True) -> bytes | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ParseError("snp.malformed_evidence", f"evidence has no {name!r}")
        return None
    if not isinstance(value, str):
        raise ParseError("snp.malformed_evidence", f"{name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError("snp.malformed_evidence", f"{name!r} is not valid base64") from None


@dataclass(frozen=True)
class SnpEvidence:
    """What travels on the wire: the report plus the collateral to verify it offline."""

    report: bytes  # 1184-byte ATTESTATION_REPORT
    vcek: bytes  # VCEK or VLEK certificate, DER
    chain_pem: bytes  # ASK (or ASVK) then ARK, PEM
    crl: bytes | None = None  # ARK-signed CRL from AMD KDS, DER

    def to_json(self) -> dict[str, Any]:
        # no platform name here: whether it is sev-snp or sim-snp is decided by the root it chains to
        out: dict[str, Any] = {
            "report": _b64(self.report),
            "vcek": _b64(self.vcek),
            "chain": _b64(self.chain_pem),
        }
        if self.crl is not None:
            out["crl"] = _b64(self.crl)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any] | str | bytes) -> "SnpEvidence":
        """Read ``to_json()`` output (a dict or its JSON text); ParseError when malformed."""
        if isinstance(obj, (str, bytes)):
            try:
                obj = json.loads(obj)
            except (ValueError, UnicodeDecodeError):
                raise ParseError("snp.malformed_evidence", "evidence is not JSON") from None
        if not isinstance(obj, dict):
            raise ParseError("snp.malformed_evidence", "evidence must be a JSON object")
        return cls(
            report=_unb64(obj, "report") or b"",
            vcek=_unb64(obj, "vcek") or b"",
            chain_pem=_unb64(obj, "chain") or b"",
            crl=_unb64(obj, "crl", required=False),
        )


def verify_evidence(
    evidence: SnpEvidence,
    policy: SnpPolicy | None = None,
    *,
    trust: TrustRoots | None = None,
    as_of: datetime | None = None,
    expected_report_data: bytes | None = None,
) -> Verdict:
    """Verify and validate SNP evidence; bad evidence gives ``Verdict.reject``, never an exception."""
    policy = policy or SnpPolicy()
    claims: Claims | None = None
    try:
        report = parse_report(evidence.report)
        claims = report_claims(report, report.product)
        verified: VerifiedReport = verify_report(
            report, evidence.vcek, evidence.chain_pem, trust=trust, as_of=as_of, crl=evidence.crl
        )
        claims = verified.claims()
        validate_report(report, policy, verified.product)
        if expected_report_data is not None:
            check_report_data(report.report_data, expected_report_data)
    except VeilError as err:
        return Verdict.reject(err, claims)
    if claims.simulated:
        return Verdict.accept(claims, "SIMULATED TEE evidence verified (sim-snp): no hardware protection")
    return Verdict.accept(claims, f"SEV-SNP evidence verified ({verified.product}, {verified.chain.key_kind.upper()})")


def _read(path: Any, name: str) -> bytes:
    if path is None:
        raise ParseError("cli.missing_input", f"--{name} is required for sev-snp")
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ParseError("cli.missing_input", f"cannot read --{name} {path}: {exc.strerror}") from None


def _vcek_der(data: bytes) -> bytes:
    """--vcek may be DER or PEM; the evidence carries DER."""
    from cryptography.hazmat.primitives.serialization import Encoding

    from veil.attest.snp.verify import load_certificate

    if data.lstrip().startswith(b"-----BEGIN"):
        return load_certificate(data).public_bytes(Encoding.DER)
    return data


def _cached_vcek(report: bytes, cache: Any) -> bytes:
    """The VCEK `veil collateral fetch` cached for this report's chip and reported TCB."""
    from veil.attest.snp.kds import find_cached_vcek

    found = find_cached_vcek(parse_report(report), cache)
    if found is None:
        raise ParseError(
            "cli.missing_input",
            f"--vcek not given and no cached VCEK for this chip and TCB in {cache.root} "
            "(run `veil collateral fetch --report ...` once, online)",
        )
    return found[1]


def verify_files(inputs: EvidenceFiles, *, trust: TrustRoots | None = None, cache_dir: Any = None) -> Verdict:
    """The CLI's entry: --report, --vcek (DER/PEM), --chain (else the collateral cache), --policy."""
    from veil.attest.snp import kds
    from veil.attest.snp.verify import _product_from_name, load_certificate, vcek_extensions

    try:
        report = _read(inputs.report, "report")
        if inputs.vcek is not None:
            vcek = _vcek_der(_read(inputs.vcek, "vcek"))
        else:
            vcek = _cached_vcek(report, kds.CollateralCache(cache_dir))
        crl: bytes | None = None
        if inputs.chain is not None:
            chain = _read(inputs.chain, "chain")
        else:
            cache = kds.CollateralCache(cache_dir)
            product = None
            try:
                product = parse_report(report).product
            except VeilError:
                pass
            if product is None:
                try:
                    product = _product_from_name(vcek_extensions(load_certificate(vcek)).get("product_name"))
                except ValueError:  # a corrupt extension: verification will say so below
                    product = None
            cached = cache.read_cert_chain(product) if product else None
            if cached is None:
                raise ParseError(
                    "cli.missing_input",
                    f"--chain not given and no cached ASK/ARK chain for {product or 'this product'} in {cache.root}",
                )
            chain = cached
            crl = cache.read_crl(product) if product else None
        if inputs.policy is not None:
            try:
                policy = SnpPolicy.model_validate_json(_read(inputs.policy, "policy"))
            except ValueError as exc:
                raise ParseError("snp.malformed_policy", f"policy is not a valid SnpPolicy: {exc}") from None
        else:
            policy = SnpPolicy()
        if inputs.allow_debug:
            policy = policy.model_copy(update={"allow_debug": True})
    except VeilError as err:
        return Verdict.reject(err)
    evidence = SnpEvidence(report=report, vcek=vcek, chain_pem=chain, crl=crl)
    return verify_evidence(evidence, policy, trust=trust, as_of=inputs.as_of, expected_report_data=None)
