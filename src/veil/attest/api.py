"""The one attestation API: ``verify`` evidence once, ``validate`` it against reference values.

Shaped like go-sev-guest's split and pyca's typed API:

* ``verify(evidence, options)`` does the cryptography (signatures, chains to pinned roots,
  revocation, collateral and its times, the report_data binding) and returns ``VerifiedEvidence``:
  the normalised ``Claims`` plus the list of ``Check`` s it actually performed. It raises a typed
  ``VeilError`` (``ParseError``, ``VerificationError``) with a reason code, never returns "false".
* ``validate(verified, references)`` applies the manifest's reference values for that platform
  (verify once, validate against each reference set; the first that accepts wins) and raises a
  ``PolicyError`` otherwise.
* ``appraise`` does both. A ``Verdict`` is built only at the edges (CLI, JSON, audit) with
  ``verdict_of``.

The binding is a required argument: ``Binding.to(report_data)``; only offline CLI checks of a
single piece of evidence may say ``Binding.unbound()``, and the checks then say so.

A platform plugs in by implementing ``PlatformVerifier`` (and optionally an attester) and adding
one line to :mod:`veil.attest.registry`; see docs/attestation.md.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from veil.attest.claims import Claims, Verdict
from veil.attest.trust import TrustRoots
from veil.errors import ParseError, PolicyError, VeilError, VerificationError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from veil.attest.collateral import CollateralSource
    from veil.manifest import ReferenceValues

__all__ = [
    "Binding",
    "Check",
    "PlatformVerifier",
    "VerifiedEvidence",
    "VerifyOptions",
    "appraise",
    "as_of_utc",
    "platform_of",
    "summary",
    "validate",
    "verdict_of",
    "verify",
]


@dataclass(frozen=True)
class Check:
    """One check a verifier performed and what it found, as reports show it."""

    name: str  # short and stable: "report signature", "certificate chain", "revocation (CRL)", ...
    result: str  # what was established, in words ("ECDSA P-384 by the VCEK: valid")

    def to_json(self) -> dict[str, str]:
        return {"check": self.name, "result": self.result}


@dataclass(frozen=True)
class Binding:
    """What the evidence must bind (its report_data, or a GPU's SPDM nonce).

    Build one with ``Binding.to(expected)``. ``Binding.unbound()`` exists only for offline checks
    of one piece of evidence (``veil evidence verify``): nothing then proves freshness, and the
    check list says so.
    """

    expected: bytes | None
    _explicitly_unbound: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.expected is None and not self._explicitly_unbound:
            raise TypeError("a binding needs the expected value; use Binding.unbound() for offline checks")
        if self.expected is not None and not isinstance(self.expected, bytes):
            raise TypeError("the expected binding must be bytes")

    @classmethod
    def to(cls, expected: bytes) -> Binding:
        return cls(bytes(expected))

    @classmethod
    def unbound(cls) -> Binding:
        return cls(None, True)

    @property
    def bound(self) -> bool:
        return self.expected is not None

    def check(self, actual: bytes, what: str = "report_data") -> Check:
        """Constant-time comparison; a mismatch is replayed, substituted or stale evidence."""
        if self.expected is None:
            return Check("binding", f"NOT CHECKED: offline check, no expected {what} given")
        if not hmac.compare_digest(actual, self.expected):
            raise VerificationError(
                "binding.report_data_mismatch",
                f"{what} does not bind this nonce, key and digests (replayed or substituted evidence)",
            )
        return Check("binding", f"{what} binds the expected nonce, key and digests")


@dataclass(frozen=True)
class VerifyOptions:
    """Everything ``verify`` depends on besides the evidence (go-sev-guest's verify.Options).

    ``collateral`` supplies what the evidence does not carry (a cached CRL, VCEK or PCS
    collateral); ``as_of`` is the time certificates, CRLs and collateral are checked at (None: now).
    """

    binding: Binding
    trust: TrustRoots = field(default_factory=TrustRoots.production)
    as_of: datetime | None = None
    collateral: CollateralSource | None = None

    @property
    def now(self) -> datetime:
        return as_of_utc(self.as_of)


@dataclass(frozen=True)
class VerifiedEvidence:
    """Evidence whose cryptography checked out: claims, the checks performed, the platform's own
    verified object (``native``, for its validator), and the reference set that accepted it."""

    claims: Claims
    checks: tuple[Check, ...]
    native: Any = field(default=None, repr=False, compare=False)
    reference: ReferenceValues | None = None

    @property
    def platform(self) -> str:
        return self.claims.platform

    def with_checks(self, *checks: Check, **changes: Any) -> VerifiedEvidence:
        return replace(self, checks=self.checks + checks, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"claims": self.claims.to_json(), "checks": [c.to_json() for c in self.checks]}


_Policy = TypeVar("_Policy")


class PlatformVerifier(Protocol[_Policy]):
    """What a platform implements to be verified by Veil (see :mod:`veil.attest.registry`).

    ``verify`` raises ``ParseError``/``VerificationError``; ``validate`` raises ``PolicyError``
    and returns the checks it made. ``policy`` turns the manifest's reference values into the
    platform's policy; ``policy_model`` is that policy's pydantic model (for ``--policy`` files),
    whose defaults are the production defaults.
    """

    policy_model: type[BaseModel]

    def verify(self, evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence: ...

    def policy(self, reference: ReferenceValues) -> _Policy: ...

    def validate(self, verified: VerifiedEvidence, policy: _Policy) -> list[Check]: ...


def as_of_utc(as_of: datetime | None) -> datetime:
    """``as_of`` as an aware UTC time (None: now; naive times are taken as UTC)."""
    if as_of is None:
        return datetime.now(timezone.utc)
    return as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=timezone.utc)


def platform_of(evidence: Any) -> str:
    """The platform name evidence says it comes from (ParseError when it names none)."""
    platform = evidence.get("platform") if isinstance(evidence, Mapping) else None
    if not isinstance(platform, str):
        raise ParseError("evidence.malformed", "evidence names no platform")
    return platform


def verify(evidence: Mapping[str, Any], options: VerifyOptions) -> VerifiedEvidence:
    """Verify evidence in Veil's wire form (``{"platform": ..., ...}``) with its platform's verifier."""
    from veil.attest import registry

    name = platform_of(evidence)
    verified = registry.verifier(name).verify(evidence, options)
    if verified.claims.platform != name:
        raise PolicyError(
            "evidence.platform_mismatch",
            f"evidence claims {name} but verifies as {verified.claims.platform}",
        )
    return verified


def validate(verified: VerifiedEvidence, references: Sequence[ReferenceValues]) -> VerifiedEvidence:
    """Apply the reference values for the evidence's platform; the first set that accepts wins."""
    from veil.attest import registry

    refs = [r for r in references if r.platform == verified.platform]
    if not refs:
        raise PolicyError("evidence.platform_not_allowed", f"the manifest has no reference values for {verified.platform}")
    platform = registry.verifier(verified.platform)
    first: PolicyError | None = None
    for ref in refs:
        try:
            checks = platform.validate(verified, platform.policy(ref))
        except PolicyError as err:
            first = first or err
            continue
        return verified.with_checks(*checks, reference=ref)
    assert first is not None
    if len(refs) > 1:
        raise PolicyError(first.reason, f"none of {len(refs)} reference value sets accepts: {first.message}")
    raise first


def appraise(evidence: Mapping[str, Any], references: Sequence[ReferenceValues], options: VerifyOptions) -> VerifiedEvidence:
    """Verify, then validate against the manifest's reference values; raises a typed VeilError."""
    name = platform_of(evidence)
    if not any(r.platform == name for r in references):
        raise PolicyError("evidence.platform_not_allowed", f"the manifest has no reference values for {name}")
    return validate(verify(evidence, options), references)


def verdict_of(call: Callable[[], VerifiedEvidence], claims_on_failure: Claims | None = None) -> Verdict:
    """The edge: run a verification and turn its outcome (or typed error) into a ``Verdict``."""
    try:
        verified = call()
    except VeilError as err:
        return Verdict.reject(err, claims_on_failure)
    return Verdict.accept(verified.claims, summary(verified.claims), checks=verified.checks)


def summary(claims: Claims) -> str:
    """One line for an accepted verdict; simulated evidence says so in plain words."""
    if claims.simulated:
        return f"SIMULATED TEE evidence verified ({claims.platform}): no hardware protection"
    return f"{claims.platform} evidence verified"
