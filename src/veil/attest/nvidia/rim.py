"""NVIDIA RIMs (Reference Integrity Manifests): signature, signing chain, revocation, golden values.

NVIDIA publishes one RIM per driver and one per VBIOS: an ISO/IEC 19770-2 SWID tag, enveloped-
signed with XML-DSig (ECDSA P-384/SHA-384, C14N 1.1) by a "RIM Signer" certificate whose chain,
carried in the signature's ``KeyInfo/X509Data``, ends at the NVIDIA CoRIM signing Root CA (pinned
by fingerprint in :mod:`veil.attest.trust`). The signature is checked with ``signxml`` (on lxml
and cryptography); the chain and its validity at ``as_of`` with the same code as the GPU's chain;
revocation with the OCSP responses that travel with the evidence.

Only what the signature covers is read: measurements come from ``signxml``'s verified tree, never
from the document as received (no signature-wrapping). ``Meta/@colloquialVersion`` names the
driver (``550.90.07``) or VBIOS (``96.00.9F.00.01``) the RIM describes; the verifier then requires
it to equal the version the GPU reports. Under ``Payload`` each ``Resource`` gives a measurement
``index``, whether it is ``active``, its ``alternatives`` and their values as ``Hash0``, ``Hash1``...
in the SHA-384 namespace. RIM indices count from 0 and SPDM measurement blocks from 1 (NVIDIA's
verifier compares block *i* with RIM index *i − 1*): ``ReferenceMeasurement.index`` is the block
index, so reports, policies and RIMs all speak of the same numbers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from veil.attest.chain import CERT_ERRORS
from veil.attest.nvidia.abi import MeasurementBlock
from veil.attest.nvidia.revocation import Revocation, check_chain
from veil.attest.trust import TrustRoots
from veil.errors import ParseError, PolicyError, VerificationError

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
DSIG_NS = "http://www.w3.org/2000/09/xmldsig#"
MAX_RIM_LEN = 4 << 20
MAX_RESOURCES = 256

__all__ = ["ReferenceMeasurement", "Rim", "VerifiedRim", "compare", "merge", "verify_rim"]


@dataclass(frozen=True)
class ReferenceMeasurement:
    """The allowed values of one measurement block (``index`` as in the SPDM report)."""

    index: int
    values: tuple[bytes, ...]
    active: bool = True
    name: str = ""
    source: str = ""


@dataclass(frozen=True)
class Rim:
    tag_id: str
    product: str  # SoftwareIdentity/@name: the chip, "GH100"
    version: str  # Meta/@colloquialVersion: the driver or VBIOS version it describes
    measurements: dict[int, ReferenceMeasurement]
    digest: str  # SHA-256 of the document as transported (what manifests pin)


@dataclass(frozen=True)
class VerifiedRim:
    """A RIM whose signature, chain and (where statuses came) revocation verified."""

    rim: Rim
    chain: tuple[x509.Certificate, ...]
    simulated: bool
    revocation: tuple[Revocation, ...] = ()
    revocation_missing: tuple[str, ...] = field(default=())


def _local(tag: object) -> str:
    return str(tag).rsplit("}", 1)[-1]


def _parse_xml(xml: bytes) -> object:
    from lxml import etree  # type: ignore[import-untyped]

    if len(xml) > MAX_RIM_LEN:
        raise ParseError("nvidia.rim_malformed", "RIM file is implausibly large")
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise ParseError("nvidia.rim_malformed", "RIM files must not carry a DTD")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False, remove_comments=True)
    try:
        return etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        raise ParseError("nvidia.rim_malformed", f"RIM is not XML: {exc}") from None


def _signing_chain(root: object) -> list[x509.Certificate]:
    """The certificates of the enveloped signature's KeyInfo, leaf first (as NVIDIA writes them)."""
    signature = root.find(f"{{{DSIG_NS}}}Signature")  # type: ignore[attr-defined]
    nodes = (
        [] if signature is None else signature.findall(f"{{{DSIG_NS}}}KeyInfo/{{{DSIG_NS}}}X509Data/{{{DSIG_NS}}}X509Certificate")
    )
    if not nodes:
        raise VerificationError("nvidia.rim_signature_invalid", "the RIM carries no signature with a certificate chain")
    try:
        return [
            x509.load_der_x509_certificate(base64.b64decode("".join((n.text or "").split()), validate=True)) for n in nodes[:8]
        ]
    except (*CERT_ERRORS, binascii.Error) as exc:
        raise ParseError("nvidia.rim_malformed", f"RIM signing certificate unreadable: {exc}") from None


def verify_rim(xml: bytes, *, trust: TrustRoots, now: datetime, ocsp: Sequence[bytes] = (), source: str = "rim") -> VerifiedRim:
    """Signature (signxml) by the leaf of a chain to the pinned RIM root (or a trusted simulation
    root), valid at ``now``; the OCSP statuses of that chain; then the signed content parsed."""

    from veil.attest.chain import fingerprint, verify_chain

    chain = list(_rim_chain(xml))
    roots = trust.nvidia_rim | trust.simulation
    verify_chain(chain, as_of=now, trusted_roots=roots, prefix="nvidia.rim_", what="the pinned NVIDIA CoRIM signing Root CA")
    simulated = fingerprint(chain[-1]) not in trust.nvidia_rim
    rim = _signed_rim(xml, chain[0].public_bytes(Encoding.DER), source)
    statuses, missing = check_chain(chain, ocsp, now=now, trusted_roots=roots, skip_leaf=False, prefix="nvidia.rim_")
    return VerifiedRim(rim, tuple(chain), simulated, tuple(statuses), tuple(missing))


@lru_cache(maxsize=64)
def _rim_chain(xml: bytes) -> tuple[x509.Certificate, ...]:
    """The signing chain of a RIM document (memoised: a worker sends the same RIMs every time)."""
    return tuple(_signing_chain(_parse_xml(xml)))


@lru_cache(maxsize=64)
def _signed_rim(xml: bytes, signer_der: bytes, source: str) -> Rim:
    """The XML signature by ``signer`` (memoised, successes only: a pure function of the bytes; the
    chain and its times are checked on every call) and the content it covers."""
    from signxml.exceptions import SignXMLException
    from signxml.verifier import SignatureConfiguration, XMLVerifier

    from veil.attest.nvidia.verify import CERT_ERRORS

    signer = x509.load_der_x509_certificate(signer_der)
    try:
        result = XMLVerifier().verify(
            _parse_xml(xml),
            x509_cert=signer.public_bytes(Encoding.PEM).decode(),
            # the chain's validity is checked at as_of by verify_chain; signxml's own time check is
            # pinned inside the signer's window so that a memoised result never depends on the clock
            expect_config=SignatureConfiguration(require_x509=True, verification_time=signer.not_valid_before_utc),
        )
    except (SignXMLException, *CERT_ERRORS) as exc:
        raise VerificationError(
            "nvidia.rim_signature_invalid", f"{source}: the RIM signature does not verify ({type(exc).__name__})"
        ) from None
    signed = result.signed_xml  # type: ignore[union-attr]
    if signed is None or _local(signed.tag) != "SoftwareIdentity":
        raise VerificationError("nvidia.rim_signature_invalid", f"{source}: the signature does not cover the SWID tag")
    return _read(signed, hashlib.sha256(xml).hexdigest(), source)


def _read(root: object, digest: str, source: str) -> Rim:
    if _local(root.tag) != "SoftwareIdentity" or not str(root.tag).startswith(f"{{{SWID_NS}}}"):  # type: ignore[attr-defined]
        raise ParseError("nvidia.rim_malformed", "RIM root element is not a SWID SoftwareIdentity")
    children = list(root)  # type: ignore[call-overload]
    meta = next((el for el in children if _local(el.tag) == "Meta"), None)
    payload = next((el for el in children if _local(el.tag) == "Payload"), None)
    if payload is None:
        raise ParseError("nvidia.rim_malformed", "RIM has no Payload")
    version = (meta.get("colloquialVersion") or "") if meta is not None else ""
    if not version:
        raise ParseError("nvidia.rim_malformed", "RIM names no version (Meta/@colloquialVersion)")
    measurements: dict[int, ReferenceMeasurement] = {}
    resources = [el for el in payload if _local(el.tag) == "Resource"]
    if len(resources) > MAX_RESOURCES:
        raise ParseError("nvidia.rim_malformed", f"{len(resources)} RIM resources is too many")
    for res in resources:
        m = _resource(res, source)
        if m.index in measurements:
            raise ParseError("nvidia.rim_malformed", f"RIM lists index {m.index - 1} twice")
        measurements[m.index] = m
    if not measurements:
        raise ParseError("nvidia.rim_malformed", "RIM holds no measurements")
    return Rim(root.get("tagId", ""), root.get("name", ""), version, measurements, digest)  # type: ignore[attr-defined]


def _resource(res: object, source: str) -> ReferenceMeasurement:
    get = res.get  # type: ignore[attr-defined]
    try:
        index = int(get("index"))
        alternatives = int(get("alternatives", "1"))
        if not 1 <= alternatives <= 16:
            raise ValueError(f"{alternatives} alternatives")
        values = tuple(bytes.fromhex(get(f"{{{SHA384_NS}}}Hash{i}")) for i in range(alternatives))
    except (TypeError, ValueError) as exc:
        raise ParseError("nvidia.rim_malformed", f"RIM resource is incomplete: {exc}") from None
    if not 0 <= index < 255 or any(len(v) != 48 for v in values):
        raise ParseError("nvidia.rim_malformed", f"RIM index {index}: bad SHA-384 values")
    active = str(get("active", "true")).strip().lower() != "false"
    return ReferenceMeasurement(index + 1, values, active, str(get("name", "")), source)


def merge(*sources: Iterable[ReferenceMeasurement]) -> dict[int, ReferenceMeasurement]:
    """Driver and VBIOS RIMs cover disjoint indices; two active claims on one index are refused."""
    merged: dict[int, ReferenceMeasurement] = {}
    for source in sources:
        for m in source:
            old = merged.get(m.index)
            if old is not None and old.active and m.active:
                raise ParseError(
                    "nvidia.rim_malformed",
                    f"measurement {m.index} is claimed by both {old.source} and {m.source}",
                )
            if old is None or m.active:
                merged[m.index] = m
    return merged


def compare(blocks: Mapping[int, MeasurementBlock], reference: Mapping[int, ReferenceMeasurement]) -> None:
    """Every active reference must be in the report with one of its allowed values."""
    bad: list[int] = []
    for index, ref in sorted(reference.items()):
        if not ref.active:
            continue
        block = blocks.get(index)
        if block is None or block.value not in ref.values:
            bad.append(index)
    if bad:
        raise PolicyError(
            "nvidia.measurement_mismatch",
            f"measurement block(s) {', '.join(map(str, bad))} differ from the golden values",
        )


def rim_ids(driver_version: str, vbios_version: str, opaque: Mapping[str, str], chip: str = "GH100") -> tuple[str, str]:
    """The ids NVIDIA's RIM service files a GPU's driver and VBIOS RIMs under (as nvtrust builds
    them): ``NV_GPU_DRIVER_GH100_<driver>`` and ``NV_GPU_VBIOS_<project>_<project SKU>_<chip SKU>_<VBIOS>``."""
    vbios = vbios_version.replace(".", "").upper()
    parts = [opaque.get("project", ""), opaque.get("project_sku", ""), opaque.get("chip_sku", ""), vbios]
    return f"NV_GPU_DRIVER_{chip}_{driver_version}", "NV_GPU_VBIOS_" + "_".join(parts)


def signing_chain(xml: bytes) -> list[x509.Certificate]:
    """The RIM's signing certificates, leaf first, unverified (to look up their OCSP statuses)."""
    return list(_rim_chain(xml))
