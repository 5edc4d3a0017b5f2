"""The coordinator's durable state: SQLite by default, PostgreSQL when several coordinators share it.

Every row that holds something sensitive is an AES-256-GCM blob under the *state key*, with the
row's identity as associated data, so a row moved, swapped or edited in the database fails to
open. The state key itself is stored only sealed (to the platform's sealing key and to the admins'
recovery keys). Each public operation is one transaction: a crash (kill -9) leaves either the old
or the new state, never half of one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    Column,
    Connection,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine

from veil.errors import VerificationError

metadata = MetaData()

meta = Table(
    "veil_meta", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
manifests = Table(
    "veil_manifests", metadata,
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("sealed_entry", LargeBinary, nullable=False),
)
secrets = Table(
    "veil_secrets", metadata,
    Column("key_id", String(128), primary_key=True),
    Column("sealed_value", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)
audit = Table(
    "veil_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("event", String(64), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("decision", String(16), nullable=False),
    Column("reason", String(128), nullable=False),
    Column("detail", Text, nullable=False),
)

NONCE_LEN = 12
SCHEMA_LOCK_KEY = 0x7665696C  # "veil": the advisory lock that serialises schema creation


class StateCipher:
    """AES-256-GCM under the state key; ``aad`` names the row so blobs cannot be moved around."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the state key is 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: str) -> bytes:
        nonce = os.urandom(NONCE_LEN)
        return nonce + self._aead.encrypt(nonce, plaintext, aad.encode())

    def open(self, blob: bytes, aad: str) -> bytes:
        try:
            return self._aead.decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], aad.encode())
        except (InvalidTag, ValueError):
            raise VerificationError("state.tampered", f"stored state {aad!r} does not open (tampered or moved)") from None


@dataclass(frozen=True)
class AuditRecord:
    id: int
    at: float
    event: str
    subject: str
    decision: str
    reason: str
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__}


def open_engine(url: str) -> Engine:
    """A SQLAlchemy engine; SQLite gets WAL and full fsync so acknowledged writes survive a crash."""
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()
    if engine.dialect.name == "postgresql":
        # coordinators starting together: concurrent CREATE TABLEs collide in PostgreSQL's catalog,
        # so one at a time under a transaction-scoped advisory lock
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            metadata.create_all(conn)
    else:
        metadata.create_all(engine)
    return engine


class Store:
    """Typed access to the tables; callers group writes with :meth:`transaction`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> "Store":
        return cls(open_engine(url))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # meta -------------------------------------------------------------------------------------
    def get_meta(self, name: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(select(meta.c.value).where(meta.c.name == name)).scalar_one_or_none()

    @staticmethod
    def add_meta(conn: Connection, name: str, value: bytes) -> None:
        """Insert only: an IntegrityError if ``name`` exists (a concurrent first start)."""
        conn.execute(insert(meta).values(name=name, value=value))

    @staticmethod
    def put_meta(conn: Connection, name: str, value: bytes) -> None:
        done = conn.execute(update(meta).where(meta.c.name == name).values(value=value))
        if done.rowcount == 0:
            conn.execute(insert(meta).values(name=name, value=value))

    # manifests --------------------------------------------------------------------------------
    def manifest_rows(self) -> list[tuple[int, str, bytes]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(manifests).order_by(manifests.c.idx)).all()
        return [(r.idx, r.digest, r.sealed_entry) for r in rows]

    @staticmethod
    def add_manifest(conn: Connection, idx: int, digest: str, sealed_entry: bytes) -> None:
        conn.execute(insert(manifests).values(idx=idx, digest=digest, sealed_entry=sealed_entry))

    # secrets ----------------------------------------------------------------------------------
    def secret_rows(self) -> list[tuple[str, bytes, float]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(secrets).order_by(secrets.c.key_id)).all()
        return [(r.key_id, r.sealed_value, r.created_at) for r in rows]

    @staticmethod
    def add_secret(conn: Connection, key_id: str, sealed_value: bytes) -> None:
        conn.execute(insert(secrets).values(key_id=key_id, sealed_value=sealed_value, created_at=time.time()))

    # audit ------------------------------------------------------------------------------------
    @staticmethod
    def add_audit(conn: Connection, event_: str, subject: str, decision: str, reason: str,
                  detail: dict[str, Any] | None = None) -> None:
        conn.execute(insert(audit).values(
            at=time.time(), event=event_, subject=subject, decision=decision, reason=reason,
            detail=json.dumps(detail or {}, sort_keys=True),
        ))

    def audit_records(self, limit: int = 1000, after_id: int = 0) -> list[AuditRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(audit).where(audit.c.id > after_id).order_by(audit.c.id).limit(limit)
            ).all()
        return [AuditRecord(r.id, r.at, r.event, r.subject, r.decision, r.reason, json.loads(r.detail)) for r in rows]
