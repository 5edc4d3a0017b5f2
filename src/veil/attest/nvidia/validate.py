"""Policy for verified NVIDIA GPU evidence, and the normalised claims it produces.

Genuine evidence can still be unacceptable: a driver or VBIOS not on the list, firmware whose
measurements are not NVIDIA's golden values (a GPU in CC dev-tools mode measures differently), a
certificate whose revocation status is missing or too old. The policy is the manifest's
``GpuReference`` (one definition for both); its defaults are production's: RIMs and revocation
required, so a deployment that has not provisioned them fails closed instead of trusting any GPU.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from veil.attest.api import Check
from veil.attest.claims import Claims
from veil.attest.nvidia.revocation import Revocation
from veil.attest.nvidia.rim import ReferenceMeasurement, VerifiedRim, compare, merge
from veil.attest.nvidia.verify import VerifiedReport, fingerprint
from veil.errors import PolicyError
from veil.manifest import GpuReference

ALL_MEASUREMENTS = 0xFF  # GET_MEASUREMENTS operation: every block
NVML_CC_ON = 1

NvidiaPolicy = GpuReference  # the manifest's GPU reference values are the NVIDIA policy


@dataclass(frozen=True)
class GpuVerified:
    """Everything ``verify`` established about one GPU, for the policy layer."""

    report: VerifiedReport
    now: datetime
    rims: tuple[VerifiedRim, ...] = ()
    driver_rim: VerifiedRim | None = None
    vbios_rim: VerifiedRim | None = None
    revocation: tuple[Revocation, ...] = ()
    revocation_missing: tuple[str, ...] = ()
    host_cc: dict[str, int] | None = field(default=None)  # NVML's CC state, as the host reported it


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


def claims_from(gpu: GpuVerified, simulated: bool = False) -> Claims:
    verified = gpu.report
    report = verified.report
    platform, chip = platform_of(verified)
    blocks = {str(b.index): b.value.hex() for b in sorted(report.response.blocks, key=lambda b: b.index)}
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
        "rims": {
            kind: {"version": r.rim.version, "digest": r.rim.digest, "tag_id": r.rim.tag_id}
            for kind, r in (("driver", gpu.driver_rim), ("vbios", gpu.vbios_rim))
            if r is not None
        },
        "revocation": [s.to_json() for s in gpu.revocation],
        "host_reported_cc": gpu.host_cc,
    }
    return Claims(
        platform=platform,
        measurement=measurement_digest(verified),
        report_data=report.nonce,
        # an SPDM report carries no debug bit: dev-tools mode shows in the measurements, which
        # must equal the RIMs' golden (CC production) values
        debug=False,
        simulated=simulated,
        tcb={"driver_version": report.driver_version, "vbios_version": report.vbios_version},
        details=details,
    )


def _references(policy: NvidiaPolicy) -> dict[int, ReferenceMeasurement]:
    return {
        i: ReferenceMeasurement(i, tuple(bytes.fromhex(v) for v in vs), True, "", "manifest")
        for i, vs in policy.reference_measurements.items()
    }


def validate(gpu: GpuVerified, claims: Claims, policy: NvidiaPolicy) -> list[Check]:
    """Allowlists, CC state, RIMs and golden measurements, revocation presence and age."""
    verified = gpu.report
    checks: list[Check] = []
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
    if gpu.host_cc is not None:  # the host's word only: the golden measurements are the proof
        if gpu.host_cc.get("dev_tools_mode", 0) != 0:
            raise PolicyError("nvidia.devtools_mode", "the GPU runs in CC dev-tools mode (debuggable)")
        if gpu.host_cc.get("cc_feature", NVML_CC_ON) != NVML_CC_ON:
            raise PolicyError("nvidia.cc_mode_off", "confidential computing is off on this GPU")
    if policy.require_rims and (gpu.driver_rim is None or gpu.vbios_rim is None):
        missing = " and ".join(k for k, r in (("driver", gpu.driver_rim), ("VBIOS", gpu.vbios_rim)) if r is None)
        raise PolicyError("nvidia.rim_missing", f"no verified {missing} RIM for this GPU: its measurements cannot be judged")
    if policy.allowed_rim_digests:
        for rim in gpu.rims:
            if rim.rim.digest not in policy.allowed_rim_digests:
                raise PolicyError(
                    "nvidia.rim_not_allowed", f"RIM {rim.rim.version} ({rim.rim.digest[:16]}...) is not one the manifest allows"
                )
    blocks = verified.report.blocks_by_index()
    golden = merge(*(r.rim.measurements.values() for r in gpu.rims))
    compare(blocks, golden)
    compare(blocks, _references(policy))
    active = sum(1 for m in golden.values() if m.active)
    checks.append(
        Check(
            "golden measurements",
            f"{active} active RIM measurements and {len(policy.reference_measurements)} manifest value(s) match the report"
            if gpu.rims
            else "NOT CHECKED: no RIM given (the policy allows it)",
        )
    )
    if policy.require_revocation and gpu.revocation_missing:
        raise PolicyError("nvidia.revocation_missing", "no OCSP status for " + "; ".join(gpu.revocation_missing))
    oldest = gpu.now - timedelta(hours=policy.max_revocation_age_hours)
    for status in gpu.revocation:
        if status.this_update < oldest:
            raise PolicyError(
                "nvidia.revocation_too_old",
                f"the OCSP status of {status.subject!r} is from "
                f"{status.this_update}, older than {policy.max_revocation_age_hours} h",
            )
    checks.append(
        Check(
            "revocation age",
            f"{len(gpu.revocation)} OCSP status(es) at most "
            f"{policy.max_revocation_age_hours} h old"
            + (f"; NOT CHECKED for {len(gpu.revocation_missing)} certificate(s)" if gpu.revocation_missing else ""),
        )
    )
    checks.append(Check("GPU policy", "platform, driver and VBIOS allowlists and CC state as required"))
    return checks
