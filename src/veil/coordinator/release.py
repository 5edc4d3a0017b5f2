"""Evaluate a secret's release policy against a worker's verified claims."""

from __future__ import annotations

from veil.attest.claims import Claims
from veil.manifest import ReleasePolicy


def evaluate(policy: ReleasePolicy | None, claims: Claims, role: str = "worker") -> tuple[bool, str]:
    """(released?, reason code). Fails closed: no policy means no release."""
    if policy is None:
        return False, "release.no_policy"
    if role not in policy.roles:
        return False, "release.role_not_allowed"
    if claims.simulated and not policy.allow_simulated:
        return False, "release.simulated_refused"
    if policy.platforms and claims.platform not in policy.platforms:
        return False, "release.platform_not_allowed"
    if policy.measurements and claims.measurement not in policy.measurements:
        return False, "release.measurement_not_allowed"
    if claims.debug and not policy.allow_debug:
        return False, "release.debug_refused"
    for name, minimum in policy.min_tcb.items():
        value = claims.tcb.get(name)
        if not isinstance(value, int) or value < minimum:
            return False, "release.tcb_too_old"
    gpus = claims.details.get("gpus") or []
    if policy.require_gpu and not gpus:
        return False, "release.gpu_required"
    if policy.gpu_platforms and any(g.get("platform") not in policy.gpu_platforms for g in gpus):
        return False, "release.gpu_platform_not_allowed"
    if policy.skr is not None and not _skr_holds(policy.skr, claims):
        return False, "release.skr_not_satisfied"
    return True, "ok"


def _skr_holds(skr: dict[str, object], claims: Claims) -> bool:
    """An Azure Key Vault SKR policy over the worker's verified MAA token (its issuer the authority)."""
    from veil.attest.azure.skr import evaluate

    maa = claims.details.get("maa")
    tokens = {maa["issuer"]: maa["claims"]} if isinstance(maa, dict) else {}
    return evaluate(skr, tokens)
