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

    def launch_data(self) -> bytes:
        """What the launcher bound into this VM's measured launch data (SEV-SNP HOST_DATA, TDX
        MRCONFIGID): part of every report, so the host cannot change it unseen. Veil carries the
        bootstrap admin key there (``veil.attestation.bootstrap_key``)."""
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

    def launch_data(self) -> bytes:
        return self.host_data

    def sealing_key(self) -> bytes:
        """The simulated MSG_KEY_REQ: derived from the chip secret and mixed with the measurement,
        so other code (another measurement) on the same simulated chip derives another key."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        secret = self._sim.vcek_key.private_numbers().private_value.to_bytes(48, "big")
        return HKDF(hashes.SHA256(), 32, salt=self.measurement, info=b"veil/sim-sealing-key/v1").derive(secret)


def _agent(platform: str, url: str) -> Any:
    """The CoCo Attestation Agent at ``url``, refusing one that attests another TEE."""
    from veil.attest.coco import AttestationAgent
    from veil.errors import ProtocolError

    agent = AttestationAgent(url)
    tee = agent.platform()
    if tee is not None and tee != platform:
        raise ProtocolError("coco.wrong_tee", f"the Attestation Agent at {url} attests {tee}, not {platform}")
    return agent


class SnpAttester:
    """A real SEV-SNP guest: the report through configfs-tsm or /dev/sev-guest, or (in a CoCo pod)
    from the Attestation Agent; the VCEK from the host's certificate table or the cache, the CRL
    from the cache. Not run on real hardware yet."""

    platform = "sev-snp"

    def __init__(self, collateral_dir: Path | None = None, source: str = "auto", aa_url: str | None = None) -> None:
        from veil.attest.collateral import CollateralCache

        self._cache = CollateralCache(collateral_dir)
        self._agent = _agent(self.platform, aa_url) if source == "coco-aa" and aa_url else None

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        from veil.attest.snp.collect import CollectedReport, collect_evidence, to_evidence

        if self._agent is not None:
            from veil.attest.coco import snp_from_agent

            report, certs = snp_from_agent(self._agent.evidence(report_data))
            ev = to_evidence(CollectedReport(report, "coco-aa", certificates=certs), cache=self._cache)
        else:
            ev = collect_evidence(report_data, cache=self._cache)
        return {"platform": self.platform, "snp": ev.to_json()}

    def sealing_key(self) -> bytes:
        """MSG_KEY_REQ: the firmware's key for this chip, measurement and policy."""
        from veil.attest.snp.derived_key import sealing_key

        return sealing_key()

    def launch_data(self) -> bytes:
        """HOST_DATA of our own report (the hypervisor set it at launch)."""
        from veil.attest.snp.abi import Report
        from veil.attest.snp.collect import collect_evidence

        return Report.from_bytes(collect_evidence(b"\0" * 64).report).host_data


def sim_snp_attester(config: AttesterConfig) -> SimSnpAttester:
    if config.sim_dir is None:
        raise ParseError("attest.missing_sim_dir", "sim-snp needs the simulated platform's directory (--sim-dir)")
    return SimSnpAttester(config.sim_dir, config.launch_data if config.launch_data is not None else bytes(32))


def snp_attester(config: AttesterConfig) -> SnpAttester:
    return SnpAttester(config.collateral_dir, config.source, config.aa_url)


class SimTdxAttester:
    """The simulated TDX machine of a local deployment (clearly labelled ``sim-tdx``).

    MRTD is the digest of the installed Veil code (as ``sim-snp``'s measurement), MRCONFIGID what
    the simulated host set at launch.
    """

    platform = "sim-tdx"

    def __init__(self, platform_dir: Path, mr_config_id: bytes = bytes(48)) -> None:
        from veil.attest.sim import measure_code
        from veil.attest.sim.tdx import SimTdxPlatform

        if len(mr_config_id) != 48:
            raise ParseError("attest.bad_launch_data", "sim-tdx MRCONFIGID is 48 bytes")
        self._sim = SimTdxPlatform.load(platform_dir)
        self.measurement = measure_code()
        self.mr_config_id = mr_config_id

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        ev = self._sim.evidence(report_data, mr_td=self.measurement, mr_config_id=self.mr_config_id)
        return {"platform": self.platform, "tdx": ev.to_json()}

    def launch_data(self) -> bytes:
        return self.mr_config_id

    def sealing_key(self) -> bytes:
        """Simulated: the platform secret mixed with MRTD, so other code derives another key."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return HKDF(hashes.SHA256(), 32, salt=self.measurement, info=b"veil/sim-tdx-sealing-key/v1").derive(
            self._sim.sealing_secret()
        )


class TdxAttester:
    """A real TDX guest: the quote through configfs-tsm, the PCS collateral from the cache.

    Intel TDX offers the guest no sealing key (unlike SNP's MSG_KEY_REQ): a coordinator on TDX keeps
    its state in memory, or is restored with ``veil recover`` (its state key is also sealed to the
    admins' recovery keys) after a restart. Not run on real hardware yet.
    """

    platform = "tdx"

    def __init__(
        self, collateral_dir: Path | None = None, tsm: Any = None, source: str = "auto", aa_url: str | None = None
    ) -> None:
        from veil.attest.collateral import CollateralCache
        from veil.attest.tsm import ConfigfsTsm

        self._cache = CollateralCache(collateral_dir)
        self._tsm = tsm or ConfigfsTsm()
        self._agent = _agent(self.platform, aa_url) if source == "coco-aa" and aa_url else None

    def evidence(self, report_data: bytes) -> dict[str, Any]:
        from veil.attest.tdx.collect import collect_evidence, with_cached_collateral

        if self._agent is not None:
            from veil.attest.coco import tdx_quote_from_agent

            ev = with_cached_collateral(tdx_quote_from_agent(self._agent.evidence(report_data)), self._cache)
        else:
            ev = collect_evidence(report_data, self._cache, tsm=self._tsm)
        return {"platform": self.platform, "tdx": ev.to_json()}

    def launch_data(self) -> bytes:
        """MRCONFIGID of our own quote (the host set it when it launched the TD)."""
        from veil.attest.tdx.abi import parse_quote
        from veil.attest.tdx.collect import collect_quote

        return parse_quote(collect_quote(b"\0" * 64, tsm=self._tsm)).body.mr_config_id

    def sealing_key(self) -> bytes:
        from veil.errors import ProtocolError

        raise ProtocolError(
            "sealing.unavailable",
            "Intel TDX gives a guest no sealing key: run the coordinator without --db, or restore it with "
            "`veil recover` after each restart",
        )


def sim_tdx_attester(config: AttesterConfig) -> SimTdxAttester:
    if config.sim_dir is None:
        raise ParseError("attest.missing_sim_dir", "sim-tdx needs the simulated platform's directory (--sim-dir)")
    # MRCONFIGID is 48 bytes; launch data given shorter (a 32-byte bootstrap key) is zero padded
    launch = config.launch_data if config.launch_data is not None else b""
    if len(launch) > 48:
        raise ParseError("attest.bad_launch_data", "sim-tdx MRCONFIGID is at most 48 bytes")
    return SimTdxAttester(config.sim_dir, launch.ljust(48, b"\0"))


def tdx_attester(config: AttesterConfig) -> TdxAttester:
    return TdxAttester(config.collateral_dir, source=config.source, aa_url=config.aa_url)
