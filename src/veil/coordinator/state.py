"""The coordinator's state: its keys, the manifest history, uploaded secrets, admitted workers.

Everything secret (the HPKE key admins encrypt to, the OHTTP private keys, model data keys) is
generated or received inside the coordinator's TEE and stored only under the state key. The
state key is sealed to the platform (so the same measured coordinator on the same machine gets it
back after a restart) and to the admins' recovery keys (so a new, verified coordinator can be
restored). A coordinator whose platform cannot unseal the stored state starts *locked*: it serves
attestation and accepts a recovery, nothing else.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy.exc import IntegrityError

from veil import keyrelease
from veil.coordinator.store import StateCipher, Store
from veil.errors import PolicyError, ProtocolError, VeilError
from veil.manifest import SignedManifest, check_successor
from veil.ohttp.keyconfig import KeyStore, new_generation
from veil.wire import RECOVERY_INFO, RECOVERY_UPLOAD_INFO

META_PLATFORM_SEALED = "state_key.platform"
META_RECOVERY = "state_key.recovery"
META_KEYS = "keys"


WORKER_STALE_SECONDS = 600.0  # a worker that has not re-attested for this long is dropped


@dataclass(frozen=True)
class WorkerRecord:
    worker_id: str
    platform: str
    measurement: str
    simulated: bool
    registered_at: float
    last_seen: float


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


@dataclass
class CoordinatorState:
    hpke_key: X25519PrivateKey
    ohttp_keys: KeyStore
    store: Store | None = None
    cipher: StateCipher | None = None
    locked: bool = False  # stored state exists that this platform cannot unseal: awaiting recovery
    history: list[SignedManifest] = field(default_factory=list)
    secrets: dict[str, bytes] = field(default_factory=dict)
    workers: dict[str, WorkerRecord] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _platform_key: bytes | None = field(default=None, repr=False)

    # construction -------------------------------------------------------------------------------
    @classmethod
    def generate(cls) -> "CoordinatorState":
        """Fresh keys, nothing persisted (tests, and deployments that accept losing state)."""
        return cls(hpke_key=X25519PrivateKey.generate(), ohttp_keys=KeyStore(new_generation(0)))

    @classmethod
    def open(cls, store: Store, platform_key: bytes) -> "CoordinatorState":
        """Load sealed state, create it on first start, or come up locked for recovery."""
        sealed = store.get_meta(META_PLATFORM_SEALED)
        if sealed is None:
            state = cls.generate()
            state.store, state._platform_key = store, platform_key
            try:
                state._initialise(os.urandom(32))
            except IntegrityError:  # HA: a peer starting on the same empty database won the race
                return cls.open(store, platform_key)
            return state
        try:
            state_key = StateCipher(platform_key).open(sealed, META_PLATFORM_SEALED)
        except VeilError:
            # Not our platform (or another measurement): stay locked until an admin restores us.
            locked = cls.generate()
            locked.store, locked.locked, locked._platform_key = store, True, platform_key
            return locked
        state = cls._load(store, state_key)
        state._platform_key = platform_key
        return state

    @classmethod
    def _load(cls, store: Store, state_key: bytes) -> "CoordinatorState":
        cipher = StateCipher(state_key)
        blob = store.get_meta(META_KEYS)
        if blob is None:
            raise ProtocolError("state.corrupt", "sealed state has no key record")
        keys = json.loads(cipher.open(blob, META_KEYS))
        state = cls(
            hpke_key=X25519PrivateKey.from_private_bytes(bytes.fromhex(keys["hpke"])),
            ohttp_keys=keyrelease.import_ohttp_keys(keys["ohttp"]),
            store=store,
            cipher=cipher,
        )
        for idx, digest, sealed_entry in store.manifest_rows():
            entry = SignedManifest.parse(cipher.open(sealed_entry, f"manifest:{idx}"))
            if entry.digest.hex() != digest:
                raise ProtocolError("state.corrupt", f"manifest {idx} does not match its digest")
            check_successor(state.history[-1] if state.history else None, entry)
            state.history.append(entry)
        for key_id, sealed_value, _ in store.secret_rows():
            state.secrets[key_id] = cipher.open(sealed_value, f"secret:{key_id}")
        return state

    def _initialise(self, state_key: bytes) -> None:
        assert self.store is not None and self._platform_key is not None
        self.cipher = StateCipher(state_key)
        keys = {"hpke": _raw_private(self.hpke_key).hex(), "ohttp": keyrelease.export_ohttp_keys(self.ohttp_keys)}
        # insert, never overwrite: of coordinators starting together on one database, one state wins
        with self.store.transaction() as conn:
            self.store.add_meta(conn, META_KEYS, self.cipher.seal(json.dumps(keys).encode(), META_KEYS))
            self.store.add_meta(
                conn, META_PLATFORM_SEALED, StateCipher(self._platform_key).seal(state_key, META_PLATFORM_SEALED)
            )

    # recovery -----------------------------------------------------------------------------------
    def recovery_blob(self) -> list[dict[str, str]]:
        """The state key sealed to each admin recovery key (public ciphertext)."""
        raw = self.store.get_meta(META_RECOVERY) if self.store else None
        return json.loads(raw) if raw else []

    def restore(self, sealed_state_key: bytes) -> None:
        """Unlock with a state key an admin recovered and sealed to our attested HPKE key."""
        if not self.locked or self.store is None or self._platform_key is None:
            raise PolicyError("recovery.not_locked", "this coordinator is not awaiting recovery")
        state_key = keyrelease.open_sealed(self.hpke_key, sealed_state_key, RECOVERY_UPLOAD_INFO)
        try:
            loaded = CoordinatorState._load(self.store, state_key)
        except VeilError:
            raise PolicyError("recovery.wrong_key", "the recovered key does not open the stored state") from None
        with self._lock:
            self.hpke_key, self.ohttp_keys, self.cipher = loaded.hpke_key, loaded.ohttp_keys, loaded.cipher
            self.history, self.secrets, self.locked = loaded.history, loaded.secrets, False
            with self.store.transaction() as conn:  # from now on, sealed to *this* platform
                self.store.put_meta(
                    conn, META_PLATFORM_SEALED,
                    StateCipher(self._platform_key).seal(state_key, META_PLATFORM_SEALED),
                )
                self.store.add_audit(conn, "recovery", "state", "restored", "ok")

    def _recovery_records(self, recovery_keys: list[str], state_key: bytes) -> bytes:
        return json.dumps([
            {"recovery_key": k, "sealed_state_key": keyrelease.seal(bytes.fromhex(k), state_key, RECOVERY_INFO).hex()}
            for k in recovery_keys
        ]).encode()

    # manifests ----------------------------------------------------------------------------------
    @property
    def manifest(self) -> SignedManifest | None:
        return self.history[-1] if self.history else None

    def require_unlocked(self) -> None:
        if self.locked:
            raise PolicyError("state.locked", "this coordinator awaits recovery (`veil recover`)")

    def require_manifest(self) -> SignedManifest:
        self.require_unlocked()
        current = self.manifest
        if current is None:
            raise PolicyError("manifest.missing", "no manifest has been set on this coordinator")
        return current

    def refresh(self) -> None:
        """Pick up what coordinators sharing our database wrote (manifests, secrets) since we loaded."""
        if self.store is None or self.cipher is None or self.locked:
            return
        with self._lock:
            for idx, digest, sealed_entry in self.store.manifest_rows()[len(self.history):]:
                entry = SignedManifest.parse(self.cipher.open(sealed_entry, f"manifest:{idx}"))
                if entry.digest.hex() != digest:
                    raise ProtocolError("state.corrupt", f"manifest {idx} does not match its digest")
                check_successor(self.manifest, entry)
                self.history.append(entry)
            for key_id, sealed_value, _ in self.store.secret_rows():
                if key_id not in self.secrets:
                    self.secrets[key_id] = self.cipher.open(sealed_value, f"secret:{key_id}")

    def append_manifest(self, entry: SignedManifest) -> int:
        """Extend the history if ``entry`` is a correctly signed successor; returns its index."""
        self.require_unlocked()
        self.refresh()
        with self._lock:
            check_successor(self.manifest, entry)
            idx = len(self.history)
            if self.store is not None and self.cipher is not None:
                with self._conflict_guard(), self.store.transaction() as conn:
                    sealed = self.cipher.seal(entry.model_dump_json().encode(), f"manifest:{idx}")
                    self.store.add_manifest(conn, idx, entry.digest.hex(), sealed)
                    if entry.manifest.recovery_keys:
                        state_key = self._state_key()
                        self.store.put_meta(conn, META_RECOVERY, self._recovery_records(entry.manifest.recovery_keys, state_key))
                    self.store.add_audit(conn, "manifest.set", entry.digest.hex(), "accepted", "ok", {"index": idx})
            self.history.append(entry)
            return idx

    def _state_key(self) -> bytes:
        assert self.store is not None and self._platform_key is not None
        sealed = self.store.get_meta(META_PLATFORM_SEALED)
        assert sealed is not None
        return StateCipher(self._platform_key).open(sealed, META_PLATFORM_SEALED)

    # secrets ------------------------------------------------------------------------------------
    @contextmanager
    def _conflict_guard(self) -> Iterator[None]:
        """Another coordinator on the same database wrote first: a clean refusal, not a crash."""
        try:
            yield
        except IntegrityError:
            raise PolicyError("state.conflict", "another coordinator changed this state first; retry") from None

    def put_secret(self, key_id: str, value: bytes, admin_key: str) -> None:
        self.require_unlocked()
        self.refresh()
        with self._lock:
            if key_id in self.secrets:
                raise PolicyError("secret.exists", f"secret {key_id!r} exists; secrets are write-once")
            if self.store is not None and self.cipher is not None:
                with self._conflict_guard(), self.store.transaction() as conn:
                    self.store.add_secret(conn, key_id, self.cipher.seal(value, f"secret:{key_id}"))
                    self.store.add_audit(conn, "secret.put", key_id, "accepted", "ok", {"admin_key": admin_key})
            self.secrets[key_id] = value

    # audit --------------------------------------------------------------------------------------
    def audit(self, event: str, subject: str, decision: str, reason: str, detail: dict[str, Any] | None = None) -> None:
        """Record a decision (never a secret value)."""
        if self.store is not None:
            with self.store.transaction() as conn:
                self.store.add_audit(conn, event, subject, decision, reason, detail)

    def add_worker(self, record: WorkerRecord) -> None:
        """Record a (re-)registration; workers that stopped re-attesting fall out of the list."""
        with self._lock:
            self.workers[record.worker_id] = record
            stale = record.last_seen - WORKER_STALE_SECONDS
            for worker_id in [w for w, r in self.workers.items() if r.last_seen < stale]:
                del self.workers[worker_id]
