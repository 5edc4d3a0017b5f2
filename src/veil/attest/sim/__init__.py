"""Simulated TEEs for development, tests and the demo: NO hardware protection.

``sim-snp`` (:mod:`veil.attest.sim.platform`), ``sim-tdx`` (:mod:`veil.attest.sim.tdx`) and the
Azure CVMs ``sim-azure-snp``/``sim-azure-tdx`` (:mod:`veil.attest.sim.azure`, with a simulated MAA)
produce the real evidence formats signed by roots generated per deployment. Their evidence verifies
through the same code as real hardware, but only when the caller explicitly trusts that root
(``TrustRoots.production().with_simulation(root_fingerprint)``); claims then name the simulated
platform and say ``simulated=True``.
"""

from __future__ import annotations

import os
from typing import Protocol

from veil.attest.sim.platform import SimPlatform, measure_code
from veil.errors import ParseError

PLATFORM = "sim-snp"


class SimulatedPlatform(Protocol):
    @property
    def root_fingerprint(self) -> str: ...

    @property
    def simulation_roots(self) -> list[str]:
        """Every root its evidence chains to: what a manifest's ``trusted_simulation_roots`` names."""
        ...


def load_or_create(platform: str, directory: str | os.PathLike[str]) -> SimulatedPlatform:
    """The simulated machine for ``platform`` (``sim-snp``, ``sim-tdx``, ``sim-azure-snp``,
    ``sim-azure-tdx``) kept in ``directory``."""
    if platform == "sim-snp":
        return SimPlatform.load_or_create(directory)
    if platform == "sim-tdx":
        from veil.attest.sim.tdx import SimTdxPlatform

        return SimTdxPlatform.load_or_create(directory)
    if platform in ("sim-azure-snp", "sim-azure-tdx"):
        from veil.attest.sim.azure import SimAzureCvm

        return SimAzureCvm.load_or_create(platform, directory)
    raise ParseError(
        "sim.unknown_platform", f"{platform!r} is not a simulated platform (sim-snp, sim-tdx, sim-azure-snp, sim-azure-tdx)"
    )


__all__ = ["PLATFORM", "SimPlatform", "SimulatedPlatform", "load_or_create", "measure_code"]
