"""The store's exceptions, shared by the interface, the schema and the backends."""

from __future__ import annotations


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
