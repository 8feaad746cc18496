"""Applying `schema.MIGRATIONS` to a database, on either backend, and reporting its version.

One transaction brings the schema from what it is to what this code knows: a
migration half applied is never seen. Concurrent migrators (every process migrates on
open, and `twinline db migrate` may run beside them) are serialized: on SQLite by the
write lock `BEGIN IMMEDIATE` takes on the whole file, on PostgreSQL by a transaction
advisory lock taken before the version is read, so the second migrator finds the work
done and applies nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from twinline.store import schema, sql
from twinline.store.base import Tx
from twinline.store.writer import Session

# The advisory lock key migrators take on PostgreSQL (any constant every twinline uses).
MIGRATION_LOCK = 0x7477_6C6E  # "twln"


@dataclass(frozen=True)
class Migrated:
    found: int  # the version the database had
    now: int  # the version it has


@dataclass(frozen=True)
class SchemaStatus:
    version: int  # the database's version (0: empty)
    known: int  # the newest version this code knows
    applied: tuple[tuple[int, str, float], ...]  # (version, description, applied_at)
    pending: tuple[schema.Migration, ...]  # what `migrate` would apply

    @property
    def too_new(self) -> bool:
        return self.version > self.known


def migrate(session: Session, *, upto: int | None = None) -> Migrated:
    """Apply the migrations the database lacks (up to version `upto`, default all).

    Raises `SchemaTooNew` when the database is ahead of this code."""
    session.begin()
    try:
        tx = session.tx
        if session.dialect == "postgresql":
            tx.execute(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        tx.execute(schema.SCHEMA_VERSION_TABLE)
        found = _version(tx)
        now = found
        for migration in schema.pending(found):
            if upto is not None and migration.version > upto:
                break
            for statement in schema.statements_for(migration, session.dialect):
                tx.execute(statement)
            tx.execute(
                sql.SCHEMA_VERSION_APPLIED,
                (migration.version, migration.description, time.time()),
            )
            now = migration.version
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return Migrated(found, now)


def status(session: Session) -> SchemaStatus:
    """The database's schema version and what migrating it would apply; changes nothing."""
    session.begin()
    try:
        tx = session.tx
        applied: tuple[tuple[int, str, float], ...] = ()
        if _has_version_table(session):
            applied = tuple(
                (_int(r["version"]), str(r["description"]), float(str(r["applied_at"])))
                for r in tx.fetchall(sql.SCHEMA_VERSIONS)
            )
    finally:
        session.rollback()
    version = max((a[0] for a in applied), default=0)
    pending = () if version > schema.SCHEMA_VERSION else schema.pending(version)
    return SchemaStatus(version, schema.SCHEMA_VERSION, applied, pending)


def _has_version_table(session: Session) -> bool:
    if session.dialect == "postgresql":
        row = session.tx.fetchone("SELECT to_regclass('schema_version') IS NOT NULL AS found")
    else:
        row = session.tx.fetchone(
            "SELECT count(*) AS found FROM sqlite_master"
            " WHERE type = 'table' AND name = 'schema_version'"
        )
    return row is not None and bool(row["found"])


def _version(tx: Tx) -> int:
    row = tx.fetchone(sql.SCHEMA_VERSION_FOUND)
    return 0 if row is None else _int(row["version"])


def _int(value: object) -> int:
    assert isinstance(value, int), value
    return value
