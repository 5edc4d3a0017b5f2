"""The coordinator's state: its seed and keys, the manifest history, secrets, admitted workers.

Everything secret (the HPKE key admins encrypt to, the OHTTP private keys, model data keys) is
generated or received inside the coordinator's TEE and stored only under the *state seed*
(``seed.py``), whose public identity every manifest names (``coordinator_identity``). The seed is
sealed to the platform (so the same measured coordinator on the same machine gets it back after a
restart) and to the admins' recovery keys. A coordinator whose platform cannot unseal the stored
seed starts *locked*: it serves attestation and its public history, and accepts a restore that an
admin of that history authorised for exactly this coordinator and this state — nothing else.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from veil import keyrelease
from veil.attestation import RESTORE_CONTEXT, restore_statement, verify_statement
from veil.coordinator.audit import AuditLog, AuditPage, RefusalTally
from veil.coordinator.keys import Generation, KeyRing, Rotation
from veil.coordinator.seed import StateCipher, StateSeed
from veil.coordinator.store import FORMAT, Store
from veil.errors import PolicyError, ProtocolError, VeilError, VerificationError
from veil.manifest import SignedManifest, check_successor
from veil.ohttp.keyconfig import KeyStore
from veil.wire import RECOVERY_INFO, RECOVERY_UPLOAD_INFO

META_FORMAT = "format"
META_PLATFORM_SEALED = "state_key.platform"
META_RECOVERY = "state_key.recovery"
META_HEAD = "history.head"

WORKER_STALE_SECONDS = 600.0  # a worker that has not re-attested for this long is dropped


@dataclass(frozen=True)
class WorkerRecord:
    worker_id: str
    platform: str
    measurement: str
    simulated: bool
    registered_at: float
    last_seen: float
    secret: bytes = field(default=b"", repr=False)  # proves re-registrations; memory only

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "secret"}


@dataclass
class CoordinatorState:
    seed: StateSeed
    keys: KeyRing
    store: Store | None = None
    locked: bool = False  # stored state exists that this platform cannot unseal: awaiting recovery
    bootstrap_key: str | None = None  # from measured launch data: must sign the first manifest
    history: list[SignedManifest] = field(default_factory=list)
    secrets: dict[str, bytes] = field(default_factory=dict)
    workers: dict[str, WorkerRecord] = field(default_factory=dict)
    audit_log: AuditLog | None = None
    tally: RefusalTally = field(default_factory=RefusalTally)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _platform_key: bytes | None = field(default=None, repr=False)
    _key_store: dict[bool, tuple[float, KeyStore]] = field(default_factory=dict, repr=False)

    # construction -------------------------------------------------------------------------------
    @classmethod
    def generate(cls, bootstrap_key: str | None = None, *, rotation: Rotation = Rotation()) -> "CoordinatorState":
        """A fresh seed and keys, nothing persisted (tests, and deployments that accept losing state)."""
        ring = KeyRing([Generation.create(0, time.time(), set())], rotation)
        return cls(seed=StateSeed.generate(), keys=ring, bootstrap_key=bootstrap_key)

    @classmethod
    def open(
        cls, store: Store, platform_key: bytes, bootstrap_key: str | None = None, *, rotation: Rotation = Rotation()
    ) -> "CoordinatorState":
        """Load sealed state, create it on first start, or come up locked for recovery."""
        sealed = store.get_meta(META_PLATFORM_SEALED)
        if sealed is None:
            state = cls.generate(bootstrap_key, rotation=rotation)
            state.store, state._platform_key = store, platform_key
            try:
                state._initialise()
            except IntegrityError:  # HA: a peer starting on the same empty database won the race
                return cls.open(store, platform_key, bootstrap_key, rotation=rotation)
            return state
        if store.get_meta(META_FORMAT) != FORMAT:
            raise ProtocolError(
                "state.unsupported_format",
                "the database holds state in a layout this version does not read; "
                "restore it with the version that wrote it, or start from an empty database",
            )
        try:
            seed = StateSeed(StateCipher(platform_key).open(sealed, META_PLATFORM_SEALED))
        except VeilError:
            # Not our platform (or another measurement): stay locked until an admin restores us.
            locked = cls.generate(bootstrap_key, rotation=rotation)
            locked.store, locked.locked, locked._platform_key = store, True, platform_key
            return locked
        state = cls._load(store, seed, bootstrap_key, rotation=rotation)
        state.check_identity()
        state._platform_key = platform_key
        return state

    @classmethod
    def _load(cls, store: Store, seed: StateSeed, bootstrap_key: str | None, *, rotation: Rotation) -> "CoordinatorState":
        cipher = seed.cipher
        generations = [Generation.from_record(json.loads(cipher.open(blob, f"ohttp:{n}"))) for n, blob in store.generation_rows()]
        if not generations:
            raise ProtocolError("state.corrupt", "sealed state holds no OHTTP key generation")
        state = cls(seed=seed, keys=KeyRing(generations, rotation), store=store, bootstrap_key=bootstrap_key)
        state._read_history()
        for key_id, sealed_value, _ in store.secret_rows():
            state.secrets[key_id] = cipher.open(sealed_value, f"secret:{key_id}")
        state.audit_log = AuditLog(store, cipher)
        return state

    def _initialise(self) -> None:
        assert self.store is not None and self._platform_key is not None
        # insert, never overwrite: of coordinators starting together on one database, one state wins
        with self.store.transaction() as conn:
            self.store.add_meta(conn, META_FORMAT, FORMAT)
            self._store_generation(conn, self.keys.newest)
            self.store.add_meta(
                conn, META_PLATFORM_SEALED, StateCipher(self._platform_key).seal(self.seed.secret, META_PLATFORM_SEALED)
            )
        self.audit_log = AuditLog(self.store, self.seed.cipher)

    # identity and keys --------------------------------------------------------------------------
    @property
    def hpke_key(self) -> X25519PrivateKey:
        """The X25519 key admins encrypt to (the attested ``public_key``)."""
        return self.seed.hpke_key

    @property
    def identity(self) -> str:
        """The state's public identity (hex), or "" while locked (no state to vouch for yet)."""
        return "" if self.locked else self.seed.identity

    @property
    def cipher(self) -> StateCipher:
        return self.seed.cipher

    def check_identity(self) -> None:
        """Every manifest of the history must name this state; otherwise the state (or the history)
        was replaced underneath us, and serving it would attest keys no admin vouched for."""
        for entry in self.history:
            if entry.manifest.coordinator_identity != self.seed.identity:
                raise VerificationError(
                    "state.identity_mismatch",
                    "the stored history names another coordinator state than the one this seed derives",
                )

    @property
    def ohttp_keys(self) -> KeyStore:
        """The attested OHTTP key pairs (what clients may encrypt to), current generation first."""
        return self._keys_for(workers=False)

    @property
    def released_keys(self) -> KeyStore:
        """What an admitted worker receives: the attested pairs and the pending generations."""
        return self._keys_for(workers=True)

    def _keys_for(self, *, workers: bool) -> KeyStore:
        now = time.time()
        cached = self._key_store.get(workers)
        if cached is None or now - cached[0] > 1.0:  # promotions and graces move on the clock
            cached = (now, self.keys.key_store(now, for_workers=workers))
            self._key_store[workers] = cached
        return cached[1]

    def _store_generation(self, conn: Connection, generation: Generation) -> None:
        assert self.store is not None
        blob = self.cipher.seal(json.dumps(generation.to_record()).encode(), f"ohttp:{generation.number}")
        self.store.add_generation(conn, generation.number, blob)

    def _adopt_generation(self, generation: Generation) -> None:
        self.keys = self.keys.with_generations([*self.keys.generations, generation])
        self._key_store = {}

    def maintain(self, now: float | None = None) -> None:
        """Catch up with peers, start a new key generation when due, drop expired ones."""
        if self.locked:
            return
        now = time.time() if now is None else now
        self.refresh()
        with self._lock:
            if self.keys.rotation_due(now):
                self.rotate("timer", now)
            expired = self.keys.expired(now)
            if expired:
                if self.store is not None:
                    with self.store.transaction() as conn:
                        self.store.drop_generations(conn, expired)
                self.keys = self.keys.with_generations([g for g in self.keys.generations if g.number not in expired])
                self._key_store = {}

    def rotate(self, why: str, now: float | None = None) -> None:
        """Start a new key generation now (pending for the promotion delay), whatever the timer says."""
        now = time.time() if now is None else now
        generation = self.keys.next_generation(now)
        if self.store is not None:
            try:
                with self._write() as tx:
                    self._store_generation(tx.conn, generation)
                    tx.audit(
                        "keys.rotate",
                        f"generation:{generation.number}",
                        "accepted",
                        "ok",
                        {"why": why, "key_ids": [p.key_id for p in generation.pairs]},
                    )
            except PolicyError:  # a peer coordinator rotated first: take theirs
                self.refresh()
                return
        self._adopt_generation(generation)

    # recovery -----------------------------------------------------------------------------------
    def recovery_blob(self) -> list[dict[str, str]]:
        """The state key sealed to each admin recovery key (public ciphertext)."""
        raw = self.store.get_meta(META_RECOVERY) if self.store else None
        return json.loads(raw) if raw else []

    def restore(self, sealed_state_key: bytes, admin_key: str, signature: str) -> None:
        """Unlock with a state key an admin recovered, sealed to our attested HPKE key, and an
        authorisation only an admin of the restored history can give: a signature over our attested
        key, the restored state's identity and its history head (so it fits no other coordinator,
        no other state and no other history)."""
        if not self.locked or self.store is None or self._platform_key is None:
            raise PolicyError("recovery.not_locked", "this coordinator is not awaiting recovery")
        secret = keyrelease.open_sealed(self.hpke_key, sealed_state_key, RECOVERY_UPLOAD_INFO)
        try:
            seed = StateSeed(secret)
            loaded = CoordinatorState._load(self.store, seed, self.bootstrap_key, rotation=self.keys.rotation)
        except VeilError as err:
            if err.reason.startswith("manifest."):
                raise
            raise PolicyError("recovery.wrong_key", "the recovered key does not open the stored state") from None
        head = loaded.manifest
        if head is None:
            raise PolicyError("recovery.no_manifest", "the stored state has no manifest whose admins could authorise it")
        if admin_key not in head.manifest.admin_keys:
            raise VerificationError("recovery.unauthorized", "the restore is not authorised by an admin of the restored manifest")
        verify_statement(
            admin_key,
            signature,
            RESTORE_CONTEXT,
            *restore_statement(keyrelease.public_bytes(self.hpke_key), seed.identity, head.digest),
            reason="recovery.unauthorized",
        )
        try:
            loaded.check_identity()
        except VerificationError as err:
            raise VerificationError("recovery.identity_mismatch", err.message) from None
        with self._lock:
            self.seed, self.keys, self.history, self.secrets = loaded.seed, loaded.keys, loaded.history, loaded.secrets
            self.audit_log, self.locked, self._key_store = loaded.audit_log, False, {}
            with self._write() as tx:  # from now on, sealed to *this* platform
                self.store.put_meta(
                    tx.conn, META_PLATFORM_SEALED, StateCipher(self._platform_key).seal(seed.secret, META_PLATFORM_SEALED)
                )
                tx.audit("recovery", "state", "restored", "ok", {"admin_key": admin_key, "head": head.digest.hex()})

    def _recovery_records(self, recovery_keys: list[str]) -> bytes:
        return json.dumps(
            [
                {"recovery_key": k, "sealed_state_key": keyrelease.seal(bytes.fromhex(k), self.seed.secret, RECOVERY_INFO).hex()}
                for k in recovery_keys
            ]
        ).encode()

    # manifests ----------------------------------------------------------------------------------
    @property
    def manifest(self) -> SignedManifest | None:
        return self.history[-1] if self.history else None

    def public_history(self) -> list[SignedManifest]:
        """The history as verified in memory; while locked, the stored (public, unverified) rows,
        which `veil recover` verifies itself before it trusts them."""
        if self.locked and self.store is not None:
            return [SignedManifest.parse(entry) for _, _, entry in self.store.history_rows()]
        return list(self.history)

    def require_unlocked(self) -> None:
        if self.locked:
            raise PolicyError("state.locked", "this coordinator awaits recovery (`veil recover`)")

    def require_manifest(self) -> SignedManifest:
        self.require_unlocked()
        current = self.manifest
        if current is None:
            raise PolicyError("manifest.missing", "no manifest has been set on this coordinator")
        return current

    def _read_history(self) -> None:
        """Extend the in-memory history with stored rows, checking the chain and the sealed head."""
        assert self.store is not None
        head_blob = self.store.get_meta(META_HEAD)  # read before the rows: rows only ever grow
        rows = self.store.history_rows(after=len(self.history) - 1)
        for idx, digest, raw in rows:
            entry = SignedManifest.parse(raw)
            if idx != len(self.history) or entry.digest.hex() != digest:
                raise ProtocolError("state.corrupt", f"manifest {idx} does not match its digest or position")
            root = [self.bootstrap_key] if self.bootstrap_key else None
            check_successor(self.manifest, entry, root_keys=root)
            self.history.append(entry)
        if head_blob is not None:
            head = json.loads(self.cipher.open(head_blob, META_HEAD))
            length, digest = int(head["length"]), head["digest"]
            if len(self.history) < length or self.history[length - 1].digest.hex() != digest:
                raise VerificationError(
                    "state.history_mismatch", "the stored history does not end in the sealed head (rows removed or replaced)"
                )
        elif self.history:
            raise VerificationError("state.history_mismatch", "history rows exist without a sealed head")

    def refresh(self) -> None:
        """Pick up what coordinators sharing our database wrote since we loaded (new manifests,
        secrets and key generations: a few indexed queries, nothing when nothing changed)."""
        if self.store is None or self.locked:
            return
        with self._lock:
            count = len(self.history)
            self._read_history()
            if len(self.history) != count:
                self.check_identity()
            for key_id, sealed_value, _ in self.store.secret_rows(skip=set(self.secrets)):
                self.secrets[key_id] = self.cipher.open(sealed_value, f"secret:{key_id}")
            for number, blob in self.store.generation_rows(after=self.keys.newest.number):
                self._adopt_generation(Generation.from_record(json.loads(self.cipher.open(blob, f"ohttp:{number}"))))

    def append_manifest(self, entry: SignedManifest) -> int:
        """Extend the history if ``entry`` is a correctly signed successor naming this state;
        a new OHTTP key generation starts with every change after the first. Returns its index."""
        self.require_unlocked()
        self.refresh()
        with self._lock:
            if self.manifest is None and self.bootstrap_key is None:
                raise PolicyError(
                    "manifest.no_bootstrap_key",
                    "this coordinator was launched without a bootstrap admin key in its launch "
                    "data (HOST_DATA / MRCONFIGID), so it accepts no first manifest",
                )
            check_successor(self.manifest, entry, root_keys=[self.bootstrap_key] if self.bootstrap_key else None)
            if entry.manifest.coordinator_identity != self.seed.identity:
                raise PolicyError(
                    "manifest.wrong_coordinator", "the manifest's coordinator_identity does not name this coordinator's state"
                )
            idx, now = len(self.history), time.time()
            # no worker holds a key before the first manifest admits one: only a change rotates
            generation = self.keys.next_generation(now) if self.manifest is not None else None
            if self.store is not None:
                with self._write() as tx:
                    self.store.add_history(tx.conn, idx, entry.digest.hex(), entry.model_dump_json())
                    head = json.dumps({"length": idx + 1, "digest": entry.digest.hex()}).encode()
                    self.store.put_meta(tx.conn, META_HEAD, self.cipher.seal(head, META_HEAD))
                    self.store.put_meta(tx.conn, META_RECOVERY, self._recovery_records(entry.manifest.recovery_keys))
                    if generation is not None:
                        self._store_generation(tx.conn, generation)
                    pairs = generation.pairs if generation is not None else self.keys.newest.pairs
                    tx.audit(
                        "manifest.set", entry.digest.hex(), "accepted", "ok", {"index": idx, "key_ids": [p.key_id for p in pairs]}
                    )
            self.history.append(entry)
            if generation is not None:
                self._adopt_generation(generation)
            return idx

    # writes -------------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator["_Tx"]:
        """One transaction; another coordinator on the same database writing first is a clean
        refusal (``state.conflict``), never a crash or a half-written state."""
        assert self.store is not None
        tx = _Tx(self)
        try:
            with self.store.transaction() as conn:
                tx.conn = conn
                yield tx
        except IntegrityError:
            raise PolicyError("state.conflict", "another coordinator changed this state first; retry") from None
        if self.audit_log is not None:
            for seq in tx.seqs:
                self.audit_log.committed(seq)

    # secrets ------------------------------------------------------------------------------------
    def put_secret(self, key_id: str, value: bytes, admin_key: str) -> None:
        self.require_unlocked()
        self.refresh()
        with self._lock:
            if key_id in self.secrets:
                raise PolicyError("secret.exists", f"secret {key_id!r} exists; secrets are write-once")
            if self.store is not None:
                with self._write() as tx:
                    self.store.add_secret(tx.conn, key_id, self.cipher.seal(value, f"secret:{key_id}"))
                    tx.audit("secret.put", key_id, "accepted", "ok", {"admin_key": admin_key})
            self.secrets[key_id] = value

    # audit --------------------------------------------------------------------------------------
    def audit(self, event: str, subject: str, decision: str, reason: str, detail: dict[str, Any] | None = None) -> None:
        """Record a decision (never a secret value) in its own transaction."""
        if self.store is None or self.audit_log is None:
            return
        for attempt in range(3):  # a peer coordinator may take the same seq: retry on top of it
            try:
                with self._write() as tx:
                    tx.audit(event, subject, decision, reason, detail)
                return
            except PolicyError:
                if attempt == 2:
                    raise

    def refused(self, event: str, reason: str) -> None:
        """An unauthenticated request was refused: counted, and written only as a periodic summary."""
        self.tally.count(event, reason)
        self.flush_tally()

    def flush_tally(self, *, everything: bool = False) -> None:
        for event, reason, detail in self.tally.due(everything=everything):
            self.audit(event, "(summary)", "refused", reason, detail)

    def read_audit(self, after: int, limit: int) -> AuditPage:
        self.require_unlocked()
        if self.audit_log is None:
            raise PolicyError("audit.unavailable", "this coordinator keeps no audit log (no database)")
        self.flush_tally(everything=True)
        return self.audit_log.read(after, limit)

    def add_worker(self, record: WorkerRecord) -> None:
        """Record a (re-)registration; workers that stopped re-attesting fall out of the list."""
        with self._lock:
            self.workers[record.worker_id] = record
            stale = record.last_seen - WORKER_STALE_SECONDS
            for worker_id in [w for w, r in self.workers.items() if r.last_seen < stale]:
                del self.workers[worker_id]


class _Tx:
    """A write transaction in progress: its connection, and the audit records it adds."""

    def __init__(self, state: CoordinatorState) -> None:
        self.state = state
        self.conn: Connection = None  # type: ignore[assignment]
        self.seqs: list[int] = []

    def audit(self, event: str, subject: str, decision: str, reason: str, detail: dict[str, Any] | None = None) -> None:
        log = self.state.audit_log
        if log is not None:
            self.seqs.append(log.append(self.conn, event, subject, decision, reason, detail))
