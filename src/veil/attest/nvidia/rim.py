"""Reference values from NVIDIA RIM files (Reference Integrity Manifests).

NVIDIA publishes one RIM per driver and one per VBIOS: an ISO/IEC 19770-2 SWID tag, enveloped-
signed with XML-DSig. Under ``Payload`` each ``Resource`` gives a measurement ``index``, whether it
is ``active``, how many ``alternatives`` it has, and the values as ``Hash0``, ``Hash1``...
attributes in the SHA-384 namespace. Only active indices are compared.

NOT DONE HERE: the XML-DSig signature of the RIM and its certificate chain are not verified (that
needs an XML canonicalisation library and NVIDIA's RIM signing root, neither of which this project
ships). A RIM given to Veil is therefore trusted as the operator's local reference values, like a
policy file; fetch it over an authenticated channel and pin it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from veil.attest.nvidia.abi import MeasurementBlock
from veil.errors import ParseError, PolicyError

SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"
MAX_RIM_LEN = 4 << 20


@dataclass(frozen=True)
class ReferenceMeasurement:
    """The allowed values of one measurement index (any alternative matches)."""

    index: int
    values: tuple[bytes, ...]
    active: bool = True
    name: str = ""
    source: str = ""


@dataclass(frozen=True)
class Rim:
    tag_id: str
    name: str
    version: str
    measurements: dict[int, ReferenceMeasurement]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_rim(xml: bytes, source: str = "rim") -> Rim:
    """Read a SWID-tag RIM's measurements by index; refuse DTDs (entity expansion) outright."""
    if len(xml) > MAX_RIM_LEN:
        raise ParseError("nvidia.rim_malformed", "RIM file is implausibly large")
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise ParseError("nvidia.rim_malformed", "RIM files must not carry a DTD")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ParseError("nvidia.rim_malformed", f"RIM is not XML: {exc}") from exc
    if _local(root.tag) != "SoftwareIdentity":
        raise ParseError("nvidia.rim_malformed", "RIM root element is not a SWID SoftwareIdentity")
    payload = next((el for el in root if _local(el.tag) == "Payload"), None)
    if payload is None:
        raise ParseError("nvidia.rim_malformed", "RIM has no Payload")
    measurements: dict[int, ReferenceMeasurement] = {}
    for res in payload:
        if _local(res.tag) != "Resource":
            continue
        m = _resource(res, source)
        if m.index in measurements:
            raise ParseError("nvidia.rim_malformed", f"RIM lists index {m.index} twice")
        measurements[m.index] = m
    if not measurements:
        raise ParseError("nvidia.rim_malformed", "RIM holds no measurements")
    return Rim(
        tag_id=root.get("tagId", ""),
        name=root.get("name", ""),
        version=root.get("version", ""),
        measurements=measurements,
    )


def _resource(res: ET.Element, source: str) -> ReferenceMeasurement:
    try:
        index = int(res.attrib["index"])
        alternatives = int(res.get("alternatives", "1"))
        values = tuple(
            bytes.fromhex(res.attrib[f"{{{SHA384_NS}}}Hash{i}"]) for i in range(alternatives)
        )
    except (KeyError, ValueError) as exc:
        raise ParseError("nvidia.rim_malformed", f"RIM resource is incomplete: {exc}") from exc
    if index < 0 or not values or any(len(v) != 48 for v in values):
        raise ParseError("nvidia.rim_malformed", f"RIM index {index}: bad SHA-384 values")
    active = res.get("active", "true").strip().lower() != "false"
    return ReferenceMeasurement(index, values, active, res.get("name", ""), source)


def merge(*sources: Iterable[ReferenceMeasurement]) -> dict[int, ReferenceMeasurement]:
    """Driver and VBIOS RIMs cover disjoint indices; two active claims on one index are refused."""
    merged: dict[int, ReferenceMeasurement] = {}
    for source in sources:
        for m in source:
            old = merged.get(m.index)
            if old is not None and old.active and m.active:
                raise ParseError(
                    "nvidia.rim_malformed",
                    f"index {m.index} is claimed by both {old.source} and {m.source}",
                )
            if old is None or m.active:
                merged[m.index] = m
    return merged


def compare(
    blocks: Mapping[int, MeasurementBlock], reference: Mapping[int, ReferenceMeasurement]
) -> None:
    """Every active reference index must be in the report with one of its allowed values."""
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
            f"measurement index(es) {', '.join(map(str, bad))} differ from the reference values",
        )
