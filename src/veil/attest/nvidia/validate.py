"""Policy for verified NVIDIA GPU reports, and the normalised claims they produce.

Genuine evidence can still be unacceptable: an old driver, a VBIOS not on the list, firmware whose
measurements are not the published ones. Empty allowlists allow any value, so a fresh deployment
works; production manifests should pin versions and give RIMs or reference measurements.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from veil.attest.claims import Claims
from veil.attest.nvidia.rim import ReferenceMeasurement, compare, merge, parse_rim
from veil.attest.nvidia.verify import VerifiedReport, fingerprint
from veil.errors import ParseError, PolicyError

ALL_MEASUREMENTS = 0xFF  # GET_MEASUREMENTS operation: every block


class NvidiaPolicy(BaseModel):
    """What a verified GPU must also satisfy. JSON-loadable (``--policy``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_driver_versions: list[str] = Field(default_factory=list)  # empty: any
    allowed_vbios_versions: list[str] = Field(default_factory=list)  # empty: any; "96.00.9F.00.01"
    allowed_platforms: list[str] = Field(default_factory=list)  # empty: any; "nvidia-h100"
    # index -> allowed SHA-384 hex values; checked in addition to any RIMs given
    reference_measurements: dict[int, list[str]] = Field(default_factory=dict)

    @field_validator("reference_measurements")
    @classmethod
    def _hex(cls, value: dict[int, list[str]]) -> dict[int, list[str]]:
        for index, values in value.items():
            for v in values:
                if len(bytes.fromhex(v)) != 48:
                    raise ValueError(f"index {index}: {v!r} is not a SHA-384 hex value")
        return {i: [v.lower() for v in vs] for i, vs in value.items()}

    @classmethod
    def load(cls, path: Path) -> NvidiaPolicy:
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError) as exc:
            raise ParseError(
                "nvidia.policy_malformed", f"cannot read policy {path}: {exc}"
            ) from exc

    def references(self) -> list[ReferenceMeasurement]:
        return [
            ReferenceMeasurement(i, tuple(bytes.fromhex(v) for v in vs), True, "", "policy")
            for i, vs in self.reference_measurements.items()
        ]


DEFAULT_POLICY = NvidiaPolicy()  # frozen: safe to share as a default argument


def load_rims(paths: list[Path]) -> dict[int, ReferenceMeasurement]:
    """Read local RIM files (driver, VBIOS) into one index -> reference map."""
    rims = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ParseError("nvidia.rim_malformed", f"cannot read RIM {path}: {exc}") from exc
        rims.append(parse_rim(data, source=path.name).measurements.values())
    return merge(*rims)


def platform_of(verified: VerifiedReport) -> tuple[str, str]:
    """(platform, chip) from the certified chip name: GH100 (H100 and H200) is ``nvidia-h100``.

    The chip name comes from the NVIDIA-signed leaf certificate (subject "GH100 A01 GSP FMC LF"),
    not from the report's opaque data, so it cannot be chosen by the GPU's firmware.
    """
    subject = verified.leaf.subject.rfc4514_string()
    cn = next((a.value for a in verified.leaf.subject if a.oid.dotted_string == "2.5.4.3"), "")
    chip = str(cn).split(" ", 1)[0].upper() if cn else ""
    if chip == "GH100":
        return "nvidia-h100", chip
    return (f"nvidia-{chip.lower()}" if chip else "nvidia-unknown"), chip or subject


def measurement_digest(verified: VerifiedReport) -> str:
    """SHA-384 over the measurement record (the blocks, concatenated exactly as signed)."""
    return hashlib.sha384(verified.report.response.record).hexdigest()


def claims_from(verified: VerifiedReport) -> Claims:
    report = verified.report
    platform, chip = platform_of(verified)
    blocks = {
        str(b.index): b.value.hex() for b in sorted(report.response.blocks, key=lambda b: b.index)
    }
    details: dict[str, Any] = {
        "chip": chip,
        "driver_version": report.driver_version,
        "vbios_version": report.vbios_version,
        "nonce": report.nonce.hex(),
        "responder_nonce": report.response.nonce.hex(),
        "fwid": verified.fwid.hex(),
        "measurement_operation": report.request.operation,
        "spdm_version": f"{report.request.version >> 4}.{report.request.version & 0xF}",
        "measurement_count": len(report.response.blocks),
        "measurements": blocks,
        "opaque": report.decoded_opaque(),
        "leaf_subject": verified.leaf.subject.rfc4514_string(),
        "leaf_fingerprint": fingerprint(verified.leaf),
        "trailing_bytes": len(report.trailing),
    }
    return Claims(
        platform=platform,
        measurement=measurement_digest(verified),
        report_data=report.nonce,
        debug=False,  # SPDM reports carry no debug bit; dev-tools mode shows only in measurements
        tcb={"driver_version": report.driver_version, "vbios_version": report.vbios_version},
        details=details,
    )


def validate(
    verified: VerifiedReport,
    claims: Claims,
    policy: NvidiaPolicy,
    rim_references: dict[int, ReferenceMeasurement] | None = None,
) -> None:
    """Apply the allowlists, then the reference measurements: the policy's and the RIMs' both."""
    if verified.report.request.operation != ALL_MEASUREMENTS:
        raise PolicyError(
            "nvidia.partial_measurements",
            "the report answers a request for one measurement, not for all of them",
        )
    if policy.allowed_platforms and claims.platform not in policy.allowed_platforms:
        raise PolicyError("nvidia.platform_not_allowed", f"{claims.platform} is not allowed")
    driver = verified.report.driver_version
    if policy.allowed_driver_versions and driver not in policy.allowed_driver_versions:
        raise PolicyError("nvidia.driver_not_allowed", f"driver {driver} is not on the allowlist")
    vbios = verified.report.vbios_version
    allowed_vbios = {v.upper() for v in policy.allowed_vbios_versions}
    if allowed_vbios and (vbios or "").upper() not in allowed_vbios:
        raise PolicyError("nvidia.vbios_not_allowed", f"VBIOS {vbios} is not on the allowlist")
    blocks = verified.report.blocks_by_index()
    compare(blocks, {m.index: m for m in policy.references()})  # both must hold
    compare(blocks, rim_references or {})
