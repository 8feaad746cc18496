"""The SQLite backend: one file shared by the processes of one host.

sqlite3 blocks, so it never runs on the event loop thread: the shared writer
(`store.writer`) owns the write connection on its thread, and one *reader* thread owns a
read-only connection for queries; in WAL mode readers and the writer do not block each
other.

Several processes. WAL mode lets readers work while one process writes; writers take
turns on the file's write lock. Every write transaction starts with `BEGIN IMMEDIATE`,
which takes that lock up front and waits for it up to `busy_timeout` (a deferred
transaction that tried to upgrade a stale read snapshot would fail at once, without
waiting). That lock is the isolation every operation relies on: a transaction holds the
whole file from its first statement, so what it reads cannot change before it commits
(`SELECT ... FOR UPDATE` is dropped when the SQL is rendered: nothing to add). A
transaction still locked out after that is run once more; a batch locked out twice is
dropped, logged and counted, and an immediate operation raises `StoreBusy`.

Durability: `synchronous=NORMAL` in WAL mode. A commit survives the crash of any
process; the last commits may be lost, atomically, if the host loses power.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from twinline.store import migrate
from twinline.store.backend import Backend, WriterStore
from twinline.store.base import Row, Tx
from twinline.store.errors import StoreError, UnexpectedRows
from twinline.store.records import SqlValue
from twinline.store.sql import render
from twinline.store.writer import Failure, Session

log = logging.getLogger("twinline.store")

T = TypeVar("T")

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# Seconds between tries for the write lock (`SqliteSession.begin`), at random in this range.
_LOCK_POLL = (0.0001, 0.0006)
# What a bad write raises: sqlite3's errors, and the conversions sqlite3 does not wrap
# (an int beyond 64 bits raises OverflowError).
_WRITE_FAILED = (sqlite3.Error, OverflowError, ValueError, TypeError)


class _SqliteTx:
    """`Tx` over a sqlite3 connection: rows by column name."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        return self._conn.execute(render(sql, "sqlite"), tuple(params)).rowcount

    def fetchone(self, sql: str, params: Sequence[SqlValue] = ()) -> Row | None:
        cur = self._conn.execute(render(sql, "sqlite"), tuple(params))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip((d[0] for d in cur.description), row, strict=True))

    def fetchall(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        cur = self._conn.execute(render(sql, "sqlite"), tuple(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def send(self, sql: str, params: Sequence[SqlValue] = (), *, expect: int | None = None) -> None:
        changed = self.execute(sql, params)  # in-process: nothing to gain by waiting later
        if expect is not None and changed != expect:
            raise UnexpectedRows(sql, expect, changed)

    def flush(self) -> None:
        return  # `send` ran its statement at once


def _is_busy(error: BaseException) -> bool:
    return isinstance(error, sqlite3.Error) and (error.sqlite_errorcode & 0xFF) in _BUSY_CODES


def _while_busy(fn: Callable[[], T], patience: float) -> T:
    """Run `fn`, again while SQLite reports the file busy, for up to `patience` seconds.

    For the steps where SQLite returns SQLITE_BUSY at once, without calling the busy
    handler: switching a file to WAL mode while another process opens it too, or
    reading the WAL index while another connection recovers it. Sleeps: call it on the
    writer or reader thread only.
    """
    deadline = time.monotonic() + patience
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _is_busy(e) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _connect(path: Path, busy_timeout: float, *, readonly: bool) -> sqlite3.Connection:
    try:
        # Autocommit mode (isolation_level=None): transactions are begun explicitly.
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open the database {str(path)!r}: {e}") from e
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
            return conn
        mode = _while_busy(
            lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0], busy_timeout
        )
        if mode != "wal":
            log.warning(
                "store: %s: WAL mode unavailable (journal mode %r); processes sharing the"
                " file will block each other's reads",
                path,
                mode,
            )
        conn.execute("PRAGMA synchronous = NORMAL")
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"cannot set up the database {str(path)!r}: {e}") from e
    return conn


class SqliteSession(Session):
    """The writer's connection to the file."""

    dialect = "sqlite"
    attempts = 2
    driver_errors = (sqlite3.Error,)

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self.conflict_reason = (
            f"the database stayed locked past busy_timeout ({busy_timeout:.1f} s) twice"
        )
        self.conn = _connect(path, busy_timeout, readonly=False)
        self.conn.execute("PRAGMA busy_timeout = 0")  # `begin` polls for the lock
        self._tx = _SqliteTx(self.conn)

    @property
    def tx(self) -> Tx:
        return self._tx

    def begin(self) -> None:
        """Take the file's write lock, polling for it every fraction of a millisecond.

        Not SQLite's busy handler: it sleeps 1, 2, 5, 10, ... up to 100 ms between
        tries, so with three processes writing short transactions in turn a writer
        kept sleeping while the lock was free most of the time (prepaid calls, whose
        reservation and debit are transactions of their own, spent most of their setup
        time there). The write connection's busy_timeout is 0 for this."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as e:
            if not _is_busy(e):
                raise
        deadline = time.monotonic() + self.busy_timeout
        while True:
            time.sleep(random.uniform(*_LOCK_POLL))
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if not _is_busy(e) or time.monotonic() >= deadline:
                    raise

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error as e:
                log.warning("store: rollback failed: %s", e)

    def failure(self, error: BaseException) -> Failure | None:
        if _is_busy(error):
            return Failure.CONFLICT
        if isinstance(error, _WRITE_FAILED):
            return Failure.BAD
        return None

    def close(self) -> None:
        self.conn.close()


class SqliteBackend(Backend):
    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None  # used by the reader thread only

    def connect(self) -> SqliteSession:
        return SqliteSession(self.path, self.busy_timeout)

    def migrate(self, session: Session, *, upto: int | None = None) -> migrate.Migrated:
        # Safe against other processes opening the same new file at the same time: the
        # version is read and the migrations applied under the write lock.
        try:
            return _while_busy(lambda: migrate.migrate(session, upto=upto), self.busy_timeout)
        except sqlite3.Error as e:
            raise StoreError(f"cannot migrate the database {str(self.path)!r}: {e}") from e

    async def open_reads(self) -> None:
        self._reader = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"twinline-store-reader:{self.path.name}"
        )

    async def read(self, fn: Callable[[Tx], T]) -> T:
        reader = self._reader
        if reader is None:
            raise StoreError("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(reader, self._read, fn)

    def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a read transaction on the reader thread's connection (opened on
        first use)."""
        try:
            if self._read_conn is None:
                self._read_conn = _connect(self.path, self.busy_timeout, readonly=True)
            conn = self._read_conn

            def attempt() -> T:
                conn.execute("BEGIN")
                try:
                    return fn(_SqliteTx(conn))
                finally:
                    conn.execute("ROLLBACK")

            return _while_busy(attempt, self.busy_timeout)
        except sqlite3.Error as e:
            raise StoreError(f"query failed on {str(self.path)!r}: {e}") from e

    async def close_reads(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
            reader.shutdown(wait=False)

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None


class SqliteStore(WriterStore):
    """The store in one SQLite file, shared by the processes of one host."""

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float = 0.05,
        batch_size: int = 500,
        busy_timeout: float = 5.0,
    ) -> None:
        if busy_timeout < 0:
            raise ValueError("busy_timeout >= 0 please")
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        super().__init__(
            SqliteBackend(self.path, busy_timeout),
            name=self.path.name,
            flush_interval=flush_interval,
            batch_size=batch_size,
        )

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"
