"""The store's interface, which every backend (SQLite now, PostgreSQL later) implements.

Three kinds of operation, by what the caller needs:

- *Batched* (`call_started`, `call_updated`, `call_ended`, `placement`, `write_cdr`):
  plain methods that enqueue the write and return at once, so the call path never waits
  for the database. A writer commits what is queued in batches, one transaction each.
  `flush()` waits until everything enqueued before it has been committed (or, having
  failed, logged and counted in `stats`). Writes from one store are committed in the
  order they were enqueued.
- *Immediate* (`claim`, `once`, `save_checkpoint`, `drop_checkpoint`): awaited, and
  committed when they return, because an invariant needs them first: a side effect
  applied exactly once (invariant 5), a checkpoint with no standby to hold it
  (invariant 3). They are ordered after every batched write enqueued before them.
- *Queries* (`cdrs`, `active_calls`, `placements`, `load_checkpoint`, `side_effect`):
  what is committed, as seen by any process; `flush()` first to see your own writes.

Exactly once, for side effects: the caller names each effect with an idempotency key of
call and step (e.g. ``f"{call_id}/debit/{step}"``), the same on whichever instance runs
it. An effect that is a database write goes through `once()`, which inserts the key and
runs the write in one transaction: both happen, or neither, and never twice. An effect
outside the database goes through `claim()`, which inserts the key alone: run the
effect only when it returns True (at most once; a crash between the claim and the
effect loses the effect, so prefer `once()` wherever the effect can be a write).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, TypeVar

from twinline.metrics_histogram import DB_BUCKETS, Histogram
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

T = TypeVar("T")

# A row as a query returns it: values by column name, the same on every backend.
Row = Mapping[str, SqlValue]


class Tx(Protocol):
    """One database transaction, as a function given to `Store.transaction`,
    `Store.read` or `Store.once_with` sees it. Synchronous: the function runs on the
    store's own thread, inside the transaction, and must not block on anything else.

    SQL uses `?` placeholders (the backend renders them in its driver's style).
    """

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        """Run a statement; returns how many rows it changed."""
        ...

    def fetchone(self, sql: str, params: Sequence[SqlValue] = ()) -> Row | None:
        """The first row of a query, or None."""
        ...

    def fetchall(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        """Every row of a query."""
        ...

    def send(self, sql: str, params: Sequence[SqlValue] = (), *, expect: int | None = None) -> None:
        """Run a statement whose result nothing reads. A backend may send it without
        waiting for its answer, with the next statement that waits or at the end of the
        operation (PostgreSQL: one round trip for all of them), so its error, or a row
        count other than `expect`, may be raised there rather than here."""
        ...

    def flush(self) -> None:
        """Run what `send` deferred now, raising its errors here."""
        ...


@dataclass(frozen=True, slots=True)
class OnceOutcome:
    """What `Store.once_with` did: applied now, or found applied before; either way
    `result` is what the first application returned."""

    applied: bool
    result: str | None


@dataclass(frozen=True)
class StoreStats:
    """Counters of a store's writer since it opened."""

    batches: int = 0  # batches committed
    writes: int = 0  # batched writes committed
    rows: int = 0  # rows those writes changed (a duplicate CDR changes none)
    retries: int = 0  # transactions retried after the database stayed locked
    errors: int = 0  # failed batches and failed single writes, each logged with its reason
    dropped: int = 0  # batched writes lost to those errors
    pending: int = 0  # items waiting for the writer, approximately
    held: int = 0  # batched writes held while the database is unreachable
    # Seconds per committed transaction: a batch of writes, a group of immediate
    # operations. Observed by the writer under its stats lock; read by the metrics.
    batch_time: Histogram = field(default_factory=lambda: Histogram(DB_BUCKETS))
    ops_time: Histogram = field(default_factory=lambda: Histogram(DB_BUCKETS))


class Store(abc.ABC):
    """The database of call-specific information and, later, service data."""

    # --- lifecycle ---------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema, and start the writer."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Commit every pending write, then stop. Idempotent."""

    @property
    @abc.abstractmethod
    def stats(self) -> StoreStats:
        """A snapshot of the writer's counters."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- batched writes: enqueue and return at once ------------------------------------

    @abc.abstractmethod
    def call_started(self, call: ActiveCall) -> None:
        """Record a new active call (or replace the record of one with the same id)."""

    @abc.abstractmethod
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
        """Record a call's new placement or state; `at` defaults to now.

        An update carrying an epoch older than the recorded one is ignored: a late write
        never moves a call back to a deposed primary.
        """

    @abc.abstractmethod
    def call_ended(self, call_id: str) -> None:
        """Remove a call from the active calls."""

    @abc.abstractmethod
    def placement(self, call_id: str, server: str, role: Role, epoch: int, at: float) -> None:
        """Append a placement of a call instance to the placement log."""

    @abc.abstractmethod
    def write_cdr(self, cdr: Cdr) -> None:
        """Record a call's CDR; a second CDR for the same call is ignored by the database."""

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until every write enqueued before this call has been committed.

        A write that failed has been logged and counted in `stats` (errors, dropped) by
        the time this returns; it does not raise for it. While the database is
        unreachable, writes are held (`stats.held`) and this waits until it is back.
        """

    # --- immediate writes: committed when they return ----------------------------------

    @abc.abstractmethod
    async def claim(self, key: str, call_id: str, kind: str, *, result: str | None = None) -> bool:
        """Record that the side effect `key` is being applied; False if it already was.

        For effects outside the database: apply the effect only on True.
        """

    @abc.abstractmethod
    async def once(
        self,
        key: str,
        call_id: str,
        kind: str,
        statements: Sequence[Statement],
        *,
        result: str | None = None,
    ) -> bool:
        """Run `statements` and record `key`, in one transaction, unless `key` exists.

        True: applied now. False: applied before (nothing was run). A statement that
        fails (a constraint such as ``CHECK (balance >= 0)``) rolls back the whole
        transaction, the key included, and raises `StoreError`, so the effect can be
        tried again. Statements use `?` placeholders.
        """

    @abc.abstractmethod
    async def once_with(
        self, key: str, call_id: str, kind: str, effect: Callable[[Tx], str | None]
    ) -> OnceOutcome:
        """Run `effect` and record `key` with what it returned, in one transaction,
        unless `key` exists: then nothing of the effect is kept and the stored result
        comes back. (The key's claim may travel with the effect's first statement, so
        the effect may have started before the key is found: keep it a function of the
        transaction, with no effect outside it.)

        The effect decides from what the database holds (a balance, a reservation) and
        returns its result as text (the amount debited, a refusal), which every replay
        of the same key gets back unchanged. An exception from `effect` rolls back the
        whole transaction, the key included, and reaches the caller (a `StoreError` for
        a database error), so the effect can be tried again.
        """

    @abc.abstractmethod
    async def transaction(self, what: str, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a write transaction, committed when this returns.

        `what` names the operation in errors and the log. An exception from `fn` rolls
        the transaction back and reaches the caller.
        """

    @abc.abstractmethod
    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a read-only transaction on what is committed (`flush()` first to
        see this store's own batched writes)."""

    @abc.abstractmethod
    async def save_checkpoint(self, call_id: str, epoch: int, version: int, data: bytes) -> bool:
        """Save a call's checkpoint, unless the stored one is newer.

        Checkpoints only move forward, by (epoch, version): a deposed primary's late save
        is refused (False). Saving the stored (epoch, version) again is accepted (True),
        so a retried save is harmless.
        """

    @abc.abstractmethod
    async def load_checkpoint(self, call_id: str) -> Checkpoint | None:
        """The call's saved checkpoint, or None."""

    @abc.abstractmethod
    async def drop_checkpoint(self, call_id: str, *, epoch: int | None = None) -> None:
        """Delete a call's checkpoint; with `epoch`, only one saved at that epoch or before.

        Passing the caller's epoch keeps a deposed primary from dropping the checkpoint
        its successor saved.
        """

    # --- queries -----------------------------------------------------------------------

    @abc.abstractmethod
    async def side_effect(self, key: str) -> SideEffect | None:
        """The record of the side effect `key`, or None if it was never applied."""

    @abc.abstractmethod
    async def cdrs(self) -> list[Cdr]:
        """Every CDR, by end time."""

    @abc.abstractmethod
    async def active_calls(self) -> list[ActiveCall]:
        """Every active call, by start time."""

    @abc.abstractmethod
    async def placements(self) -> list[Placement]:
        """The placement log, by time."""
