"""The database as an operator manages it: its schema version, and migrating it
(`twinline db status`, `twinline db migrate`). Synchronous: the CLI runs no event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from twinline.store import pg_settings, sqlite_path
from twinline.store.backend import Backend
from twinline.store.errors import StoreError
from twinline.store.migrate import Migrated, SchemaStatus, status
from twinline.store.sqlite import SqliteBackend
from twinline.store.writer import Session

if TYPE_CHECKING:
    from twinline.config import Database

T = TypeVar("T")


def backend_for(database: str | Database) -> Backend:
    url = database if isinstance(database, str) else database.url
    if url.startswith("sqlite:"):
        return SqliteBackend(sqlite_path(url), busy_timeout=5.0)
    from twinline.store.postgres import PgBackend  # noqa: PLC0415 - psycopg when used

    return PgBackend(pg_settings(database))


def _with_session(database: str | Database, fn: Callable[[Backend, Session], T]) -> T:
    backend = backend_for(database)
    session = backend.connect()
    try:
        return fn(backend, session)
    except Exception as e:
        if isinstance(e, StoreError) or session.failure(e) is None:
            raise
        raise StoreError(str(e)) from e
    finally:
        session.close()


def schema_status(database: str | Database) -> SchemaStatus:
    """The database's schema version and the migrations it lacks; changes nothing."""
    return _with_session(database, lambda _, session: status(session))


def migrate_database(database: str | Database, *, upto: int | None = None) -> Migrated:
    """Apply the migrations the database lacks (up to version `upto`), as every process
    does when it opens the database; safe beside running processes and other migrators."""
    return _with_session(database, lambda backend, session: backend.migrate(session, upto=upto))
