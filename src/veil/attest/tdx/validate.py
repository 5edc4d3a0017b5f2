"""TDX policy: reference values and TCB rules applied to verified claims (no cryptography here).

Works on ``Claims`` (not the raw quote) so that the same policy serves bare TDX guests and Azure
TDX confidential VMs. Every refusal is a PolicyError with its own reason code.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from veil.attest.claims import Claims
from veil.errors import PolicyError

DEFAULT_TCB_STATUSES = frozenset({"UpToDate", "SWHardeningNeeded"})


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
    """What a verifier accepts. ``None`` allowlists are not checked; masks compare (value & mask)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mrtd: list[str] | None = None
    rtmr0: list[str] | None = None
    rtmr1: list[str] | None = None
    rtmr2: list[str] | None = None
    rtmr3: list[str] | None = None
    mr_seam: list[str] | None = None
    mr_config_id: list[str] | None = None
    allow_debug: bool = False
    allowed_tcb_statuses: frozenset[str] = DEFAULT_TCB_STATUSES
    forbidden_advisories: frozenset[str] = frozenset()
    td_attributes_mask: int = 0
    td_attributes_expected: int = 0
    xfam_mask: int = 0
    xfam_expected: int = 0

    @field_validator("mrtd", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_seam", "mr_config_id")
    @classmethod
    def _measurements(cls, v: list[str] | None) -> list[str] | None:
        return _hex_list(v, 48)

    @field_validator(
        "td_attributes_mask", "td_attributes_expected", "xfam_mask", "xfam_expected", mode="before"
    )
    @classmethod
    def _int_or_hex(cls, v: Any) -> Any:
        return int(v, 16) if isinstance(v, str) else v


def _allowed(value: str, allowlist: list[str] | None, reason: str, what: str) -> None:
    if allowlist is not None and value not in allowlist:
        raise PolicyError(reason, f"{what} {value[:16]}… is not in the policy's allowlist")


def validate_claims(claims: Claims, policy: TdxPolicy) -> None:
    """Raise PolicyError unless the claims of a verified TDX quote satisfy ``policy``."""
    d = claims.details
    if claims.debug and not policy.allow_debug:
        raise PolicyError("tdx.debug_forbidden", "the TD runs in debug mode (TUD.DEBUG set)")
    status = str(claims.tcb.get("status", ""))
    if status not in policy.allowed_tcb_statuses:
        raise PolicyError("tdx.tcb_status_forbidden", f"TCB status {status!r} is not allowed")
    bad = sorted(set(claims.tcb.get("advisory_ids", [])) & policy.forbidden_advisories)
    if bad:
        raise PolicyError("tdx.advisory_forbidden", f"platform is affected by {', '.join(bad)}")
    _allowed(claims.measurement, policy.mrtd, "tdx.mrtd_not_allowed", "MRTD")
    for i in range(4):
        _allowed(d.get(f"rtmr{i}", ""), getattr(policy, f"rtmr{i}"), "tdx.rtmr_not_allowed", f"RTMR{i}")
    _allowed(d.get("mr_seam", ""), policy.mr_seam, "tdx.mrseam_not_allowed", "MRSEAM")
    _allowed(d.get("mr_config_id", ""), policy.mr_config_id, "tdx.mrconfigid_not_allowed", "MRCONFIGID")
    attrs = int.from_bytes(bytes.fromhex(d.get("td_attributes", "")), "little")
    if attrs & policy.td_attributes_mask != policy.td_attributes_expected & policy.td_attributes_mask:
        raise PolicyError("tdx.td_attributes_mismatch", f"TD attributes {attrs:#018x} refused")
    xfam = int.from_bytes(bytes.fromhex(d.get("xfam", "")), "little")
    if xfam & policy.xfam_mask != policy.xfam_expected & policy.xfam_mask:
        raise PolicyError("tdx.xfam_mismatch", f"XFAM {xfam:#018x} refused")
