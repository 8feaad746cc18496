"""The SQLite backend: one file shared by the processes of one host.

Threads. sqlite3 blocks, so it never runs on the event loop thread:

- one *writer* thread owns the write connection and serves a queue. Batched writes
  accumulate and are committed as one transaction when the oldest has waited
  `flush_interval` or `batch_size` are pending; an immediate operation (`once`, a
  checkpoint, ...) or a `flush` barrier first commits the batch before it, so the queue's
  order is the commit order. Immediate operations queued together (a takeover's burst
  of checkpoints) share one transaction, each in a savepoint: a group commit. Results
  come back through `concurrent.futures.Future`s, which `asyncio.wrap_future` resolves
  on the caller's loop (`call_soon_threadsafe`).
- one *reader* thread owns a read-only connection for queries; in WAL mode readers and
  the writer do not block each other.

Several processes. WAL mode lets readers work while one process writes; writers take
turns on the file's write lock. Every write transaction starts with `BEGIN IMMEDIATE`,
which takes that lock up front and waits for it up to `busy_timeout` (a deferred
transaction that tried to upgrade a stale read snapshot would fail at once, without
waiting). A transaction still locked out after that is retried once; a batch locked out
twice is dropped, logged and counted, and an immediate operation raises `StoreBusy`.

Durability: `synchronous=NORMAL` in WAL mode. A commit survives the crash of any
process; the last commits may be lost, atomically, if the host loses power.

Errors never stop the writer: a batch that fails for another reason than the lock
(a bad value, a constraint) is replayed write by write, each in a savepoint, so only
the bad write is lost, logged with its reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

from twinline.store import schema
from twinline.store.base import OnceOutcome, Row, Store, StoreStats, Tx
from twinline.store.errors import StoreBusy, StoreClosed, StoreError
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

log = logging.getLogger("twinline.store")

T = TypeVar("T")

_BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
# What a bad write raises: sqlite3's errors, and the conversions sqlite3 does not wrap
# (an int beyond 64 bits raises OverflowError).
_WRITE_FAILED = (sqlite3.Error, OverflowError, ValueError, TypeError)
# How many writes a log line about a failed batch names.
_LOG_WRITES = 5


# --- the SQL of each operation ---------------------------------------------------------

_CALL_STARTED = """
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
_CALL_UPDATED = """
UPDATE active_calls
SET primary_server = ?, standby_server = ?, epoch = ?, state = ?, updated_at = ?
WHERE call_id = ? AND epoch <= ?
"""
_CALL_ENDED = "DELETE FROM active_calls WHERE call_id = ?"
_PLACEMENT = "INSERT INTO call_placements (call_id, server, role, epoch, at) VALUES (?, ?, ?, ?, ?)"
_WRITE_CDR = """
INSERT INTO cdrs (
    call_id, caller, callee, service, started_at, answered_at, ended_at,
    disposition, status, cause, primaries, standby_servers, epoch
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (call_id) DO NOTHING
"""
_CLAIM = """
INSERT INTO side_effects (key, call_id, kind, applied_at, result) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (key) DO NOTHING
"""
_SAVE_CHECKPOINT = """
INSERT INTO checkpoints (call_id, epoch, version, data, saved_at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (call_id) DO UPDATE SET
    epoch = excluded.epoch, version = excluded.version,
    data = excluded.data, saved_at = excluded.saved_at
WHERE excluded.epoch > checkpoints.epoch
   OR (excluded.epoch = checkpoints.epoch AND excluded.version >= checkpoints.version)
"""
_DROP_CHECKPOINT = "DELETE FROM checkpoints WHERE call_id = ?"
_DROP_CHECKPOINT_UPTO = "DELETE FROM checkpoints WHERE call_id = ? AND epoch <= ?"
_SELECT_CDRS = """
SELECT call_id, caller, callee, service, started_at, answered_at, ended_at,
       disposition, status, cause, primaries, standby_servers, epoch
FROM cdrs ORDER BY ended_at, call_id
"""
_SELECT_ACTIVE_CALLS = """
SELECT call_id, caller, callee, service, primary_server, standby_server,
       epoch, state, started_at, updated_at
FROM active_calls ORDER BY started_at, call_id
"""
_SELECT_PLACEMENTS = (
    "SELECT call_id, server, role, epoch, at FROM call_placements ORDER BY at, call_id, epoch"
)
_SELECT_CHECKPOINT = (
    "SELECT call_id, epoch, version, data, saved_at FROM checkpoints WHERE call_id = ?"
)
_STORE_RESULT = "UPDATE side_effects SET result = ? WHERE key = ?"
_SIDE_EFFECT_RESULT = "SELECT result FROM side_effects WHERE key = ?"
_SELECT_SIDE_EFFECT = (
    "SELECT key, call_id, kind, applied_at, result FROM side_effects WHERE key = ?"
)


# --- what the writer's queue carries ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Write:
    """A batched write."""

    sql: str
    params: tuple[SqlValue, ...]
    what: str  # for the log: "cdr call-17"


@dataclass(frozen=True, slots=True)
class _Op(Generic[T]):
    """An immediate operation: `fn` runs in a write transaction, in a savepoint of its
    own (operations queued together share the transaction: `_Writer._run_ops`)."""

    fn: Callable[[sqlite3.Connection], T]
    future: concurrent.futures.Future[T]
    what: str


@dataclass(frozen=True, slots=True)
class _Barrier:
    """Resolved once everything queued before it is committed; `stop` ends the writer."""

    future: concurrent.futures.Future[None]
    stop: bool = False


_Item = _Write | _Op[Any] | _Barrier


class _SqliteTx:
    """`Tx` over a sqlite3 connection: rows by column name."""

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def fetchone(self, sql: str, params: Sequence[SqlValue] = ()) -> Row | None:
        cur = self._conn.execute(sql, tuple(params))
        row = cur.fetchone()
        if row is None:
            return None
        return dict(zip((d[0] for d in cur.description), row, strict=True))

    def fetchall(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        cur = self._conn.execute(sql, tuple(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _is_busy(error: sqlite3.Error) -> bool:
    return (error.sqlite_errorcode & 0xFF) in _BUSY_CODES


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            log.warning("store: rollback failed: %s", e)


def _resolve(future: concurrent.futures.Future[T], value: T) -> None:
    if future.set_running_or_notify_cancel():
        future.set_result(value)


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


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to `schema.SCHEMA_VERSION` in one transaction; return the old version.

    Safe against other processes opening the same new file at the same time: the version
    is read and the migrations applied under the write lock.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(schema.SCHEMA_VERSION_TABLE)
        found: int = conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version"
        ).fetchone()[0]
        for migration in schema.pending(found):
            for statement in schema.statements_for(migration, "sqlite"):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.description, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return found


def _op_error(op: _Op[Any], e: BaseException, *, busy_timeout: float = 0.0) -> BaseException:
    """What an immediate operation's caller gets when it failed with `e`."""
    if not isinstance(e, sqlite3.Error):
        return e
    error: StoreError
    if _is_busy(e):
        error = StoreBusy(
            f"{op.what}: the database stayed locked past busy_timeout"
            f" ({busy_timeout:.1f} s) twice: {e}"
        )
    else:
        error = StoreError(f"{op.what}: {e}")
    error.__cause__ = e
    return error


class _Writer:
    """The writer thread, its connection, its queue and its counters."""

    def __init__(
        self, path: Path, *, busy_timeout: float, flush_interval: float, batch_size: int
    ) -> None:
        self._path = path
        self._busy_timeout = busy_timeout
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._stats = StoreStats()
        self._stats_lock = threading.Lock()
        self.running = False
        # Resolved when the connection is open and the schema migrated (or failed to).
        self.started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, name=f"twinline-store-writer:{path.name}", daemon=True
        )

    # --- the caller's side (any thread) --------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._thread.start()

    def put(self, item: _Item) -> None:
        self._queue.put(item)

    def submit(
        self, what: str, fn: Callable[[sqlite3.Connection], T]
    ) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Op(fn, future, what))
        return future

    def barrier(self, *, stop: bool = False) -> concurrent.futures.Future[None]:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(_Barrier(future, stop))
        return future

    @property
    def stats(self) -> StoreStats:
        with self._stats_lock:
            return replace(self._stats, pending=self._queue.qsize())

    # --- the writer thread ---------------------------------------------------------------

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            s = self._stats
            self._stats = replace(s, **{k: getattr(s, k) + v for k, v in increments.items()})

    def _run(self) -> None:
        try:
            conn = _connect(self._path, self._busy_timeout, readonly=False)
        except BaseException as e:  # noqa: BLE001 - handed to open(), which raises it
            self.running = False
            self.started.set_exception(e)
            return
        stop: _Barrier | None = None
        try:
            try:
                old = _while_busy(lambda: migrate(conn), self._busy_timeout)
            except sqlite3.Error as e:
                raise StoreError(f"cannot migrate the database {str(self._path)!r}: {e}") from e
            if old != schema.SCHEMA_VERSION:
                log.info(
                    "store: %s: schema migrated from version %d to %d",
                    self._path,
                    old,
                    schema.SCHEMA_VERSION,
                )
        except BaseException as e:  # noqa: BLE001 - handed to open(), which raises it
            conn.close()
            self.running = False
            self.started.set_exception(e)
            return
        self.started.set_result(None)
        try:
            stop = self._serve(conn)
        except BaseException:
            log.exception("store: the writer stopped on an unexpected error")
        finally:
            self.running = False
            conn.close()
            self._fail_leftovers()
            if stop is not None:
                _resolve(stop.future, None)

    def _serve(self, conn: sqlite3.Connection) -> _Barrier:
        """Serve the queue until a stop barrier; return it (resolved once the file is closed)."""
        batch: list[_Write] = []
        deadline = 0.0
        carried: _Item | None = None  # taken from the queue while gathering operations
        while True:
            if carried is not None:
                item, carried = carried, None
            elif batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    self._commit_batch(conn, batch)
                    batch = []
                    continue
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    self._commit_batch(conn, batch)
                    batch = []
                    continue
            else:
                item = self._queue.get()

            if isinstance(item, _Write):
                if not batch:
                    deadline = time.monotonic() + self._flush_interval
                batch.append(item)
                if len(batch) >= self._batch_size:
                    self._commit_batch(conn, batch)
                    batch = []
                continue
            # Anything else is ordered after the writes queued before it: commit them first.
            if batch:
                self._commit_batch(conn, batch)
                batch = []
            if isinstance(item, _Op):
                ops: list[_Op[Any]] = [item]
                while len(ops) < self._batch_size:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if not isinstance(more, _Op):
                        carried = more  # served next, after these are committed
                        break
                    ops.append(more)
                self._run_ops(conn, ops)
            elif item.stop:
                return item
            else:
                _resolve(item.future, None)

    def _commit_batch(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        for attempt in (1, 2):
            try:
                conn.execute("BEGIN IMMEDIATE")
                rows = 0
                for write in batch:
                    rows += max(conn.execute(write.sql, write.params).rowcount, 0)
                conn.execute("COMMIT")
            except _WRITE_FAILED as e:
                _rollback(conn)
                if not (isinstance(e, sqlite3.Error) and _is_busy(e)):
                    log.warning(
                        "store: a batch of %d writes failed (%s); committing them one by one",
                        len(batch),
                        e,
                    )
                    self._commit_one_by_one(conn, batch)
                    return
                if attempt == 1:
                    self._count(retries=1)
                    continue
                log.error(
                    "store: dropped a batch of %d writes (%s%s): the database stayed locked"
                    " past busy_timeout (%.1f s) twice: %s",
                    len(batch),
                    ", ".join(w.what for w in batch[:_LOG_WRITES]),
                    ", ..." if len(batch) > _LOG_WRITES else "",
                    self._busy_timeout,
                    e,
                )
                self._count(errors=1, dropped=len(batch))
                return
            else:
                self._count(batches=1, writes=len(batch), rows=rows)
                return

    def _commit_one_by_one(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        """Commit a batch with each write in a savepoint, dropping only the writes that fail."""
        written = rows = failed = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                conn.execute("SAVEPOINT one_write")
                try:
                    rows += max(conn.execute(write.sql, write.params).rowcount, 0)
                except _WRITE_FAILED as e:
                    conn.execute("ROLLBACK TO one_write")
                    log.error("store: dropped a write (%s): %s", write.what, e)
                    failed += 1
                else:
                    written += 1
                conn.execute("RELEASE one_write")
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            _rollback(conn)
            log.error("store: dropped a batch of %d writes: %s", len(batch), e)
            self._count(errors=1, dropped=len(batch))
            return
        self._count(batches=1, writes=written, rows=rows, errors=failed, dropped=failed)

    def _run_ops(self, conn: sqlite3.Connection, ops: list[_Op[Any]]) -> None:
        """Immediate operations queued together commit together (group commit): one
        transaction, each operation in a savepoint of its own so that one that fails
        is undone alone. Every result is handed out after the COMMIT, never before.

        A takeover checkpoints thousands of calls to the database at once; one
        transaction each would serialize them on the commit."""
        ops = [op for op in ops if op.future.set_running_or_notify_cancel()]
        if not ops:
            return  # their callers gave up before they started: nothing was done
        for attempt in (1, 2):
            outcomes: list[tuple[bool, Any]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in ops:
                    conn.execute("SAVEPOINT one_op")
                    try:
                        outcomes.append((True, op.fn(conn)))
                    except Exception as e:  # noqa: BLE001 - handed to that op's caller
                        conn.execute("ROLLBACK TO one_op")
                        error = _op_error(op, e, busy_timeout=self._busy_timeout)
                        outcomes.append((False, error))
                    conn.execute("RELEASE one_op")
                conn.execute("COMMIT")
            except sqlite3.Error as e:
                _rollback(conn)
                if _is_busy(e) and attempt == 1:
                    self._count(retries=1)
                    continue
                for op in ops:
                    op.future.set_exception(_op_error(op, e, busy_timeout=self._busy_timeout))
                return
            except BaseException as e:  # noqa: BLE001 - handed to the callers, who raise it
                _rollback(conn)
                for op in ops:
                    op.future.set_exception(e)
                return
            for op, (ok, value) in zip(ops, outcomes, strict=True):
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)
            return

    def _fail_leftovers(self) -> None:
        """Fail whatever was queued after the writer stopped (nothing, when used as meant)."""
        lost = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Write):
                lost += 1
            elif item.future.set_running_or_notify_cancel():
                item.future.set_exception(StoreClosed("the store's writer has stopped"))
        if lost:
            log.error("store: %d writes queued after the writer stopped were dropped", lost)
            self._count(errors=1, dropped=lost)


def _names(servers: Sequence[str], what: str) -> str:
    for name in servers:
        if "," in name:
            raise ValueError(f"{what}: server name {name!r} contains a comma")
    return ",".join(servers)


def _split(names: str) -> tuple[str, ...]:
    return tuple(names.split(",")) if names else ()


def _role(value: str) -> Role:
    if value == "primary":
        return "primary"
    if value == "standby":
        return "standby"
    raise StoreError(f"call_placements: unknown role {value!r}")


class SqliteStore(Store):
    """The store in one SQLite file, shared by the processes of one host."""

    def __init__(
        self,
        path: str | Path,
        *,
        flush_interval: float = 0.05,
        batch_size: int = 500,
        busy_timeout: float = 5.0,
    ) -> None:
        if flush_interval <= 0 or batch_size < 1 or busy_timeout < 0:
            raise ValueError("flush_interval > 0, batch_size >= 1 and busy_timeout >= 0 please")
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.busy_timeout = busy_timeout
        self._writer: _Writer | None = None
        self._last_stats = StoreStats()
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None  # used by the reader thread only

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    # --- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            raise StoreError(f"{self!r} is already open")
        writer = _Writer(
            self.path,
            busy_timeout=self.busy_timeout,
            flush_interval=self.flush_interval,
            batch_size=self.batch_size,
        )
        writer.start()
        await asyncio.wrap_future(writer.started)
        self._writer = writer
        self._reader = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"twinline-store-reader:{self.path.name}"
        )

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        reader, self._reader = self._reader, None
        if writer is not None:
            # Stops once everything queued before is committed and the file closed.
            await asyncio.wrap_future(writer.barrier(stop=True))
            self._last_stats = writer.stats
        if reader is not None:
            await asyncio.get_running_loop().run_in_executor(reader, self._close_reader)
            reader.shutdown(wait=False)

    @property
    def stats(self) -> StoreStats:
        return self._writer.stats if self._writer is not None else self._last_stats

    def _open_writer(self) -> _Writer:
        writer = self._writer
        if writer is None:
            raise StoreClosed(f"{self!r} is not open")
        if not writer.running:
            raise StoreClosed(f"{self!r}: the writer stopped after an error (see the log)")
        return writer

    # --- batched writes ------------------------------------------------------------------

    def _enqueue(self, sql: str, params: tuple[SqlValue, ...], what: str) -> None:
        self._open_writer().put(_Write(sql, params, what))

    def call_started(self, call: ActiveCall) -> None:
        self._enqueue(
            _CALL_STARTED,
            (
                call.call_id,
                call.caller,
                call.callee,
                call.service,
                call.primary_server,
                call.standby_server,
                call.epoch,
                call.state,
                call.started_at,
                call.updated_at,
            ),
            f"call started {call.call_id}",
        )

    def call_updated(
        self,
        call_id: str,
        primary: str,
        standby: str | None,
        epoch: int,
        state: str,
        *,
        at: float | None = None,
    ) -> None:
        now = time.time() if at is None else at
        self._enqueue(
            _CALL_UPDATED,
            (primary, standby, epoch, state, now, call_id, epoch),
            f"call updated {call_id}",
        )

    def call_ended(self, call_id: str) -> None:
        self._enqueue(_CALL_ENDED, (call_id,), f"call ended {call_id}")

    def placement(self, call_id: str, server: str, role: Role, epoch: int, at: float) -> None:
        self._enqueue(
            _PLACEMENT, (call_id, server, role, epoch, at), f"placement {call_id} {role} {server}"
        )

    def write_cdr(self, cdr: Cdr) -> None:
        what = f"cdr {cdr.call_id}"
        self._enqueue(
            _WRITE_CDR,
            (
                cdr.call_id,
                cdr.caller,
                cdr.callee,
                cdr.service,
                cdr.started_at,
                cdr.answered_at,
                cdr.ended_at,
                cdr.disposition,
                cdr.status,
                cdr.cause,
                _names(cdr.primaries, what),
                _names(cdr.standby_servers, what),
                cdr.epoch,
            ),
            what,
        )

    async def flush(self) -> None:
        await asyncio.wrap_future(self._open_writer().barrier())

    # --- immediate writes ----------------------------------------------------------------

    async def _write_now(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.wrap_future(self._open_writer().submit(what, fn))

    async def claim(self, key: str, call_id: str, kind: str, *, result: str | None = None) -> bool:
        params = (key, call_id, kind, time.time(), result)

        def claim(conn: sqlite3.Connection) -> bool:
            return conn.execute(_CLAIM, params).rowcount == 1

        return await self._write_now(f"claim {key}", claim)

    async def once(
        self,
        key: str,
        call_id: str,
        kind: str,
        statements: Sequence[Statement],
        *,
        result: str | None = None,
    ) -> bool:
        params = (key, call_id, kind, time.time(), result)
        # Copied: the caller may change its lists while the writer gets to them.
        prepared = tuple((sql, tuple(args)) for sql, args in statements)

        def once(conn: sqlite3.Connection) -> bool:
            if conn.execute(_CLAIM, params).rowcount != 1:
                return False
            for i, (sql, args) in enumerate(prepared):
                try:
                    conn.execute(sql, args)
                except sqlite3.Error as e:
                    raise StoreError(f"side effect {key}: statement {i} failed: {e}") from e
            return True

        return await self._write_now(f"side effect {key}", once)

    async def once_with(
        self, key: str, call_id: str, kind: str, effect: Callable[[Tx], str | None]
    ) -> OnceOutcome:
        params = (key, call_id, kind, time.time(), None)

        def once(conn: sqlite3.Connection) -> OnceOutcome:
            if conn.execute(_CLAIM, params).rowcount != 1:
                row = conn.execute(_SIDE_EFFECT_RESULT, (key,)).fetchone()
                return OnceOutcome(applied=False, result=row[0] if row else None)
            result = effect(_SqliteTx(conn))
            if result is not None:
                conn.execute(_STORE_RESULT, (result, key))
            return OnceOutcome(applied=True, result=result)

        return await self._write_now(f"side effect {key}", once)

    async def transaction(self, what: str, fn: Callable[[Tx], T]) -> T:
        return await self._write_now(what, lambda conn: fn(_SqliteTx(conn)))

    async def read(self, fn: Callable[[Tx], T]) -> T:
        reader = self._reader
        if reader is None or self._writer is None:
            raise StoreClosed(f"{self!r} is not open")
        return await asyncio.get_running_loop().run_in_executor(reader, self._read_tx, fn)

    def _read_tx(self, fn: Callable[[Tx], T]) -> T:
        try:
            if self._read_conn is None:
                self._read_conn = _connect(self.path, self.busy_timeout, readonly=True)
            conn = self._read_conn
            conn.execute("BEGIN")
            try:
                return fn(_SqliteTx(conn))
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as e:
            raise StoreError(f"query failed on {str(self.path)!r}: {e}") from e

    async def save_checkpoint(self, call_id: str, epoch: int, version: int, data: bytes) -> bool:
        params = (call_id, epoch, version, data, time.time())

        def save(conn: sqlite3.Connection) -> bool:
            return conn.execute(_SAVE_CHECKPOINT, params).rowcount == 1

        return await self._write_now(f"checkpoint {call_id}", save)

    async def drop_checkpoint(self, call_id: str, *, epoch: int | None = None) -> None:
        def drop(conn: sqlite3.Connection) -> None:
            if epoch is None:
                conn.execute(_DROP_CHECKPOINT, (call_id,))
            else:
                conn.execute(_DROP_CHECKPOINT_UPTO, (call_id, epoch))

        await self._write_now(f"drop checkpoint {call_id}", drop)

    # --- queries (on the reader thread) --------------------------------------------------

    def _close_reader(self) -> None:
        if self._read_conn is not None:
            self._read_conn.close()
            self._read_conn = None

    def _query(self, sql: str, params: tuple[SqlValue, ...] = ()) -> list[Any]:
        """Run a query on the reader thread's connection (opened on first use)."""
        try:
            if self._read_conn is None:
                self._read_conn = _connect(self.path, self.busy_timeout, readonly=True)
            conn = self._read_conn
            return _while_busy(lambda: conn.execute(sql, params).fetchall(), self.busy_timeout)
        except sqlite3.Error as e:
            raise StoreError(f"query failed on {str(self.path)!r}: {e}") from e

    async def _read(self, sql: str, params: tuple[SqlValue, ...] = ()) -> list[Any]:
        reader = self._reader
        if reader is None or self._writer is None:
            raise StoreClosed(f"{self!r} is not open")
        return await asyncio.get_running_loop().run_in_executor(reader, self._query, sql, params)

    async def load_checkpoint(self, call_id: str) -> Checkpoint | None:
        rows = await self._read(_SELECT_CHECKPOINT, (call_id,))
        if not rows:
            return None
        c, epoch, version, data, saved_at = rows[0]
        return Checkpoint(call_id=c, epoch=epoch, version=version, data=data, saved_at=saved_at)

    async def side_effect(self, key: str) -> SideEffect | None:
        rows = await self._read(_SELECT_SIDE_EFFECT, (key,))
        if not rows:
            return None
        k, call_id, kind, applied_at, result = rows[0]
        return SideEffect(key=k, call_id=call_id, kind=kind, applied_at=applied_at, result=result)

    async def cdrs(self) -> list[Cdr]:
        rows = await self._read(_SELECT_CDRS)
        return [
            Cdr(
                call_id=r[0],
                caller=r[1],
                callee=r[2],
                service=r[3],
                started_at=r[4],
                answered_at=r[5],
                ended_at=r[6],
                disposition=r[7],
                status=r[8],
                cause=r[9],
                primaries=_split(r[10]),
                standby_servers=_split(r[11]),
                epoch=r[12],
            )
            for r in rows
        ]

    async def active_calls(self) -> list[ActiveCall]:
        rows = await self._read(_SELECT_ACTIVE_CALLS)
        return [
            ActiveCall(
                call_id=r[0],
                caller=r[1],
                callee=r[2],
                service=r[3],
                primary_server=r[4],
                standby_server=r[5],
                epoch=r[6],
                state=r[7],
                started_at=r[8],
                updated_at=r[9],
            )
            for r in rows
        ]

    async def placements(self) -> list[Placement]:
        rows = await self._read(_SELECT_PLACEMENTS)
        return [
            Placement(call_id=r[0], server=r[1], role=_role(r[2]), epoch=r[3], at=r[4])
            for r in rows
        ]
