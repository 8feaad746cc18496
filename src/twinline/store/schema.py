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

# Service data (docs/services.md). Money is BIGINT millionths of the account's currency
# unit: exact integers that SQL can add and compare atomically on both backends (a
# reservation is one guarded UPDATE), with room for sub-cent rates such as 0.006 a
# minute. TEXT decimals would be turned into floats by SQLite's arithmetic.
# Names avoid SQL keywords (no `user`, `end`, `number`), for PostgreSQL.
_V2 = Migration(
    version=2,
    description="service data: accounts, ledger, reservations, rates, cards, translations,"
    " holidays, forwarding, screening",
    statements=(
        """
        CREATE TABLE accounts (
            id           TEXT PRIMARY KEY,
            currency     TEXT NOT NULL,
            balance      BIGINT NOT NULL,
            reserved     BIGINT NOT NULL DEFAULT 0,
            credit_limit BIGINT NOT NULL DEFAULT 0,
            max_calls    BIGINT,
            open_calls   BIGINT NOT NULL DEFAULT 0,
            status       TEXT NOT NULL DEFAULT 'active'
                         CHECK (status IN ('active', 'suspended', 'closed')),
            rate_plan    TEXT NOT NULL DEFAULT 'default',
            description  TEXT NOT NULL DEFAULT '',
            seq          BIGINT NOT NULL DEFAULT 0,
            CHECK (reserved >= 0),
            CHECK (open_calls >= 0),
            CHECK (credit_limit >= 0),
            CHECK (balance + credit_limit - reserved >= 0)
        )
        """,
        # Who pays: a registered user's name, or a trunk caller's number (E.164, no +).
        """
        CREATE TABLE account_identities (
            identity   TEXT PRIMARY KEY,
            account_id TEXT NOT NULL
        )
        """,
        "CREATE INDEX account_identities_account ON account_identities (account_id)",
        # Every balance change, numbered per account by accounts.seq (under its row lock);
        # `balance` is the balance after the entry.
        """
        CREATE TABLE ledger (
            account_id      TEXT NOT NULL,
            seq             BIGINT NOT NULL,
            at              DOUBLE PRECISION NOT NULL,
            kind            TEXT NOT NULL
                            CHECK (kind IN ('opening', 'debit', 'top-up', 'adjustment')),
            amount          BIGINT NOT NULL,
            balance         BIGINT NOT NULL,
            reason          TEXT NOT NULL,
            call_id         TEXT,
            idempotency_key TEXT,
            PRIMARY KEY (account_id, seq)
        )
        """,
        "CREATE UNIQUE INDEX ledger_idempotency_key ON ledger (idempotency_key)",
        # One debit per call, whatever replays: the database says so too.
        "CREATE UNIQUE INDEX ledger_call_debit ON ledger (call_id) WHERE kind = 'debit'",
        # Credit held by calls in progress: accounts.reserved is the sum of the open ones.
        """
        CREATE TABLE reservations (
            call_id     TEXT PRIMARY KEY,
            account_id  TEXT NOT NULL,
            amount      BIGINT NOT NULL CHECK (amount >= 0),
            created_at  DOUBLE PRECISION NOT NULL,
            released_at DOUBLE PRECISION,
            cost        BIGINT,
            debited     BIGINT
        )
        """,
        "CREATE INDEX reservations_account ON reservations (account_id, released_at)",
        """
        CREATE TABLE rates (
            plan              TEXT NOT NULL,
            prefix            TEXT NOT NULL,
            description       TEXT NOT NULL DEFAULT '',
            currency          TEXT NOT NULL,
            connect_fee       BIGINT NOT NULL,
            per_minute        BIGINT NOT NULL,
            initial_seconds   BIGINT NOT NULL,
            increment_seconds BIGINT NOT NULL,
            decimals          BIGINT NOT NULL,
            rounding          TEXT NOT NULL,
            time_zone         TEXT NOT NULL,
            PRIMARY KEY (plan, prefix)
        )
        """,
        """
        CREATE TABLE rate_periods (
            plan         TEXT NOT NULL,
            prefix       TEXT NOT NULL,
            step         BIGINT NOT NULL,
            days         TEXT NOT NULL,
            start_minute BIGINT NOT NULL,
            end_minute   BIGINT NOT NULL,
            connect_fee  BIGINT NOT NULL,
            per_minute   BIGINT NOT NULL,
            PRIMARY KEY (plan, prefix, step)
        )
        """,
        """
        CREATE TABLE cards (
            card        TEXT PRIMARY KEY,
            account_id  TEXT NOT NULL,
            pin_hash    TEXT NOT NULL,
            failures    BIGINT NOT NULL DEFAULT 0,
            status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'locked')),
            description TEXT NOT NULL DEFAULT ''
        )
        """,
        """
        CREATE TABLE translations (
            service_number TEXT NOT NULL,
            step           BIGINT NOT NULL,
            target         TEXT NOT NULL,
            days           TEXT NOT NULL,
            start_minute   BIGINT NOT NULL,
            end_minute     BIGINT NOT NULL,
            holidays       TEXT NOT NULL CHECK (holidays IN ('any', 'only', 'except')),
            caller_prefix  TEXT NOT NULL DEFAULT '',
            weight         BIGINT NOT NULL DEFAULT 1 CHECK (weight >= 0),
            priority       BIGINT NOT NULL DEFAULT 0,
            time_zone      TEXT NOT NULL,
            PRIMARY KEY (service_number, step)
        )
        """,
        """
        CREATE TABLE holidays (
            calendar_day TEXT PRIMARY KEY,
            name         TEXT NOT NULL DEFAULT ''
        )
        """,
        """
        CREATE TABLE forwarding (
            subscriber   TEXT NOT NULL,
            kind         TEXT NOT NULL
                         CHECK (kind IN ('always', 'busy', 'no-answer', 'unavailable', 'hunt')),
            step         BIGINT NOT NULL,
            target       TEXT NOT NULL,
            ring_seconds BIGINT,
            PRIMARY KEY (subscriber, kind, step)
        )
        """,
        # subscriber '*' holds the operator-wide allow list.
        """
        CREATE TABLE screening (
            subscriber TEXT NOT NULL,
            kind       TEXT NOT NULL CHECK (kind IN ('block', 'allow', 'reject-anonymous')),
            prefix     TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (subscriber, kind, prefix)
        )
        """,
    ),
)

# A call's cost on its CDR, in millionths of `currency` as all money in the database
# (NULL: the call was not charged by a service).
_V3 = Migration(
    version=3,
    description="CDRs carry the cost a service recorded",
    statements=(
        "ALTER TABLE cdrs ADD COLUMN cost BIGINT",
        "ALTER TABLE cdrs ADD COLUMN currency TEXT",
    ),
)

MIGRATIONS: tuple[Migration, ...] = (_V1, _V2, _V3)
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
