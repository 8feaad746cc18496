"""The PostgreSQL backend: one database shared by the processes of every host.

Driver and threads. psycopg 3, synchronous, on the same threads as SQLite: the shared
writer (`store.writer`) owns one connection on its thread (batches and group commits
keep one design for both backends), and reads run on a small thread pool, each on a
connection of a `psycopg_pool.ConnectionPool` of `pool_size`. docs/operations.md says
why this rather than async psycopg (measured: `bench/pg_driver.py`).

Finding the primary. The URL goes to libpq as it is, so a multi-host URL with
``target_session_attrs=read-write`` (``postgresql://db1,db2/twinline?target_session_attrs=
read-write``) connects to whichever host accepts writes: after a failover, the promoted
replica. A connection lost mid-way is reopened before the next transaction.

Round trips. A short statement waited for costs both processes far more CPU than the
same statement sent in pipeline mode (`bench/pg_roundtrip.py`), so the writer's
transactions are pipelines: what nothing waits for (`Tx.send`) goes with the next
statement that waits (`_PgTx`).

Isolation (PostgreSQL's default, READ COMMITTED, plus what each operation adds):
- an exactly-once write: the side_effects primary key. A second inserter of a key whose
  first insert is not committed yet waits for it, then finds the key (nothing of the
  effect is kept) or not (the first rolled back: this one runs).
- a decision from what is read (a debit with its reservation): the effect reads the rows
  it decides on with ``SELECT ... FOR UPDATE``; concurrent writers of the same account
  queue on that row lock, each reading the balance the previous one committed.
- a checkpoint: the conditional upsert (``ON CONFLICT ... DO UPDATE ... WHERE``) locks
  the stored row and compares with its latest version in one statement.
- reads: read only, one snapshot for every statement of a `read`: a read of one
  statement runs alone (autocommit), a read of more in a REPEATABLE READ transaction.
A transaction the server aborts to break a deadlock (group commits of several
operations can take row locks in different orders) is run again, up to 5 times.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from twinline.store.backend import Backend, WriterStore
from twinline.store.base import Row, Tx
from twinline.store.errors import StoreError, StoreUnavailable, UnexpectedRows, display_url
from twinline.store.records import SqlValue
from twinline.store.sql import render
from twinline.store.writer import Failure, Session, Write

log = logging.getLogger("twinline.store")

T = TypeVar("T")

PASSWORD_ENV = "TWINLINE_DATABASE_PASSWORD"  # noqa: S105 - the variable's name

# Errors after which the same transaction may simply be run again.
_CONFLICTS = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.LockNotAvailable,
    pg_errors.QueryCanceled,  # statement_timeout: waited too long for a lock
)
# Errors that mean this connection is no use any more: the server went away, is
# shutting down or starting, or is no longer the primary.
_LOST_STATES = ("08", "57P01", "57P02", "57P03", "25006")


@dataclass(frozen=True)
class PgSettings:
    """How to reach the database (`[database]` in the configuration)."""

    url: str
    pool_size: int = 4  # connections for reads; the writer has its own
    connect_timeout: float = 5.0  # seconds per host tried
    statement_timeout: float = 30.0  # seconds; a statement running longer is cancelled
    sslmode: str | None = None  # libpq's sslmode; None: the URL's, else libpq's default
    password: str | None = None  # None: libpq's own (PGPASSWORD, ~/.pgpass)

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(self.connect_timeout)),
            "options": f"-c statement_timeout={round(self.statement_timeout * 1000)}",
            "application_name": "twinline",
            # A server cut off by the network answers nothing, not even a reset: without
            # these a transaction would wait for the kernel's TCP timeout (minutes).
            # Unacknowledged data for 10 s, or an idle connection silent for 10 + 3 x 2 s,
            # and the connection is declared lost (the writer holds its batches).
            "tcp_user_timeout": 10_000,
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 2,
            "keepalives_count": 3,
        }
        if self.sslmode is not None:
            kwargs["sslmode"] = self.sslmode
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs


def password_from(password_file: str | None) -> str | None:
    """The database password: $TWINLINE_DATABASE_PASSWORD, else the first line of
    `password_file`, else None (libpq then reads $PGPASSWORD or ~/.pgpass)."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if password_file is None:
        return None
    try:
        lines = Path(password_file).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise StoreError(f"cannot read the database password file {password_file}: {e}") from e
    if not lines or not lines[0]:
        raise StoreError(f"the database password file {password_file} is empty")
    return lines[0]


class _PgTx:
    """`Tx` over a psycopg connection: rows by column name.

    Statements given to `send` wait in a list and go out in pipeline mode ahead of the
    next statement whose answer is needed (or at `flush`): one round trip for all of
    them. A round trip costs both processes a wake-up and a few system calls, which on
    small hosts is most of what a short statement costs (bench/pg_roundtrip.py)."""

    __slots__ = ("_conn", "_cur", "_deferred", "aborted", "carried", "mixed")

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn
        self._cur: psycopg.Cursor[DictRow] = conn.cursor(row_factory=dict_row)
        self._deferred: list[tuple[str, tuple[SqlValue, ...], int | None]] = []
        self.aborted = False  # a pipeline failed on the server (see `PgSession._ready`)
        # How many of the deferred statements are earlier operations' (`PgSession.end_op`),
        # and whether the last failure was in a pipeline that carried some.
        self.carried = 0
        self.mixed = False

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        self._run(sql, params)
        return self._cur.rowcount

    def fetchone(self, sql: str, params: Sequence[SqlValue] = ()) -> Row | None:
        self._run(sql, params)
        return self._cur.fetchone()

    def fetchall(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        self._run(sql, params)
        return list(self._cur.fetchall())

    def send(self, sql: str, params: Sequence[SqlValue] = (), *, expect: int | None = None) -> None:
        self._deferred.append((sql, tuple(params), expect))

    def flush(self) -> None:
        """Run the statements `send` deferred, if any; raise the first one's error."""
        if self._deferred:
            self._run(None, ())

    @property
    def pending(self) -> int:
        return len(self._deferred)

    def discard(self) -> None:
        """Forget the deferred statements (the transaction is rolled back)."""
        self._deferred.clear()
        self.carried = 0

    def discard_after(self, sql: str) -> None:
        """Forget the deferred statements after the last `sql` (a savepoint rolled back to)."""
        for i in range(len(self._deferred) - 1, -1, -1):
            if self._deferred[i][0] == sql:
                del self._deferred[i + 1 :]
                return

    def _run(self, sql: str | None, params: Sequence[SqlValue]) -> None:
        if not self._deferred:
            assert sql is not None
            self._cur.execute(render(sql, "postgresql"), tuple(params))
            return
        deferred, self._deferred = self._deferred, []
        carried, self.carried = self.carried, 0
        # A COMMIT among them must not run after a failed `expect`: the check is then made
        # on the server; otherwise here, once the answers are in, before anything goes on
        # (an error on the server aborts the pipeline, which has costs of its own: see
        # `aborted`).
        on_server = sql is None and deferred[-1][0] == "COMMIT"
        sent: list[tuple[psycopg.Cursor[Any], str, int | None]] = []
        # Leaving the block sends a Sync and reads every answer; the first error is
        # raised there, and the server skips whatever came after it (a COMMIT too).
        try:
            with self._conn.pipeline():
                for statement, args, expect in deferred:
                    query = _expecting(statement, expect if on_server else None)
                    sent.append((self._conn.execute(query, args), statement, expect))
                if sql is not None:
                    self._cur.execute(render(sql, "postgresql"), tuple(params))
        except psycopg.Error as e:
            self.aborted = True
            self.mixed = carried > 0
            if isinstance(e, pg_errors.DivisionByZero):
                # The statement that failed is the first without an answer (those after
                # it were skipped): an `expect` check, or a division of the SQL's own.
                failed = next(((s, n) for cur, s, n in sent if cur.pgresult is None), None)
                if on_server and failed is not None and failed[1] is not None:
                    raise UnexpectedRows(failed[0], failed[1]) from e
            raise
        if not on_server:
            for i, (cur, statement, expect) in enumerate(sent):
                if expect is not None and cur.rowcount != expect:
                    self.mixed = i < carried
                    raise UnexpectedRows(statement, expect, cur.rowcount)


@functools.lru_cache(maxsize=256)
def _expecting(sql: str, expect: int | None) -> str:
    """`sql` for PostgreSQL; with `expect`, made to fail (division by zero) unless it
    changes `expect` rows: on the server, so that a COMMIT sent after it does not run."""
    rendered = render(sql, "postgresql")
    if expect is None:
        return rendered
    # Our own SQL and an int: nothing from outside is pasted in.
    check = f"SELECT 1 / (count(*) = {int(expect)})::int FROM sent"  # noqa: S608
    return f"WITH sent AS ({rendered} RETURNING 1) {check}"


_READ_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


class _SnapshotNeeded(Exception):
    """A read ran a second statement: it is run again in a transaction."""


class _FirstStatementTx(_PgTx):
    """A read's first try: most reads are one statement, which sees one snapshot on its
    own (autocommit), so it needs no transaction and costs one round trip, not three.
    A second statement raises `_SnapshotNeeded`, and the read is run again in a
    REPEATABLE READ transaction, where every statement sees the same snapshot."""

    __slots__ = ("_ran",)

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        super().__init__(conn)
        self._ran = False

    def _run(self, sql: str | None, params: Sequence[SqlValue]) -> None:
        if self._ran:
            raise _SnapshotNeeded
        self._ran = True
        super()._run(sql, params)


def _is_lost(error: BaseException) -> bool:
    if not isinstance(error, psycopg.OperationalError | psycopg.InternalError):
        return False
    state = error.sqlstate
    if state is None:
        return isinstance(error, psycopg.OperationalError)  # no answer from a server at all
    return state.startswith(_LOST_STATES)


def connect(settings: PgSettings) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(settings.url, autocommit=True, **settings.connect_kwargs())
    except psycopg.OperationalError as e:
        raise StoreUnavailable(f"cannot connect to the database: {e}") from e
    except psycopg.Error as e:
        raise StoreError(f"cannot connect to the database: {e}") from e


class PgSession(Session):
    """The writer's connection; reopened before a transaction when it was lost."""

    dialect = "postgresql"
    attempts = 5
    driver_errors = (psycopg.Error,)
    conflict_reason = "it conflicted with other transactions (deadlock, lock timeout) 5 times"

    def __init__(self, settings: PgSettings) -> None:
        self.settings = settings
        self.conn = connect(settings)
        self._tx = _PgTx(self.conn)
        self._lost = False  # an error said the connection is gone: reopen before the next

    @property
    def tx(self) -> Tx:
        return self._tx

    def begin(self) -> None:
        self._ready()
        self._tx.mixed = False
        self._tx.send("BEGIN")  # with the transaction's first statement

    def _ready(self) -> None:
        """Reopen the connection if it was lost, or if a pipeline failed on it: psycopg
        may then believe statements prepared that the server skipped (measured: their
        names fail later with "prepared statement does not exist", and psycopg 3.3's
        cache offers no public way to forget them). Failed pipelines are rare: a
        statement's own error, a deadlock."""
        if self._lost or self.conn.closed or self.conn.broken:
            self._reconnect()
        elif self._tx.aborted:
            self._reconnect(quiet=True)

    def _reconnect(self, *, quiet: bool = False) -> None:
        self.conn.close()
        self.conn = psycopg.connect(
            self.settings.url, autocommit=True, **self.settings.connect_kwargs()
        )
        self._tx = _PgTx(self.conn)
        self._lost = False
        (log.debug if quiet else log.info)(
            "store: reconnected to the database (%s:%s)", self.conn.info.host, self.conn.info.port
        )

    def commit(self) -> None:
        self._tx.send("COMMIT")
        self._tx.flush()

    # Savepoints go out with the operation's first statement that waits.
    def savepoint(self) -> None:
        self._tx.send("SAVEPOINT one_op")

    def release_savepoint(self) -> None:
        self._tx.send("RELEASE SAVEPOINT one_op")

    def rollback_to_savepoint(self) -> None:
        self._tx.discard_after("SAVEPOINT one_op")  # what the operation sent: undone anyway
        self._tx.execute("ROLLBACK TO SAVEPOINT one_op")

    def end_op(self, *, last: bool) -> bool:
        # The last operation's deferred statements and COMMIT go in one round trip. After
        # an error in the former the server skips the COMMIT: the operation's error.
        if last:
            self._tx.send("COMMIT")
            self._tx.flush()
            return True
        if self.separate_ops:
            self._tx.flush()
        else:  # they go with the next operation's first (an error there: Failure.MIXED)
            self._tx.carried = self._tx.pending
        return False

    def write_batch(self, writes: Sequence[Write]) -> int:
        # Pipeline mode: BEGIN, every write and COMMIT go out before any answer is read,
        # one round trip for the batch. After an error the server skips the rest, COMMIT
        # included, and the error is raised here.
        self._ready()
        try:
            with self.conn.pipeline():
                self.conn.execute("BEGIN")
                cursors = [self.conn.execute(render(w.sql, "postgresql"), w.params) for w in writes]
                self.conn.execute("COMMIT")
        except psycopg.Error:
            self._tx.aborted = True
            raise
        return sum(max(c.rowcount, 0) for c in cursors)

    def rollback(self) -> None:
        self._tx.discard()
        if self._lost or self.conn.closed or self.conn.broken:
            return
        if self.conn.info.transaction_status == TransactionStatus.IDLE:
            return
        try:
            self.conn.execute("ROLLBACK")
        except psycopg.Error as e:
            if not self.conn.broken:  # else: the connection is gone, and the transaction
                log.warning("store: rollback failed: %s", e)

    def failure(self, error: BaseException) -> Failure | None:
        if isinstance(error, StoreUnavailable) or _is_lost(error):
            self._lost = True
            return Failure.LOST
        if isinstance(error, _CONFLICTS):
            return Failure.CONFLICT
        if self._tx.mixed and isinstance(error, psycopg.Error | UnexpectedRows):
            return Failure.MIXED
        if isinstance(error, psycopg.Error):
            return Failure.BAD
        return None

    def close(self) -> None:
        self.conn.close()


class PgBackend(Backend):
    def __init__(self, settings: PgSettings) -> None:
        self.settings = settings
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None

    def connect(self) -> PgSession:
        return PgSession(self.settings)

    async def open_reads(self) -> None:
        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.autocommit = True  # `_read` begins a transaction when one is needed
            conn.execute("SET default_transaction_read_only = on")

        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            self.settings.url,
            kwargs=self.settings.connect_kwargs(),
            min_size=1,
            max_size=self.settings.pool_size,
            open=False,
            configure=configure,
            timeout=self.settings.connect_timeout,
            name="twinline-reads",
        )
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                None, lambda: pool.open(wait=True, timeout=self.settings.connect_timeout * 2)
            )
        except PoolTimeout as e:
            await loop.run_in_executor(None, pool.close)
            raise StoreUnavailable(f"cannot connect the read pool to the database: {e}") from e
        self._pool = pool
        self._readers = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.settings.pool_size, thread_name_prefix="twinline-store-reader"
        )

    async def read(self, fn: Callable[[Tx], T]) -> T:
        readers = self._readers
        if readers is None:
            raise StoreError("the store is not open")
        return await asyncio.get_running_loop().run_in_executor(readers, self._read, fn)

    def _read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` on a pooled connection. A connection found dead (a server restart, a
        failover) is dropped by the pool and `fn` run again on another, until every
        connection the pool had was tried: reads may be repeated, and checking each
        connection as it is taken would cost every read a round trip."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is not open")
        attempts = self.settings.pool_size + 1
        for attempt in range(1, attempts + 1):
            try:
                with pool.connection() as conn:
                    try:
                        return fn(_FirstStatementTx(conn))
                    except _SnapshotNeeded:
                        pass
                    conn.execute(_READ_SNAPSHOT)
                    try:
                        return fn(_PgTx(conn))
                    finally:
                        if not conn.broken:
                            conn.execute("ROLLBACK")
            except PoolTimeout as e:
                raise StoreUnavailable(f"query: no database connection: {e}") from e
            except psycopg.Error as e:
                if not _is_lost(e):
                    raise StoreError(f"query failed: {e}") from e
                if attempt == attempts:
                    raise StoreUnavailable(f"query: the database is unreachable: {e}") from e
        raise AssertionError("unreachable")

    async def close_reads(self) -> None:
        pool, self._pool = self._pool, None
        readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=False)
        if pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, pool.close)


class PostgresStore(WriterStore):
    """The store in a PostgreSQL database, shared by the processes of every host."""

    def __init__(
        self,
        settings: PgSettings | str,
        *,
        flush_interval: float = 0.05,
        batch_size: int = 500,
    ) -> None:
        if isinstance(settings, str):
            settings = PgSettings(settings)
        if settings.pool_size < 1:
            raise ValueError("pool_size >= 1 please")
        self.settings = settings
        super().__init__(
            PgBackend(settings),
            name=display_url(settings.url),
            flush_interval=flush_interval,
            batch_size=batch_size,
        )

    def __repr__(self) -> str:
        return f"PostgresStore({display_url(self.settings.url)!r})"
