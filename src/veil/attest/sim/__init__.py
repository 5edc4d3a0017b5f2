"""``sim-snp``: a SIMULATED SEV-SNP TEE for development, tests and the demo (no hardware protection).

Evidence from it verifies through the same code as real AMD hardware, but only when the caller
explicitly trusts its root (``TrustRoots.default().with_simulation(platform.root_fingerprint)``);
claims then say ``platform="sim-snp"`` and ``simulated=True``.
"""

from veil.attest.sim.platform import SimPlatform, measure_code

PLATFORM = "sim-snp"

__all__ = ["PLATFORM", "SimPlatform", "measure_code"]
