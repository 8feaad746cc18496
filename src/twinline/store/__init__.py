"""The database: what must outlive every process (active calls, CDRs, side effects,
checkpoints of calls with no standby, and later service data).

`open_store(url)` picks the backend from the deployment's database URL; everything else
speaks the `Store` interface (see `twinline.store.base` for what each operation
promises).

    store = open_store("sqlite:///twinline.db")
    async with store:
        store.write_cdr(cdr)          # enqueued: returns at once
        if await store.once(f"{call_id}/debit/1", call_id, "debit", [(DEBIT, (cents, acct))]):
            ...                       # debited now, and never again for this key
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from twinline.store.base import OnceOutcome, Row, Store, StoreStats, Tx
from twinline.store.errors import (
    SchemaError,
    SchemaTooNew,
    StoreBusy,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    UnexpectedRows,
    display_url,
)
from twinline.store.records import (
    ActiveCall,
    Cdr,
    Checkpoint,
    Placement,
    Role,
    SideEffect,
    SqlValue,
    Statement,
)
from twinline.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from twinline.config import Database
    from twinline.store.postgres import PgSettings

__all__ = [
    "ActiveCall",
    "Cdr",
    "Checkpoint",
    "OnceOutcome",
    "Placement",
    "Role",
    "Row",
    "SchemaError",
    "SchemaTooNew",
    "SideEffect",
    "SqlValue",
    "SqliteStore",
    "Statement",
    "Store",
    "StoreBusy",
    "StoreClosed",
    "StoreError",
    "StoreStats",
    "StoreUnavailable",
    "Tx",
    "UnexpectedRows",
    "display_url",
    "open_store",
    "pg_settings",
    "sqlite_path",
]


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:` URL names, by the usual convention (SQLAlchemy's):
    ``sqlite:///twinline.db`` and ``sqlite:///data/twinline.db`` are relative to the
    working directory, ``sqlite:////var/lib/twinline/twinline.db`` is absolute.
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":
        raise StoreError(f"{url!r} is not a sqlite: URL")
    if parts.netloc:
        raise StoreError(
            f"{url!r}: a sqlite URL names a file, not a host: write sqlite:///relative.db"
            " or sqlite:////absolute/path.db"
        )
    if parts.query or parts.fragment:
        raise StoreError(f"{url!r}: a sqlite URL takes no options")
    if not parts.path.startswith("/") or parts.path in ("/", "//"):
        raise StoreError(f"{url!r}: no file named; write sqlite:///twinline.db")
    path = parts.path[1:]  # drop the slash that separates the empty host from the path
    if path == ":memory:":
        raise StoreError(
            f"{url!r}: an in-memory database cannot be shared between processes; name a file"
        )
    return Path(path)


def open_store(database: str | Database) -> Store:
    """The store a database URL (or the configuration's `[database]`) names, not yet
    opened: ``await store.open()`` (or ``async with store``) connects it.

    ``sqlite:///FILE`` or ``postgresql://...`` (libpq's URL, multi-host included).
    """
    url = database if isinstance(database, str) else database.url
    if _scheme(url) == "sqlite":
        return SqliteStore(sqlite_path(url))
    from twinline.store.postgres import PostgresStore  # noqa: PLC0415 - psycopg when used

    return PostgresStore(pg_settings(database))


def pg_settings(database: str | Database) -> PgSettings:
    """How to reach the PostgreSQL database a URL (or `[database]`) names; the password
    from the environment or the password file, never from the configuration itself."""
    from twinline.store.postgres import PgSettings, password_from  # noqa: PLC0415

    if isinstance(database, str):
        return PgSettings(database, password=password_from(None))
    return PgSettings(
        database.url,
        pool_size=database.pool_size,
        connect_timeout=database.connect_timeout,
        statement_timeout=database.statement_timeout,
        sslmode=database.sslmode,
        password=password_from(database.password_file),
    )


def _scheme(url: str) -> str:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        return "sqlite"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise StoreError(
        f"{url!r}: unknown database URL scheme {scheme!r}; use sqlite:///FILE or postgresql://"
    )


async def open_database(database: str | Database, store: Store | None = None) -> Store:
    """Open the store a URL (or `[database]`) names (or `store`, made from it), as a
    process does at start: any failure becomes a `StartupError` that says what to fix."""
    from twinline.errors import StartupError  # noqa: PLC0415 - keeps the store importable alone

    url = database if isinstance(database, str) else database.url
    try:
        store = store or open_store(database)
        await store.open()
    except (StoreError, OSError) as e:
        raise StartupError(f"cannot open the database {display_url(url)}: {e}") from None
    return store
