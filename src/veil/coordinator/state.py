"""The coordinator's state: its keys, the manifest history and the workers it has admitted.

Everything secret here (the HPKE key admins encrypt to, the OHTTP private keys released to
workers) is generated inside the coordinator's TEE and leaves it only sealed to an attested key.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from veil.errors import PolicyError
from veil.manifest import SignedManifest, check_successor
from veil.ohttp.keyconfig import KeyPair, KeyStore


@dataclass(frozen=True)
class WorkerRecord:
    worker_id: str
    platform: str
    measurement: str
    simulated: bool
    registered_at: float


@dataclass
class CoordinatorState:
    hpke_key: X25519PrivateKey
    ohttp_keys: KeyStore
    history: list[SignedManifest] = field(default_factory=list)
    workers: dict[str, WorkerRecord] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def generate(cls) -> "CoordinatorState":
        return cls(hpke_key=X25519PrivateKey.generate(), ohttp_keys=KeyStore([KeyPair.generate(1)]))

    @property
    def manifest(self) -> SignedManifest | None:
        return self.history[-1] if self.history else None

    def require_manifest(self) -> SignedManifest:
        current = self.manifest
        if current is None:
            raise PolicyError("manifest.missing", "no manifest has been set on this coordinator")
        return current

    def append_manifest(self, entry: SignedManifest) -> int:
        """Extend the history if ``entry`` is a correctly signed successor; returns its index."""
        with self._lock:
            check_successor(self.manifest, entry)
            self.history.append(entry)
            return len(self.history) - 1

    def add_worker(self, record: WorkerRecord) -> None:
        with self._lock:
            self.workers[record.worker_id] = record
