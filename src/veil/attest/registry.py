"""Platform name -> verifier and attester: the only place that knows which platforms exist.

The coordinator (checking workers), the client (checking the coordinator) and the CLI all reach a
platform's code through here, so nothing platform-specific lives outside ``veil.attest``.
Entries name their implementation as ``"module:attribute"`` and are imported on first use (a
client that only ever sees SEV-SNP never imports dcap-qvl).

Adding a platform (see docs/attestation.md): write ``veil/attest/<name>/`` with an ``abi``
(parse), ``verify`` (crypto, returning ``VerifiedEvidence``), ``validate`` (policy) and ``collect``
(attester) layer, expose a ``PlatformVerifier`` object and an attester factory, and add one
``Platform`` line below. A simulated twin reuses the same verifier with its own root.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from veil.errors import PolicyError

if TYPE_CHECKING:
    from veil.attest.api import PlatformVerifier
    from veil.attest.attester import Attester

Kind = Literal["cpu", "gpu", "token"]


@dataclass(frozen=True)
class Platform:
    """One platform: what it is, and where its verifier and attester live."""

    name: str
    kind: Kind  # cpu: a TEE a coordinator or worker runs in; gpu/token: extra evidence
    summary: str
    verifier: str  # "module:attribute" of a PlatformVerifier
    attester: str | None = None  # "module:attribute" of a factory(AttesterConfig) -> Attester
    simulated: bool = False
    sources: tuple[str, ...] = ("auto",)  # where its attester can take evidence from (AttesterConfig.source)


@dataclass(frozen=True)
class AttesterConfig:
    """What an attester may need on the machine it runs on (CLI flags of coordinator and worker)."""

    sim_dir: Path | None = None  # simulated platforms: the per-deployment platform directory
    collateral_dir: Path | None = None  # the collateral cache (None: the default directory)
    source: str = "auto"  # where evidence comes from: auto (the TEE's devices) or coco-aa
    aa_url: str = "http://127.0.0.1:8006"  # the CoCo Attestation Agent, for source=coco-aa
    launch_data: bytes | None = None  # simulated platforms: HOST_DATA / MRCONFIGID set at launch


PLATFORMS: dict[str, Platform] = {
    p.name: p
    for p in (
        Platform(
            "sev-snp",
            "cpu",
            "AMD SEV-SNP guest",
            "veil.attest.snp.platform:SEV_SNP",
            "veil.attest.attester:snp_attester",
            sources=("auto", "coco-aa"),
        ),
        Platform(
            "sim-snp",
            "cpu",
            "SIMULATED SEV-SNP (per-deployment root, no hardware protection)",
            "veil.attest.snp.platform:SEV_SNP",
            "veil.attest.attester:sim_snp_attester",
            simulated=True,
        ),
        Platform(
            "tdx",
            "cpu",
            "Intel TDX trust domain",
            "veil.attest.tdx.platform:TDX",
            "veil.attest.attester:tdx_attester",
            sources=("auto", "coco-aa"),
        ),
        Platform(
            "sim-tdx",
            "cpu",
            "SIMULATED Intel TDX (per-deployment root, no hardware protection)",
            "veil.attest.tdx.platform:TDX",
            "veil.attest.attester:sim_tdx_attester",
            simulated=True,
        ),
        Platform(
            "azure-snp-vtpm",
            "cpu",
            "Azure confidential VM, SEV-SNP behind the paravisor (vTPM + HCL)",
            "veil.attest.azure.platform:AZURE_SNP_VTPM",
            "veil.attest.azure.collect:snp_vtpm_attester",
        ),
        Platform(
            "azure-tdx-vtpm",
            "cpu",
            "Azure confidential VM, TDX behind the paravisor (vTPM + HCL)",
            "veil.attest.azure.platform:AZURE_TDX_VTPM",
            "veil.attest.azure.collect:tdx_vtpm_attester",
        ),
        Platform(
            "sim-azure-snp",
            "cpu",
            "SIMULATED Azure SEV-SNP confidential VM (vTPM + HCL + MAA, per-deployment roots)",
            "veil.attest.azure.platform:SIM_AZURE_SNP",
            "veil.attest.sim.azure:sim_azure_snp_attester",
            simulated=True,
        ),
        Platform(
            "sim-azure-tdx",
            "cpu",
            "SIMULATED Azure TDX confidential VM (vTPM + HCL + MAA, per-deployment roots)",
            "veil.attest.azure.platform:SIM_AZURE_TDX",
            "veil.attest.sim.azure:sim_azure_tdx_attester",
            simulated=True,
        ),
        Platform("nvidia", "gpu", "NVIDIA H100/H200 in CC mode (SPDM report)", "veil.attest.nvidia.platform:NVIDIA"),
        Platform("azure-maa", "token", "Microsoft Azure Attestation token", "veil.attest.azure.platform:AZURE_MAA"),
    )
}


def platform(name: str) -> Platform:
    """The registry entry for ``name`` (PolicyError ``evidence.platform_unsupported`` if unknown)."""
    found = PLATFORMS.get(name)
    if found is None:
        raise PolicyError("evidence.platform_unsupported", f"platform {name!r} is not supported")
    return found


def is_simulated(name: str) -> bool:
    """True for the simulated twins (sim-snp, sim-tdx...)."""
    entry = PLATFORMS.get(name)
    return entry is not None and entry.simulated


def names(kind: Kind | None = None) -> list[str]:
    return [n for n, p in PLATFORMS.items() if kind is None or p.kind == kind]


@cache
def _load(ref: str) -> Any:
    module, _, attribute = ref.partition(":")
    return getattr(importlib.import_module(module), attribute)


def verifier(name: str) -> PlatformVerifier[Any]:
    """The verifier of platform ``name``."""
    loaded: PlatformVerifier[Any] = _load(platform(name).verifier)
    return loaded


def attester(name: str, config: AttesterConfig | None = None) -> Attester:
    """An attester for ``name`` on this machine (PolicyError when the platform has none)."""
    entry = platform(name)
    if entry.attester is None:
        raise PolicyError("attest.no_attester", f"Veil cannot yet run on {name}: it has no attester")
    config = config or AttesterConfig()
    if config.source not in entry.sources:  # never fall back silently to another evidence source
        raise PolicyError(
            "attest.source_unsupported", f"{name}'s attester takes evidence from {', '.join(entry.sources)}, not {config.source}"
        )
    built: Attester = _load(entry.attester)(config)
    return built
