"""The store's writer, shared by every backend: batching, ordering and group commit.

A backend gives the writer one thing, a `Session`: a write connection with its
transactions and a verdict on each error it raises. Everything else is here, the same
for SQLite and PostgreSQL:

- one *writer* thread owns the session and serves a queue. Batched writes accumulate
  and are committed as one transaction when the oldest has waited `flush_interval` or
  `batch_size` are pending; an immediate operation (a function of a transaction) or a
  `flush` barrier first commits the batch before it, so the queue's order is the commit
  order. Immediate operations queued together (a takeover's burst of checkpoints)
  share one transaction, each in a savepoint: a group commit. Results come back through
  `concurrent.futures.Future`s, which `asyncio.wrap_future` resolves on the caller's
  loop.
- errors never stop the writer. A transaction that conflicted with other writers
  (SQLite's lock still held past busy_timeout, a PostgreSQL deadlock) is run again, up
  to the session's `attempts`; a batch that fails for a write's own fault (a bad value,
  a constraint) is replayed write by write, each in a savepoint, so only that write is
  lost, logged with its reason.
- the database unreachable (a PostgreSQL restart, a failover, a network cut): batches
  are held, in order, and retried with a growing delay (up to `retry_cap`) until it is
  back, then written; a `flush` waits for them. Meanwhile immediate operations fail at
  once with `StoreUnavailable` (run now, they would overtake the held writes; a service
  answers 503). An operation that finds its idle connection dead is run once more on a
  new one. Closing waits `drain_timeout` for the database, then drops what is held.
"""

from __future__ import annotations

import abc
import concurrent.futures
import enum
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from twinline.store.base import StoreStats, Tx
from twinline.store.errors import StoreBusy, StoreClosed, StoreError, StoreUnavailable
from twinline.store.records import SqlValue
from twinline.store.sql import Dialect

log = logging.getLogger("twinline.store")

T = TypeVar("T")

# How many writes a log line about a failed batch names.
_LOG_WRITES = 5
# Seconds immediate operations are refused at once after the database was found
# unreachable (the next one tries again).
_REFUSE_FOR = 1.0


class Failure(enum.Enum):
    """What an error raised by a session says about the transaction it broke."""

    CONFLICT = "conflict"  # other writers were in the way: the same transaction may be run again
    LOST = "lost"  # the connection is gone: nothing of the transaction was committed
    BAD = "bad"  # a statement's own fault (a constraint, a bad value): it fails alone
    # The failed statements went out with an earlier operation's of the group (sent
    # together to save round trips), so which failed is not known: the group is run
    # again with each operation's statements on their own (`Session.separate_ops`).
    MIXED = "mixed"


class Session(abc.ABC):
    """The writer's connection to the database; used on the writer thread only."""

    dialect: Dialect
    # How many times a transaction that conflicted with other writers is run in all.
    attempts: int = 2
    # In errors and the log: why a transaction gave up after `attempts` conflicts.
    conflict_reason: str = "it conflicted with other writers"
    # The driver's own exceptions: an operation failing with one of these is reported
    # as a `StoreError`; anything else an operation raises reaches its caller as it is.
    driver_errors: tuple[type[BaseException], ...] = ()
    # Set by the writer to run a group again after a `Failure.MIXED`: each operation's
    # statements must then have run when it returns (`end_op`).
    separate_ops: bool = False

    @property
    @abc.abstractmethod
    def tx(self) -> Tx:
        """The `Tx` of the transaction the session is in."""

    @abc.abstractmethod
    def begin(self) -> None:
        """Begin a write transaction."""

    @abc.abstractmethod
    def commit(self) -> None:
        """Commit it."""

    @abc.abstractmethod
    def rollback(self) -> None:
        """Roll back whatever transaction is open (none: nothing); never raises."""

    @abc.abstractmethod
    def failure(self, error: BaseException) -> Failure | None:
        """What `error` means for the transaction; None: it is not the database's."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; never raises."""

    def backoff(self, attempt: int) -> None:
        """Wait before running a conflicting transaction again (`attempt` >= 1)."""
        jittered_backoff(attempt)

    def write_batch(self, writes: Sequence[Write]) -> int:
        """Run the writes in order in a transaction and commit it; how many rows they
        changed."""
        self.begin()
        rows = sum(max(self.tx.execute(w.sql, w.params), 0) for w in writes)
        self.commit()
        return rows

    def end_op(self, *, last: bool) -> bool:
        """An operation of a group returned: make sure its statements ran, so that their
        errors are raised now, as the operation's (`Tx.send` may have deferred them).
        For the `last` operation a session may commit with them (True: committed): an
        error then is the operation's only if the COMMIT did not run."""
        return False  # SQLite runs every statement when it is given

    def savepoint(self) -> None:
        self.tx.execute("SAVEPOINT one_op")

    def rollback_to_savepoint(self) -> None:
        self.tx.execute("ROLLBACK TO SAVEPOINT one_op")

    def release_savepoint(self) -> None:
        self.tx.execute("RELEASE SAVEPOINT one_op")

    def next_savepoint(self) -> None:
        """Release the savepoint and set a new one (for the next operation of a group)."""
        self.release_savepoint()
        self.savepoint()


def jittered_backoff(attempt: int, base: float = 0.005, cap: float = 0.2) -> None:
    """Sleep a random time that grows with `attempt`, so conflicting writers spread out."""
    time.sleep(random.uniform(0, min(cap, base * 2**attempt)))


# --- what the writer's queue carries ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """A batched write."""

    sql: str
    params: tuple[SqlValue, ...]
    what: str  # for the log: "cdr call-17"


@dataclass(frozen=True, slots=True)
class _Op(Generic[T]):
    """An immediate operation: `fn` runs in a write transaction, in a savepoint of its
    own (operations queued together share the transaction: `Writer._run_ops`)."""

    fn: Callable[[Tx], T]
    future: concurrent.futures.Future[T]
    what: str


@dataclass(frozen=True, slots=True)
class _Barrier:
    """Resolved once everything queued before it is committed; `stop` ends the writer."""

    future: concurrent.futures.Future[None]
    stop: bool = False


_Item = Write | _Op[Any] | _Barrier


class _GroupFailed(Exception):
    """An operation of a group commit hit an error that breaks the whole transaction."""

    def __init__(self, error: BaseException, failure: Failure) -> None:
        super().__init__(str(error))
        self.error = error
        self.failure = failure


def _resolve(future: concurrent.futures.Future[T], value: T) -> None:
    if future.set_running_or_notify_cancel():
        future.set_result(value)


def _fail(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    """Fail a future whether or not it was started; one its caller cancelled is left."""
    if future.running() or future.set_running_or_notify_cancel():
        future.set_exception(error)


class Writer:
    """The writer thread, its session, its queue and its counters.

    `connect` runs first on the writer thread: it opens the session and brings the
    schema up to date; `started` resolves when it returned (or failed).
    """

    def __init__(
        self,
        connect: Callable[[], Session],
        *,
        name: str,
        flush_interval: float,
        batch_size: int,
        retry_cap: float = 2.0,
        max_held: int = 1_000_000,
        drain_timeout: float = 10.0,
    ) -> None:
        self._connect = connect
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        # Batches held while the database is unreachable, oldest first, and what waits
        # for them to be written (flushes).
        self._backlog: list[list[Write]] = []
        self._held = 0
        self._flushes: list[_Barrier] = []
        self._down_since = 0.0
        self._down_attempt = 0
        self._retry_at = 0.0
        self._ops_refused_until = 0.0
        self._retry_cap = retry_cap
        self._max_held = max_held
        self._drain_timeout = drain_timeout
        self._stats = StoreStats()
        self._stats_lock = threading.Lock()
        self.running = False
        self.started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, name=f"twinline-store-writer:{name}", daemon=True
        )

    # --- the caller's side (any thread) --------------------------------------------------

    def start(self) -> None:
        self.running = True
        self._thread.start()

    def put(self, write: Write) -> None:
        self._queue.put(write)

    def submit(self, what: str, fn: Callable[[Tx], T]) -> concurrent.futures.Future[T]:
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
            return replace(self._stats, pending=self._queue.qsize(), held=self._held)

    # --- the writer thread ---------------------------------------------------------------

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            s = self._stats
            self._stats = replace(s, **{k: getattr(s, k) + v for k, v in increments.items()})

    def _timed(self, histogram: str, started: float) -> None:
        """Observe a committed transaction's time (retries included) for the metrics."""
        with self._stats_lock:
            getattr(self._stats, histogram).observe(time.monotonic() - started)

    def _run(self) -> None:
        try:
            session = self._connect()
        except BaseException as e:  # noqa: BLE001 - handed to open(), which raises it
            self.running = False
            self.started.set_exception(e)
            return
        self.started.set_result(None)
        stop: _Barrier | None = None
        try:
            stop = self._serve(session)
        except BaseException:
            log.exception("store: the writer stopped on an unexpected error")
        finally:
            self.running = False
            session.close()
            self._fail_leftovers()
            if stop is not None:
                _resolve(stop.future, None)

    def _serve(self, session: Session) -> _Barrier:
        """Serve the queue until a stop barrier; return it (resolved once closed)."""
        batch: list[Write] = []
        deadline = 0.0
        carried: _Item | None = None  # taken from the queue while gathering operations
        while True:
            if carried is not None:
                item, carried = carried, None
            else:
                wake = min(
                    deadline if batch else math.inf, self._retry_at if self._backlog else math.inf
                )
                try:
                    if wake < math.inf:
                        item = self._queue.get(timeout=max(0.0, wake - time.monotonic()))
                    else:
                        item = self._queue.get()
                except queue.Empty:
                    now = time.monotonic()
                    if self._backlog and now >= self._retry_at:
                        self._retry_backlog(session)
                    if batch and now >= deadline:
                        self._commit_batch(session, batch)
                        batch = []
                    continue

            if isinstance(item, Write):
                if not batch:
                    deadline = time.monotonic() + self._flush_interval
                batch.append(item)
                if len(batch) >= self._batch_size:
                    self._commit_batch(session, batch)
                    batch = []
                continue
            # Anything else is ordered after the writes queued before it: commit them first.
            if batch:
                self._commit_batch(session, batch)
                batch = []
            if self._backlog and time.monotonic() >= self._retry_at:
                self._retry_backlog(session)
            if isinstance(item, _Op):
                ops: list[_Op[Any]] = [item]
                carried = self._take_ops(ops)
                if self._backlog or time.monotonic() < self._ops_refused_until:
                    self._refuse_ops(ops)
                elif carried is None:  # nothing queued behind them yet: more may join
                    carried = self._run_ops(session, ops, gather=True)
                else:
                    self._run_ops(session, ops, gather=False)
            elif item.stop:
                self._drain_backlog(session)
                return item
            elif self._backlog:
                self._flushes.append(item)  # resolved once the backlog is written
            else:
                _resolve(item.future, None)

    # --- while the database is unreachable -----------------------------------------------

    def _hold(self, batch: list[Write], error: BaseException) -> None:
        """Keep a batch the database could not be reached for, to write it when it is back."""
        if not self._backlog:
            self._down_since = time.monotonic()
            self._down_attempt = 0
            self._schedule_retry()
            log.error(
                "store: the database is unreachable (%s); batched writes are held and"
                " retried, immediate operations refused until it is back",
                error,
            )
        self._backlog.append(batch)
        self._held += len(batch)
        while self._held > self._max_held and len(self._backlog) > 1:
            oldest = self._backlog.pop(0)
            self._held -= len(oldest)
            log.error(
                "store: dropped %d held writes (%s, ...): more than %d wait for the database",
                len(oldest),
                oldest[0].what,
                self._max_held,
            )
            self._count(errors=1, dropped=len(oldest))

    def _schedule_retry(self) -> None:
        self._down_attempt += 1
        delay = min(self._retry_cap, 0.05 * 2**self._down_attempt)
        self._retry_at = time.monotonic() + random.uniform(delay / 2, delay)

    def _retry_backlog(self, session: Session) -> None:
        """Write the held batches, in order; stop at the first the database is still
        unreachable for."""
        while self._backlog:
            batch = self._backlog[0]
            if not self._commit_batch(session, batch, holding=True):
                self._schedule_retry()
                return
            self._backlog.pop(0)
            self._held -= len(batch)
        log.warning(
            "store: the database is back after %.1f s; the held writes are written",
            time.monotonic() - self._down_since,
        )
        flushes, self._flushes = self._flushes, []
        for barrier in flushes:
            _resolve(barrier.future, None)

    def _refuse_ops(self, ops: list[_Op[Any]]) -> None:
        """Immediate operations fail at once while writes wait for the database: run now,
        they would overtake those writes, and their callers need an answer now."""
        for op in ops:
            if op.future.set_running_or_notify_cancel():
                op.future.set_exception(
                    StoreUnavailable(
                        f"{op.what}: the database is unreachable ({self._held} writes wait for it)"
                    )
                )

    def _drain_backlog(self, session: Session) -> None:
        """At close: keep trying the held writes for `drain_timeout`, then drop them."""
        give_up = time.monotonic() + self._drain_timeout
        while self._backlog and time.monotonic() < give_up:
            time.sleep(max(0.0, min(self._retry_at, give_up) - time.monotonic()))
            self._retry_backlog(session)
        if self._backlog:
            log.error(
                "store: closing with the database unreachable: dropped %d held writes",
                self._held,
            )
            self._count(errors=1, dropped=self._held)
            self._backlog, self._held = [], 0
        flushes, self._flushes = self._flushes, []
        for barrier in flushes:
            _resolve(barrier.future, None)

    # --- committing ----------------------------------------------------------------------

    def _commit_batch(self, session: Session, batch: list[Write], *, holding: bool = False) -> bool:
        """Commit a batch in one transaction. False: the database is unreachable, and the
        batch is held (or, `holding`, still held) to be written when it is back."""
        if self._backlog and not holding:
            self._hold(batch, StoreUnavailable("unreachable"))  # behind those held before
            return False
        attempt = 0
        started = time.monotonic()
        while True:
            attempt += 1
            try:
                rows = session.write_batch(batch)
            except Exception as e:
                session.rollback()
                failure = session.failure(e)
                if failure is None:
                    raise
                if failure is Failure.BAD:
                    log.warning(
                        "store: a batch of %d writes failed (%s); committing them one by one",
                        len(batch),
                        e,
                    )
                    return self._commit_one_by_one(session, batch, holding=holding)
                if failure is Failure.LOST:
                    # Never dropped: held and written once the database is back. A batch
                    # whose COMMIT was sent when the connection died may be written twice;
                    # every batched write is idempotent but a placement, appended again.
                    if not holding:
                        self._hold(batch, e)
                    return False
                if attempt < session.attempts:
                    self._count(retries=1)
                    session.backoff(attempt)
                    continue
                log.error(
                    "store: dropped a batch of %d writes (%s%s): %s: %s",
                    len(batch),
                    ", ".join(w.what for w in batch[:_LOG_WRITES]),
                    ", ..." if len(batch) > _LOG_WRITES else "",
                    session.conflict_reason,
                    e,
                )
                self._count(errors=1, dropped=len(batch))
                return True
            self._count(batches=1, writes=len(batch), rows=rows)
            self._timed("batch_time", started)
            return True

    def _commit_one_by_one(self, session: Session, batch: list[Write], *, holding: bool) -> bool:
        """Commit a batch with each write in a savepoint, dropping only the writes that fail."""
        written = rows = failed = 0
        try:
            session.begin()
            for write in batch:
                session.savepoint()
                try:
                    rows += max(session.tx.execute(write.sql, write.params), 0)
                except Exception as e:
                    if session.failure(e) is not Failure.BAD:
                        raise
                    session.rollback_to_savepoint()
                    log.error("store: dropped a write (%s): %s", write.what, e)
                    failed += 1
                else:
                    written += 1
                session.release_savepoint()
            session.commit()
        except Exception as e:
            session.rollback()
            failure = session.failure(e)
            if failure is None:
                raise
            if failure is Failure.LOST:
                if not holding:
                    self._hold(batch, e)
                return False
            log.error("store: dropped a batch of %d writes: %s", len(batch), e)
            self._count(errors=1, dropped=len(batch))
            return True
        self._count(batches=1, writes=written, rows=rows, errors=failed, dropped=failed)
        return True

    def _op_error(self, session: Session, op: _Op[Any], e: BaseException) -> BaseException:
        """What an immediate operation's caller gets when it failed with `e`."""
        failure = session.failure(e)
        if failure is None or not isinstance(e, session.driver_errors):
            return e
        error: StoreError
        if failure is Failure.CONFLICT:
            error = StoreBusy(f"{op.what}: {session.conflict_reason}: {e}")
        elif failure is Failure.LOST:
            error = StoreUnavailable(f"{op.what}: the database is unreachable: {e}")
        else:
            error = StoreError(f"{op.what}: {e}")
        error.__cause__ = e
        return error

    def _take_ops(self, ops: list[_Op[Any]]) -> _Item | None:
        """Add the operations queued now to `ops` (up to `batch_size`); the first other
        item met is returned, to be served after them."""
        while len(ops) < self._batch_size:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return None
            if not isinstance(more, _Op):
                return more
            ops.append(more)
        return None

    def _run_ops(self, session: Session, ops: list[_Op[Any]], *, gather: bool) -> _Item | None:
        """Immediate operations queued together commit together (group commit): one
        transaction, each operation in a savepoint of its own so that one that fails
        is undone alone (a session may send an operation's last statements with the
        next one's first: `Failure.MIXED`). Every result is handed out after the
        COMMIT, never before.
        With `gather`, operations queued while the transaction waited for the
        database's write lock join it (returned: the item met after them, if any, to
        serve next); without, something else is queued before them already.

        A takeover checkpoints thousands of calls to the database at once; one
        transaction each would serialize them on the commit. And processes that share
        a SQLite file, or one account's row on PostgreSQL, take turns on a lock: what
        queued during one's turn is best done in its next."""
        try:
            return self._run_group(session, ops, gather=gather)
        finally:
            session.separate_ops = False

    def _run_group(self, session: Session, ops: list[_Op[Any]], *, gather: bool) -> _Item | None:
        carried: _Item | None = None
        gathered = not gather
        started_ops = False
        attempt = 0
        reconnected = False
        started = time.monotonic()
        while True:
            attempt += 1
            outcomes: list[tuple[bool, Any]] = []
            committing = finished = False
            try:
                session.begin()
                if not gathered:
                    gathered = True
                    carried = self._take_ops(ops)
                if not started_ops:
                    started_ops = True
                    ops = [op for op in ops if op.future.set_running_or_notify_cancel()]
                alone = len(ops) == 1  # then the transaction is the op's: no savepoint
                for i, op in enumerate(ops):
                    if not alone:
                        if i == 0:
                            session.savepoint()
                        else:
                            session.next_savepoint()  # COMMIT releases the last one
                    last = i == len(ops) - 1
                    try:
                        value = op.fn(session.tx)
                        committing = last  # the session may send COMMIT with the op's end
                        finished = session.end_op(last=last)
                        outcomes.append((True, value))
                    except Exception as e:
                        cause, failure = _failure_within(session, e)
                        if failure in (Failure.CONFLICT, Failure.LOST, Failure.MIXED):
                            raise _GroupFailed(cause, failure) from e
                        committing = False  # an op's error: COMMIT was not run
                        outcomes.append((False, self._op_error(session, op, e)))
                        if alone:
                            session.rollback()  # nothing is left to commit
                        else:
                            session.rollback_to_savepoint()
                        finished = alone
                committing = True
                if not finished:
                    session.commit()
            except Exception as e:  # noqa: BLE001 - handed to the callers, who raise it
                session.rollback()
                error = e.error if isinstance(e, _GroupFailed) else e
                failure = e.failure if isinstance(e, _GroupFailed) else session.failure(e)
                if failure is Failure.CONFLICT and attempt < session.attempts:
                    self._count(retries=1)
                    session.backoff(attempt)
                    continue
                if failure is Failure.MIXED and not session.separate_ops:
                    session.separate_ops = True  # until this group is done
                    self._count(retries=1)
                    continue
                if failure is Failure.LOST and not committing and not reconnected:
                    # A connection that died while idle (a server restart, a failover)
                    # is found dead only now: run the operations once more on a new one.
                    # Not after COMMIT was sent: whether it took effect is unknown.
                    reconnected = True
                    self._count(retries=1)
                    continue
                if failure is Failure.LOST:
                    # Refuse the next operations at once for a while rather than wait
                    # for each to find the database unreachable again.
                    self._ops_refused_until = time.monotonic() + _REFUSE_FOR
                for op in ops:
                    _fail(op.future, self._op_error(session, op, error))
                return carried
            except BaseException as e:  # noqa: BLE001 - handed to the callers, who raise it
                session.rollback()
                for op in ops:
                    _fail(op.future, e)
                return carried
            self._timed("ops_time", started)
            for op, (ok, value) in zip(ops, outcomes, strict=True):
                if ok:
                    op.future.set_result(value)
                else:
                    op.future.set_exception(value)
            return carried

    def _fail_leftovers(self) -> None:
        """Fail whatever was queued after the writer stopped (nothing, when used as meant)."""
        lost = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Write):
                lost += 1
            elif item.future.set_running_or_notify_cancel():
                item.future.set_exception(StoreClosed("the store's writer has stopped"))
        if lost:
            log.error("store: %d writes queued after the writer stopped were dropped", lost)
            self._count(errors=1, dropped=lost)


def _failure_within(session: Session, error: BaseException) -> tuple[BaseException, Failure | None]:
    """The database error in `error` and its failure (an operation may wrap a driver's
    error in a `StoreError` that says which statement failed)."""
    seen: BaseException | None = error
    while seen is not None:
        failure = session.failure(seen)
        if failure is not None:
            return seen, failure
        seen = seen.__cause__
    return error, None
