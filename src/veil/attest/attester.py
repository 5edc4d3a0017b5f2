"""Producing evidence on the machine we run on.

Coordinator and worker ask an ``Attester`` (built by :func:`veil.attest.registry.attester` from
the platform name) for evidence over 64 bytes of report_data and get a JSON-ready dict
``{"platform": ..., "snp": {...}}`` that :mod:`veil.attest.api` verifies.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from veil.errors import ParseError

if TYPE_CHECKING:
    from veil.attest.registry import AttesterConfig


class Attester(Protocol):
    platform: str

    def evidence(self, report_data: bytes) -> dict[str, Any]: ...

    def sealing_key(self) -> bytes:
        """A 32-byte key only this code on this machine can derive (seals state at rest)."""
        ...


class SimSnpAttester:
    """The simulated SEV-SNP chip of a local deployment (clearly labelled ``sim-snp``).

    Its launch measurement is the digest of the installed Veil code, so a client that pins the
    measurement pins the code, as it would pin a VM image on real hardware.
    """

    platform = "sim-snp"

    def __init__(self, platform_dir: Path, host_data: bytes = bytes(32)) -> None:
        from veil.attest.sim import SimPlatform, measure_code

        if len(host_data) != 32:
            raise ParseError("attest.bad_launch_data", "sim-snp HOST_DATA is 32 bytes")
        self._sim = SimPlatform.load(platform_dir)
        self.measurement = measure_code()
        self.host_data = host_data  # what the simulated host set at launch, as SNP_LAUNCH_FINISH does

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        ev = self._sim.attest(report_data, measurement=self.measurement, host_data=self.host_data)
        return {"platform": self.platform, "snp": ev.to_json()}

    def sealing_key(self) -> bytes:
        """The simulated MSG_KEY_REQ: derived from the chip secret and mixed with the measurement,
        so other code (another measurement) on the same simulated chip derives another key."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        secret = self._sim.vcek_key.private_numbers().private_value.to_bytes(48, "big")
        return HKDF(hashes.SHA256(), 32, salt=self.measurement, info=b"veil/sim-sealing-key/v1").derive(secret)


class SnpAttester:
    """A real SEV-SNP guest: report through configfs-tsm or /dev/sev-guest, VCEK from the cache."""

    platform = "sev-snp"

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        from veil.attest.snp.collect import collect_evidence

        return {"platform": self.platform, "snp": collect_evidence(report_data).to_json()}

    def sealing_key(self) -> bytes:
        """MSG_KEY_REQ: the firmware's key for this chip, measurement and policy."""
        from veil.attest.snp.derived_key import sealing_key

        return sealing_key()


def sim_snp_attester(config: AttesterConfig) -> SimSnpAttester:
    if config.sim_dir is None:
        raise ParseError("attest.missing_sim_dir", "sim-snp needs the simulated platform's directory (--sim-dir)")
    return SimSnpAttester(config.sim_dir, config.launch_data if config.launch_data is not None else bytes(32))


def snp_attester(config: AttesterConfig) -> SnpAttester:
    return SnpAttester()
