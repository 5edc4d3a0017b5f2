"""The audit log: sealed, hash-chained rows, and a tally that keeps unauthenticated noise out of it.

Each record (decision, reason, subject, never a secret value) is sealed under the state key with
its sequence number as associated data and links to the previous record's hash
(``veil.attestation.audit_hash``). The host, which owns the database, can neither read nor forge a
row; deleting, reordering or editing one breaks the chain, which the coordinator checks as it reads
and ``veil audit`` checks again against the head the coordinator signs. Refusals of
unauthenticated requests (worker registrations whose evidence fails) are counted in memory and
written as one summary row per reason and window, so a flood cannot fill the disk.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from veil.attestation import AUDIT_GENESIS, audit_hash
from veil.coordinator.seed import StateCipher
from veil.coordinator.store import Store
from veil.errors import ParseError, VerificationError

TALLY_WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class AuditPage:
    records: list[dict[str, Any]]
    anchor: bytes  # the hash before the first record
    head_seq: int
    head_hash: bytes


class AuditLog:
    """Appends and reads chained rows; ``known_seq`` catches a database truncated under us."""

    def __init__(self, store: Store, cipher: StateCipher) -> None:
        self.store, self.cipher = store, cipher
        self._known_seq = 0
        self._lock = threading.Lock()
        head = store.audit_head()
        if head is not None:
            self._known_seq = head[0]
            self._open(*head)  # the newest row must open under this state

    def _open(self, seq: int, sealed: bytes) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.cipher.open(sealed, f"audit:{seq}"))
        if record.get("seq") != seq:
            raise VerificationError("state.tampered", f"audit row {seq} holds another record")
        return record

    def append(
        self, conn: Connection, event: str, subject: str, decision: str, reason: str, detail: dict[str, Any] | None = None
    ) -> int:
        """Add one record inside the caller's transaction and return its seq; call
        :meth:`committed` once the transaction is. A unique seq settles races between coordinators
        sharing the database: the loser's transaction fails."""
        with self._lock:
            last = Store.last_audit(conn)
            seq, prev = 1, AUDIT_GENESIS
            if last is not None:
                seq, prev = last[0] + 1, bytes.fromhex(self._open(*last)["hash"])
            if seq <= self._known_seq:
                raise VerificationError("audit.truncated", "audit rows this coordinator wrote are gone")
            record: dict[str, Any] = {
                "seq": seq,
                "at": round(time.time(), 3),
                "event": event,
                "subject": subject[:256],
                "decision": decision,
                "reason": reason,
                "detail": detail or {},
            }
            record["prev"] = prev.hex()
            record["hash"] = audit_hash(prev, record).hex()
            Store.add_audit(conn, seq, self.cipher.seal(json.dumps(record, sort_keys=True).encode(), f"audit:{seq}"))
            return seq

    def committed(self, seq: int) -> None:
        with self._lock:
            self._known_seq = max(self._known_seq, seq)

    def read(self, after: int, limit: int) -> AuditPage:
        """Records after ``after``, each opened and chained to the one before it."""
        head = self.store.audit_head()
        if head is None:
            if self._known_seq:
                raise VerificationError("audit.truncated", "audit rows this coordinator wrote are gone")
            if after > 0:
                raise ParseError("audit.after_head", "the audit log is empty")
            return AuditPage([], AUDIT_GENESIS, 0, AUDIT_GENESIS)
        head_seq, head_hash = head[0], bytes.fromhex(self._open(*head)["hash"])
        if head_seq < self._known_seq:
            raise VerificationError("audit.truncated", "audit rows this coordinator wrote are gone")
        if after > head_seq:
            raise ParseError("audit.after_head", f"the audit log has {head_seq} records")
        anchor = AUDIT_GENESIS
        if after > 0:
            sealed = self.store.audit_row(after)
            if sealed is None:
                raise VerificationError("audit.chain_broken", f"audit record {after} is missing")
            anchor = bytes.fromhex(self._open(after, sealed)["hash"])
        records, prev, expected = [], anchor, after + 1
        for seq, sealed in self.store.audit_rows(after, limit, upto=head_seq):
            record = self._open(seq, sealed)
            if (
                seq != expected
                or bytes.fromhex(record["prev"]) != prev
                or bytes.fromhex(record["hash"]) != audit_hash(prev, record)
            ):
                raise VerificationError("audit.chain_broken", f"audit record {seq} does not chain")
            records.append(record)
            prev, expected = bytes.fromhex(record["hash"]), seq + 1
        return AuditPage(records, anchor, head_seq, head_hash)


@dataclass
class RefusalTally:
    """Counts refusals per (event, reason); ``due`` hands back windows that have closed."""

    window: float = TALLY_WINDOW_SECONDS
    clock: Callable[[], float] = time.time
    _open: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # key -> [first, last, count]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, event: str, reason: str) -> None:
        now = self.clock()
        with self._lock:
            slot = self._open.setdefault((event, reason), [now, now, 0])
            slot[1], slot[2] = now, slot[2] + 1

    def due(self, *, everything: bool = False) -> list[tuple[str, str, dict[str, Any]]]:
        """Closed windows as (event, reason, detail) summaries, removed from the tally."""
        now = self.clock()
        out = []
        with self._lock:
            for key, (first, last, count) in list(self._open.items()):
                if everything or now - first >= self.window:
                    out.append((*key, {"count": int(count), "first_at": round(first, 3), "last_at": round(last, 3)}))
                    del self._open[key]
        return out
