"""One normalised claims record and verdict for every platform.

Verifiers for SEV-SNP, TDX, NVIDIA, Azure and the simulated platform all reduce evidence to
``Claims`` so that release policies and clients reason about one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from veil.errors import ParseError, PolicyError, VeilError

if TYPE_CHECKING:
    from veil.attest.api import Check


@dataclass(frozen=True)
class Claims:
    """What verified evidence says about a machine.

    ``measurement`` is the platform's launch measurement as lower-case hex (SNP MEASUREMENT,
    TDX MRTD, a digest of the GPU measurement blocks). ``tcb`` holds the platform's TCB
    components, ``details`` everything else the platform reports (chip id, policy, RTMRs...).
    """

    platform: str
    measurement: str
    report_data: bytes
    debug: bool
    simulated: bool = False
    tcb: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "simulated": self.simulated,
            "measurement": self.measurement,
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "tcb": self.tcb,
            "details": self.details,
        }


@dataclass(frozen=True)
class Verdict:
    """The outcome of verifying evidence, for the edges only (CLI, JSON, audit): accepted or not,
    why (a reason code), and the checks that ran. Inside the library, refusals are typed errors."""

    accepted: bool
    reason: str
    message: str = ""
    claims: Claims | None = None
    checks: tuple[Check, ...] = ()
    error: str | None = None  # rejected: "parse", "verification" or "policy", from the error's type

    @classmethod
    def accept(cls, claims: Claims, message: str = "evidence verified", checks: tuple[Check, ...] = ()) -> "Verdict":
        return cls(True, "ok", message, claims, tuple(checks))

    @classmethod
    def reject(cls, error: VeilError, claims: Claims | None = None, checks: tuple[Check, ...] = ()) -> "Verdict":
        return cls(False, error.reason, error.message, claims, tuple(checks), error_kind(error))

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "accept" if self.accepted else "reject",
            "reason": self.reason,
            "message": self.message,
            **({"error": self.error} if self.error else {}),
            "claims": self.claims.to_json() if self.claims else None,
            "checks": [c.to_json() for c in self.checks],
        }


def error_kind(err: VeilError) -> str:
    """ "parse", "verification" or "policy": what an edge (CLI exit code, JSON) reports."""
    if isinstance(err, ParseError):
        return "parse"
    if isinstance(err, PolicyError):
        return "policy"
    return "verification"
