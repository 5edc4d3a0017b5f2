"""One normalised claims record and verdict for every platform.

Verifiers for SEV-SNP, TDX, NVIDIA, Azure and the simulated platform all reduce evidence to
``Claims`` so that release policies and clients reason about one shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from veil.errors import VeilError


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
    """The outcome of verifying evidence: accepted or not, and why (a reason code)."""

    accepted: bool
    reason: str
    message: str = ""
    claims: Claims | None = None

    @classmethod
    def accept(cls, claims: Claims, message: str = "evidence verified") -> "Verdict":
        return cls(True, "ok", message, claims)

    @classmethod
    def reject(cls, error: VeilError, claims: Claims | None = None) -> "Verdict":
        return cls(False, error.reason, error.message, claims)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": "accept" if self.accepted else "reject",
            "reason": self.reason,
            "message": self.message,
            "claims": self.claims.to_json() if self.claims else None,
        }
