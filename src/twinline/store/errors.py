"""The store's exceptions, shared by the interface, the schema and the backends."""

from __future__ import annotations


def display_url(url: str) -> str:
    """A database URL as logs and errors may show it: without user and password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else url


class StoreError(Exception):
    """A store operation failed; the message says which and why."""


class StoreClosed(StoreError):
    """The store is not open (never opened, closed, or its writer stopped)."""


class StoreBusy(StoreError):
    """The database stayed locked by other writers past the busy timeout, twice."""


class SchemaError(StoreError):
    """The database's schema cannot be used by this code."""


class SchemaTooNew(SchemaError):
    """The database was migrated by a newer twinline; this code must not write it."""

    def __init__(self, found: int, supported: int) -> None:
        super().__init__(
            f"database schema version {found} is newer than this twinline supports"
            f" ({supported}): upgrade twinline, or point it at another database"
        )
        self.found = found
        self.supported = supported


class StoreUnavailable(StoreError):
    """The database cannot be reached (its host is down, a failover is under way).

    Raised at once by immediate operations, so that a service can answer 503 while
    batched writes wait for the database to come back."""


class UnexpectedRows(StoreError):
    """A statement sent with `Tx.send(..., expect=N)` changed another number of rows."""

    def __init__(self, sql: str, expect: int, changed: int | None = None) -> None:
        self.sql = sql
        rows = "another number of" if changed is None else str(changed)
        super().__init__(f"{' '.join(sql.split())[:120]}: changed {rows} rows, not {expect}")
