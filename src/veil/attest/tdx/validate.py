"""TDX policy: reference values and TCB rules applied to verified claims (no cryptography here).

Works on ``Claims`` (not the raw quote) so that the same policy serves bare TDX guests and Azure
TDX confidential VMs. Every refusal is a PolicyError with its own reason code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from veil.attest.api import Check
from veil.attest.claims import Claims
from veil.errors import PolicyError

DEFAULT_TCB_STATUSES = frozenset({"UpToDate", "SWHardeningNeeded"})
# Intel's TCB statuses from best to worst; "Revoked" is never accepted (the verifier refuses it).
TCB_STATUS_ORDER = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
)


def statuses_at_least(minimum: str) -> frozenset[str]:
    """The TCB statuses as good as ``minimum`` or better (ValueError for an unknown status)."""
    if minimum not in TCB_STATUS_ORDER:
        raise ValueError(f"unknown TCB status {minimum!r}; expected one of {', '.join(TCB_STATUS_ORDER)}")
    return frozenset(TCB_STATUS_ORDER[: TCB_STATUS_ORDER.index(minimum) + 1])


def _hex_list(values: list[str] | None, size: int) -> list[str] | None:
    if values is None:
        return None
    out = []
    for v in values:
        h = v.lower().removeprefix("0x")
        if len(h) != 2 * size or any(c not in "0123456789abcdef" for c in h):
            raise ValueError(f"{v!r} is not {size} bytes of hex")
        out.append(h)
    return out


class TdxPolicy(BaseModel):
    """What a verifier accepts. ``None`` allowlists are not checked; masks compare (value & mask).

    ``allowed_advisories``: None accepts any advisory Intel lists for the platform's TCB level;
    a list (even empty) refuses every advisory not in it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mrtd: list[str] | None = None
    rtmr0: list[str] | None = None
    rtmr1: list[str] | None = None
    rtmr2: list[str] | None = None
    rtmr3: list[str] | None = None
    mr_seam: list[str] | None = None
    mr_config_id: list[str] | None = None
    mr_owner: list[str] | None = None
    allow_debug: bool = False
    allowed_tcb_statuses: frozenset[str] = DEFAULT_TCB_STATUSES
    allowed_advisories: frozenset[str] | None = None
    td_attributes_mask: int = 0
    td_attributes_expected: int = 0
    xfam_mask: int = 0
    xfam_expected: int = 0

    @field_validator("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam", "mr_config_id", "mr_owner")
    @classmethod
    def _measurements(cls, v: list[str] | None) -> list[str] | None:
        return _hex_list(v, 48)

    @field_validator("td_attributes_mask", "td_attributes_expected", "xfam_mask", "xfam_expected", mode="before")
    @classmethod
    def _int_or_hex(cls, v: Any) -> Any:
        return int(v, 16) if isinstance(v, str) else v


def _allowed(value: str, allowlist: list[str] | None, reason: str, what: str) -> str | None:
    if allowlist is None:
        return None
    if value not in allowlist:
        raise PolicyError(reason, f"{what} {value[:16]}… is not in the policy's allowlist")
    return what


def validate_claims(claims: Claims, policy: TdxPolicy) -> list[Check]:
    """Raise PolicyError unless the claims of a verified TDX quote satisfy ``policy``; else return
    the checks made."""
    d = claims.details
    if claims.debug and not policy.allow_debug:
        raise PolicyError("tdx.debug_forbidden", "the TD runs in debug mode (TUD.DEBUG set)")
    status = str(claims.tcb.get("status", ""))
    if status not in policy.allowed_tcb_statuses:
        raise PolicyError("tdx.tcb_status_forbidden", f"TCB status {status!r} is not allowed")
    advisories = sorted(claims.tcb.get("advisory_ids", []))
    if policy.allowed_advisories is not None:
        bad = [a for a in advisories if a not in policy.allowed_advisories]
        if bad:
            raise PolicyError("tdx.advisory_forbidden", f"platform is affected by {', '.join(bad)}")
    matched = [
        _allowed(claims.measurement, policy.mrtd, "tdx.mrtd_not_allowed", "MRTD"),
        *(_allowed(d.get(f"rtmr{i}", ""), getattr(policy, f"rtmr{i}"), "tdx.rtmr_not_allowed", f"RTMR{i}") for i in range(4)),
        _allowed(d.get("mr_seam", ""), policy.mr_seam, "tdx.mrseam_not_allowed", "MRSEAM"),
        _allowed(d.get("mr_config_id", ""), policy.mr_config_id, "tdx.mrconfigid_not_allowed", "MRCONFIGID"),
        _allowed(d.get("mr_owner", ""), policy.mr_owner, "tdx.mrowner_not_allowed", "MROWNER"),
    ]
    attrs = int.from_bytes(bytes.fromhex(d.get("td_attributes", "")), "little")
    if attrs & policy.td_attributes_mask != policy.td_attributes_expected & policy.td_attributes_mask:
        raise PolicyError("tdx.td_attributes_mismatch", f"TD attributes {attrs:#018x} refused")
    xfam = int.from_bytes(bytes.fromhex(d.get("xfam", "")), "little")
    if xfam & policy.xfam_mask != policy.xfam_expected & policy.xfam_mask:
        raise PolicyError("tdx.xfam_mismatch", f"XFAM {xfam:#018x} refused")
    checked = [m for m in matched if m]
    return [
        Check(
            "TD attributes",
            f"debug {'allowed by policy' if claims.debug else 'off'}, attributes {attrs:#018x}"
            + (f" & {policy.td_attributes_mask:#x} as required" if policy.td_attributes_mask else "")
            + (f", XFAM {xfam:#018x} & {policy.xfam_mask:#x} as required" if policy.xfam_mask else ""),
        ),
        Check(
            "TCB status",
            f"{status} is allowed; advisories: {', '.join(advisories) or 'none'}"
            + (" (all allowed)" if advisories and policy.allowed_advisories is not None else ""),
        ),
        Check(
            "measurements",
            ("match the reference values: " + ", ".join(checked)) if checked else "(no reference values: any accepted)",
        ),
    ]
