"""The store's SQL, written once for every backend, and its rendering per dialect.

Statements use `?` placeholders (qmark). `render` turns them into the driver's style:
SQLite takes them as they are; psycopg wants `%s`, and a literal `%` doubled.

Row locks: a transaction that decides from what it reads (debit what the balance
allows) reads with ``SELECT ... FOR UPDATE``, so that on PostgreSQL a concurrent writer
of the same row waits for it instead of acting on the same stale value. SQLite has no
such clause and needs none (a write transaction holds the whole file from its first
statement: `BEGIN IMMEDIATE`), so `render` drops the locking clause for SQLite.
"""

from __future__ import annotations

import functools
import re
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]

# The row-locking clauses of a SELECT (PostgreSQL's), with their options.
_LOCKING = re.compile(
    r"\s+FOR\s+(?:NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)"
    r"(?:\s+OF\s+\w+(?:\s*,\s*\w+)*)?(?:\s+(?:NOWAIT|SKIP\s+LOCKED))?\b",
    re.IGNORECASE,
)
# The parts of a statement no rewrite may touch: quoted literals and identifiers, and
# comments; anything else is code.
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)


@functools.lru_cache(maxsize=1024)
def render(sql: str, dialect: Dialect) -> str:
    """`sql` (with `?` placeholders) in the dialect's driver style."""
    out: list[str] = []
    pos = 0
    for m in _QUOTED.finditer(sql):
        out.append(_code(sql[pos : m.start()], dialect))
        literal = m.group()
        out.append(literal.replace("%", "%%") if dialect == "postgresql" else literal)
        pos = m.end()
    out.append(_code(sql[pos:], dialect))
    return "".join(out)


def _code(code: str, dialect: Dialect) -> str:
    if dialect == "sqlite":
        return _LOCKING.sub("", code)
    return code.replace("%", "%%").replace("?", "%s")


# --- batched writes ----------------------------------------------------------------------

CALL_STARTED = """
INSERT INTO active_calls (
    call_id, caller, callee, service, primary_server, standby_server,
    epoch, state, started_at, updated_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (call_id) DO UPDATE SET
    caller = excluded.caller, callee = excluded.callee, service = excluded.service,
    primary_server = excluded.primary_server, standby_server = excluded.standby_server,
    epoch = excluded.epoch, state = excluded.state,
    started_at = excluded.started_at, updated_at = excluded.updated_at
"""
# A late update from an older epoch changes nothing: the row lock taken by UPDATE makes
# the epoch test and the write one step on PostgreSQL too.
CALL_UPDATED = """
UPDATE active_calls
SET primary_server = ?, standby_server = ?, epoch = ?, state = ?, updated_at = ?
WHERE call_id = ? AND epoch <= ?
"""
CALL_ENDED = "DELETE FROM active_calls WHERE call_id = ?"
PLACEMENT = "INSERT INTO call_placements (call_id, server, role, epoch, at) VALUES (?, ?, ?, ?, ?)"
# Exactly one CDR per call: the primary key decides, whoever writes first.
WRITE_CDR = """
INSERT INTO cdrs (
    call_id, caller, callee, service, started_at, answered_at, ended_at,
    disposition, status, cause, primaries, standby_servers, epoch, cost, currency
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (call_id) DO NOTHING
"""

# --- immediate operations ----------------------------------------------------------------

# The exactly-once guarantee: the side_effects primary key. On PostgreSQL a second
# inserter of a key whose first insert is not yet committed waits for that transaction,
# then inserts nothing (it committed) or inserts (it rolled back).
CLAIM = """
INSERT INTO side_effects (key, call_id, kind, applied_at, result) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key) DO NOTHING
"""
STORE_RESULT = "UPDATE side_effects SET result = ? WHERE key = ?"
SIDE_EFFECT_RESULT = "SELECT result FROM side_effects WHERE key = ?"
# Checkpoints only move forward, by (epoch, version): the conditional upsert locks the
# stored row and compares against its latest version, in one statement.
SAVE_CHECKPOINT = """
INSERT INTO checkpoints (call_id, epoch, version, data, saved_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (call_id) DO UPDATE SET
    epoch = excluded.epoch, version = excluded.version,
    data = excluded.data, saved_at = excluded.saved_at
WHERE excluded.epoch > checkpoints.epoch
   OR (excluded.epoch = checkpoints.epoch AND excluded.version >= checkpoints.version)
"""
DROP_CHECKPOINT = "DELETE FROM checkpoints WHERE call_id = ?"
DROP_CHECKPOINT_UPTO = "DELETE FROM checkpoints WHERE call_id = ? AND epoch <= ?"

# --- queries -----------------------------------------------------------------------------

SELECT_CDRS = """
SELECT call_id, caller, callee, service, started_at, answered_at, ended_at,
       disposition, status, cause, primaries, standby_servers, epoch, cost, currency
FROM cdrs ORDER BY ended_at, call_id
"""
SELECT_ACTIVE_CALLS = """
SELECT call_id, caller, callee, service, primary_server, standby_server,
       epoch, state, started_at, updated_at
FROM active_calls ORDER BY started_at, call_id
"""
SELECT_PLACEMENTS = (
    "SELECT call_id, server, role, epoch, at FROM call_placements ORDER BY at, call_id, epoch"
)
SELECT_CHECKPOINT = (
    "SELECT call_id, epoch, version, data, saved_at FROM checkpoints WHERE call_id = ?"
)
SELECT_SIDE_EFFECT = "SELECT key, call_id, kind, applied_at, result FROM side_effects WHERE key = ?"

# --- schema versions ---------------------------------------------------------------------

SCHEMA_VERSION_FOUND = "SELECT COALESCE(MAX(version), 0) AS version FROM schema_version"
SCHEMA_VERSION_APPLIED = (
    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)"
)
SCHEMA_VERSIONS = "SELECT version, description, applied_at FROM schema_version ORDER BY version"
