"""The coordinator's durable state: SQLite by default, PostgreSQL when several coordinators share it.

Every row that holds something sensitive is an AES-256-GCM blob under a key derived from the
*state key* (``veil.coordinator.seed``), with the row's identity as associated data, so a row
moved, swapped or edited in the database fails to open. The manifest history is public (signed by
the admins, served to anyone) and stored in the clear, so even a locked coordinator can show it to
the admin restoring it; a sealed head commitment catches rows removed or replaced underneath. The
state key itself is stored only sealed (to the platform's sealing key and to the admins' recovery
keys). Each public operation is one transaction: a crash (kill -9) leaves either the old or the
new state, never half of one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine


FORMAT = b"2"  # state written by this code; older layouts are refused (state.unsupported_format)
SCHEMA_LOCK_KEY = 0x7665696C  # "veil": the advisory lock that serialises schema creation

metadata = MetaData()

meta = Table(
    "veil_meta",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", LargeBinary, nullable=False),
)
history = Table(
    "veil_history",
    metadata,
    Column("idx", Integer, primary_key=True, autoincrement=False),
    Column("digest", String(64), nullable=False, unique=True),  # entry digest: unique by construction
    Column("entry", Text, nullable=False),  # the signed entry, public
)
secrets = Table(
    "veil_secrets",
    metadata,
    Column("key_id", String(128), primary_key=True),
    Column("sealed_value", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)
key_generations = Table(
    "veil_key_generations",
    metadata,
    Column("generation", Integer, primary_key=True, autoincrement=False),
    Column("sealed", LargeBinary, nullable=False),
)
audit_log = Table(
    "veil_audit_log",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("sealed", LargeBinary, nullable=False),
)


def open_engine(url: str) -> Engine:
    """A SQLAlchemy engine; SQLite gets WAL and full fsync so acknowledged writes survive a crash."""
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=10000")
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

    # manifest history -------------------------------------------------------------------------
    def history_rows(self, after: int = -1) -> list[tuple[int, str, str]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(history).where(history.c.idx > after).order_by(history.c.idx)).all()
        return [(r.idx, r.digest, r.entry) for r in rows]

    @staticmethod
    def add_history(conn: Connection, idx: int, digest: str, entry: str) -> None:
        conn.execute(insert(history).values(idx=idx, digest=digest, entry=entry))

    # secrets ----------------------------------------------------------------------------------
    def secret_rows(self, skip: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, bytes, float]]:
        """Sealed secrets, except those in ``skip`` (what a coordinator already holds)."""
        with self.engine.connect() as conn:
            ids = [k for k in conn.execute(select(secrets.c.key_id).order_by(secrets.c.key_id)).scalars() if k not in skip]
            if not ids:
                return []
            rows = conn.execute(select(secrets).where(secrets.c.key_id.in_(ids)).order_by(secrets.c.key_id)).all()
        return [(r.key_id, r.sealed_value, r.created_at) for r in rows]

    @staticmethod
    def add_secret(conn: Connection, key_id: str, sealed_value: bytes) -> None:
        conn.execute(insert(secrets).values(key_id=key_id, sealed_value=sealed_value, created_at=time.time()))

    # OHTTP key generations --------------------------------------------------------------------
    def generation_rows(self, after: int = -1) -> list[tuple[int, bytes]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(key_generations).where(key_generations.c.generation > after).order_by(key_generations.c.generation)
            ).all()
        return [(r.generation, r.sealed) for r in rows]

    @staticmethod
    def add_generation(conn: Connection, generation: int, sealed: bytes) -> None:
        conn.execute(insert(key_generations).values(generation=generation, sealed=sealed))

    @staticmethod
    def drop_generations(conn: Connection, generations: list[int]) -> None:
        if generations:
            conn.execute(delete(key_generations).where(key_generations.c.generation.in_(generations)))

    # audit ------------------------------------------------------------------------------------
    @staticmethod
    def last_audit(conn: Connection) -> tuple[int, bytes] | None:
        top = conn.execute(select(func.max(audit_log.c.seq))).scalar_one_or_none()
        if top is None:
            return None
        sealed = conn.execute(select(audit_log.c.sealed).where(audit_log.c.seq == top)).scalar_one()
        return top, sealed

    @staticmethod
    def add_audit(conn: Connection, seq: int, sealed: bytes) -> None:
        conn.execute(insert(audit_log).values(seq=seq, sealed=sealed))

    def audit_rows(self, after: int, limit: int, upto: int) -> list[tuple[int, bytes]]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(audit_log).where(audit_log.c.seq > after, audit_log.c.seq <= upto).order_by(audit_log.c.seq).limit(limit)
            ).all()
        return [(r.seq, r.sealed) for r in rows]

    def audit_row(self, seq: int) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(select(audit_log.c.sealed).where(audit_log.c.seq == seq)).scalar_one_or_none()

    def audit_head(self) -> tuple[int, bytes] | None:
        with self.engine.connect() as conn:
            return self.last_audit(conn)
