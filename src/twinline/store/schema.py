"""The database schema, as SQL, and its migrations.

The schema is written once for both backends: TEXT, BIGINT and DOUBLE PRECISION mean the
same to SQLite (by type affinity) and PostgreSQL; the one word that differs, the type of
binary data (SQLite's BLOB, PostgreSQL's BYTEA), is rendered per dialect by
`statements_for`. No SQLite-only syntax otherwise: no AUTOINCREMENT, no WITHOUT ROWID,
no `INSERT OR ...`; conflicts are handled with `ON CONFLICT`, which both understand.

Versions: the `schema_version` table holds one row per migration applied. Opening a
database applies the migrations it lacks, in order, in one transaction; a database whose
version is newer than this code's is refused (`SchemaTooNew`) rather than written with
assumptions it no longer meets. A migration is never edited once released: a change is a
new migration appended to `MIGRATIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from twinline.store.errors import SchemaTooNew

Dialect = Literal["sqlite", "postgresql"]

_BINARY_TYPE: dict[Dialect, str] = {"sqlite": "BLOB", "postgresql": "BYTEA"}


@dataclass(frozen=True)
class Migration:
    version: int  # the schema version the database has once this migration is applied
    description: str
    statements: tuple[str, ...]  # `{binary}` stands for the dialect's binary type


SCHEMA_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     BIGINT PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at  DOUBLE PRECISION NOT NULL
)
"""

_V1 = Migration(
    version=1,
    description="calls, CDRs, side effects, checkpoints, placements",
    statements=(
        # What the switch holds live, mirrored for operators; the switch writes it.
        """
        CREATE TABLE active_calls (
            call_id        TEXT PRIMARY KEY,
            caller         TEXT NOT NULL,
            callee         TEXT NOT NULL,
            service        TEXT NOT NULL,
            primary_server TEXT NOT NULL,
            standby_server TEXT,
            epoch          BIGINT NOT NULL,
            state          TEXT NOT NULL,
            started_at     DOUBLE PRECISION NOT NULL,
            updated_at     DOUBLE PRECISION NOT NULL
        )
        """,
        # Exactly one per call: the primary key is the guarantee (inserts that conflict
        # do nothing), whichever instance or process writes it, however many times.
        """
        CREATE TABLE cdrs (
            call_id         TEXT PRIMARY KEY,
            caller          TEXT NOT NULL,
            callee          TEXT NOT NULL,
            service         TEXT NOT NULL,
            started_at      DOUBLE PRECISION NOT NULL,
            answered_at     DOUBLE PRECISION,
            ended_at        DOUBLE PRECISION NOT NULL,
            disposition     TEXT NOT NULL,
            status          BIGINT NOT NULL,
            cause           TEXT NOT NULL,
            primaries       TEXT NOT NULL,
            standby_servers TEXT NOT NULL,
            epoch           BIGINT NOT NULL
        )
        """,
        "CREATE INDEX cdrs_ended_at ON cdrs (ended_at)",
        # Idempotency records (invariant 5): a key of call and step, inserted in the same
        # transaction as the effect itself when the effect is a database write.
        """
        CREATE TABLE side_effects (
            key        TEXT PRIMARY KEY,
            call_id    TEXT NOT NULL,
            kind       TEXT NOT NULL,
            applied_at DOUBLE PRECISION NOT NULL,
            result     TEXT
        )
        """,
        "CREATE INDEX side_effects_call_id ON side_effects (call_id)",
        # Checkpoints of calls with no standby to hold them (invariant 3).
        """
        CREATE TABLE checkpoints (
            call_id  TEXT PRIMARY KEY,
            epoch    BIGINT NOT NULL,
            version  BIGINT NOT NULL,
            data     {binary} NOT NULL,
            saved_at DOUBLE PRECISION NOT NULL
        )
        """,
        # Every placement of every call instance, appended, never updated: the record
        # that lets tests check invariant 2 and the load sharing after the fact.
        """
        CREATE TABLE call_placements (
            call_id TEXT NOT NULL,
            server  TEXT NOT NULL,
            role    TEXT NOT NULL CHECK (role IN ('primary', 'standby')),
            epoch   BIGINT NOT NULL,
            at      DOUBLE PRECISION NOT NULL
        )
        """,
        "CREATE INDEX call_placements_call_id ON call_placements (call_id, epoch)",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (_V1,)
SCHEMA_VERSION = MIGRATIONS[-1].version


def pending(found: int) -> tuple[Migration, ...]:
    """The migrations a database at version `found` lacks, in order (0: an empty database).

    Raises `SchemaTooNew` when the database is ahead of this code.
    """
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(found, SCHEMA_VERSION)
    return tuple(m for m in MIGRATIONS if m.version > found)


def statements_for(migration: Migration, dialect: Dialect) -> tuple[str, ...]:
    """The migration's statements in the dialect's SQL."""
    binary = _BINARY_TYPE[dialect]
    return tuple(s.replace("{binary}", binary) for s in migration.statements)
