"""What a client trusts: the coordinator's address, reference values, manifest pins, simulation.

`veil up` writes one for its local deployment to ``<state-dir>/client-policy.json``; production
clients get theirs from the deployment's owner through a channel they already trust.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from veil.errors import ParseError
from veil.manifest import ReferenceValues

if TYPE_CHECKING:
    from veil.client.manifest_log import ManifestLog

DEFAULT_STATE_DIR = Path(os.environ.get("VEIL_STATE_DIR", Path.home() / ".veil"))
POLICY_FILE = "client-policy.json"


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
    # The simulated TEE is refused unless the client opts in AND names the simulation root.
    trust_simulated: bool = False
    simulation_roots: list[str] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path | None = None) -> "ClientPolicy":
        path = path or default_policy_path()
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise ParseError(
                "policy.missing", f"no client policy at {path}; run `veil up` or pass --policy"
            ) from None
        except ValidationError as exc:
            raise ParseError("policy.malformed", f"{path}: {exc.errors()[0]['msg']}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n")


def default_policy_path() -> Path:
    return DEFAULT_STATE_DIR / POLICY_FILE


def load_with_log(path: Path | None) -> tuple[ClientPolicy, "ManifestLog"]:
    """A policy and the manifest log kept beside it (the client's memory of manifests seen)."""
    from veil.client.manifest_log import LOG_FILE, ManifestLog

    path = path or default_policy_path()
    return ClientPolicy.load(path), ManifestLog(path.parent / LOG_FILE)
