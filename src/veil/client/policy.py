"""What a client trusts, and what it lets an attested manifest admit.

A verified coordinator proves *which* manifest it enforces; the manifest in turn decides which
workers receive the OHTTP private keys. So the client also judges the manifest: which worker
platforms it may admit, whether debug guests or an unsandboxed engine may hold keys, and whether
anything simulated may take part. :meth:`ClientPolicy.check` raises for a manifest beyond that,
like a sigstore-python policy's ``verify``.

Two constructors make the intended configurations one call away: :meth:`ClientPolicy.production`
(hardware only, debug off, a sandbox on; it has no way to trust simulation) and
:meth:`ClientPolicy.local_development`, which `veil up` writes to ``<state-dir>/client-policy.json``
for its simulated deployment. Production clients get their policy from the deployment's owner
through a channel they already trust.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from veil.attest import registry
from veil.attest.registry import is_simulated
from veil.errors import ParseError, PolicyError
from veil.manifest import Manifest, ReferenceValues

if TYPE_CHECKING:
    from veil.client.manifest_log import ManifestLog

DEFAULT_STATE_DIR = Path(os.environ.get("VEIL_STATE_DIR", Path.home() / ".veil"))
POLICY_FILE = "client-policy.json"

HARDWARE_PLATFORMS = tuple(p.name for p in registry.PLATFORMS.values() if p.kind == "cpu" and not p.simulated)
SandboxProfile = Literal["bubblewrap", "gvisor", "none"]
SANDBOXED: tuple[Literal["bubblewrap", "gvisor"], ...] = ("bubblewrap", "gvisor")


def _sandboxed() -> list[SandboxProfile]:
    return list(SANDBOXED)


def simulation_in(manifest: Manifest) -> list[str]:
    """Every way ``manifest`` lets something simulated take part, in words (empty: none)."""
    parts = [f"coordinators on {r.platform}" for r in manifest.coordinator if is_simulated(r.platform)]
    parts += [f"workers on {r.platform}" for r in manifest.workers if is_simulated(r.platform)]
    parts += [f"simulation root {root}" for root in manifest.trusted_simulation_roots]
    parts += [f"release of {k} to simulated workers" for k, p in manifest.release_policies.items() if p.allow_simulated]
    return parts


class ClientPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    coordinator_url: str = "http://127.0.0.1:8470"
    gateway_url: str = "http://127.0.0.1:8471"
    # An RFC 9458 relay (e.g. deploy/haproxy/relay.cfg): encrypted requests are POSTed there and the
    # relay forwards them to the gateway, which then never sees this client's address. The relay
    # sees only ciphertext; nothing about trust changes (the keys still come from the attestation).
    relay_url: str | None = None
    coordinator: list[ReferenceValues] = Field(min_length=1)
    # Pin the manifest by digest, or trust manifests signed by these admin keys (or both).
    manifest_digests: list[str] = Field(default_factory=list)
    admin_keys: list[str] = Field(default_factory=list)
    # What the manifest may admit, for workers (and for coordinators it lets share the state).
    worker_platforms: list[str] = Field(default_factory=lambda: list(HARDWARE_PLATFORMS))
    allow_debug: bool = False
    sandbox_profiles: list[SandboxProfile] = Field(default_factory=lambda: _sandboxed())
    # Anything simulated is refused unless the client opts in AND names the simulation root.
    trust_simulated: bool = False
    simulation_roots: list[str] = Field(default_factory=list)

    @field_validator("worker_platforms")
    @classmethod
    def _hardware_only(cls, platforms: list[str]) -> list[str]:
        if any(is_simulated(p) for p in platforms):
            raise ValueError("simulated platforms are admitted by trust_simulated and simulation_roots, not listed")
        return platforms

    @classmethod
    def production(
        cls,
        *,
        coordinator: list[ReferenceValues],
        coordinator_url: str,
        gateway_url: str,
        manifest_digests: Iterable[str] = (),
        admin_keys: Iterable[str] = (),
        worker_platforms: Iterable[str] = HARDWARE_PLATFORMS,
        sandbox_profiles: Iterable[Literal["bubblewrap", "gvisor"]] = SANDBOXED,
    ) -> ClientPolicy:
        """Hardware TEEs only, no debug guest, a sandboxed engine: nothing simulated, ever."""
        if any(is_simulated(r.platform) for r in coordinator):
            raise ValueError("a production policy cannot name a simulated coordinator")
        return cls(
            coordinator=coordinator,
            coordinator_url=coordinator_url,
            gateway_url=gateway_url,
            manifest_digests=list(manifest_digests),
            admin_keys=list(admin_keys),
            worker_platforms=list(worker_platforms),
            sandbox_profiles=list(sandbox_profiles),
        )

    @classmethod
    def local_development(
        cls,
        *,
        coordinator: list[ReferenceValues],
        simulation_roots: list[str],
        sandbox_profile: SandboxProfile,
        coordinator_url: str,
        gateway_url: str,
        manifest_digests: Iterable[str] = (),
        admin_keys: Iterable[str] = (),
    ) -> ClientPolicy:
        """The policy `veil up` writes: this machine's simulation roots and the sandbox it runs."""
        return cls(
            coordinator=coordinator,
            coordinator_url=coordinator_url,
            gateway_url=gateway_url,
            manifest_digests=list(manifest_digests),
            admin_keys=list(admin_keys),
            sandbox_profiles=[sandbox_profile],
            trust_simulated=True,
            simulation_roots=simulation_roots,
        )

    def check(self, manifest: Manifest) -> None:
        """Raise ``PolicyError`` unless every machine and engine ``manifest`` admits is acceptable."""
        for role, refs in (("workers", manifest.workers), ("coordinators", manifest.coordinator)):
            for ref in refs:
                if is_simulated(ref.platform):
                    self._check_simulated(f"{role} on {ref.platform}")
                elif ref.platform not in self.worker_platforms:
                    raise PolicyError(
                        "policy.platform_refused",
                        f"the manifest admits {role} on {ref.platform}; this client accepts "
                        f"{', '.join(self.worker_platforms) or 'none'}",
                    )
                if ref.allow_debug and not self.allow_debug:
                    raise PolicyError("policy.debug_refused", f"the manifest admits debug {role} on {ref.platform}")
        for key_id, release in manifest.release_policies.items():
            if release.allow_debug and not self.allow_debug:
                raise PolicyError("policy.debug_refused", f"the manifest releases {key_id} to debug guests")
            if release.allow_simulated:
                self._check_simulated(f"release of {key_id} to simulated workers")
        for root in manifest.trusted_simulation_roots:
            self._check_simulated(f"simulation root {root}")
            if root not in self.simulation_roots:
                raise PolicyError(
                    "policy.simulation_root_unknown", f"the manifest trusts simulation root {root}, which this client does not"
                )
        if manifest.sandbox.profile not in self.sandbox_profiles:
            raise PolicyError(
                "policy.sandbox_refused",
                f"the manifest runs the engine under sandbox profile {manifest.sandbox.profile!r}; this client "
                f"accepts {', '.join(self.sandbox_profiles) or 'none'}",
            )

    def _check_simulated(self, what: str) -> None:
        if not self.trust_simulated:
            raise PolicyError(
                "policy.simulation_refused", f"the manifest admits {what} (SIMULATED) and this client does not trust simulation"
            )

    def admission_rules(self) -> dict[str, Any]:
        """What this client lets a manifest admit (shown by `veil verify` and the proxy)."""
        return {
            "worker_platforms": list(self.worker_platforms),
            "allow_debug": self.allow_debug,
            "sandbox_profiles": list(self.sandbox_profiles),
            "trust_simulated": self.trust_simulated,
            "simulation_roots": list(self.simulation_roots) if self.trust_simulated else [],
        }

    @classmethod
    def load(cls, path: Path | None = None) -> ClientPolicy:
        path = path or default_policy_path()
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ParseError("policy.missing", f"no client policy at {path}; run `veil up` or pass --policy") from None
        except ValidationError as exc:
            raise ParseError("policy.malformed", f"{path}: {exc.errors()[0]['msg']}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")


def default_policy_path() -> Path:
    return DEFAULT_STATE_DIR / POLICY_FILE


def load_with_log(path: Path | None) -> tuple[ClientPolicy, ManifestLog]:
    """A policy and the manifest log kept beside it (the client's memory of manifests seen)."""
    from veil.client.manifest_log import LOG_FILE, ManifestLog

    path = path or default_policy_path()
    return ClientPolicy.load(path), ManifestLog(path.parent / LOG_FILE)
