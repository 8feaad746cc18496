"""The `Store` over the shared writer: every operation once, for every backend.

A backend (SQLite, PostgreSQL) supplies a `Backend`: write sessions for the writer
thread, and reads (a function of a read-only transaction, run off the event loop). The
operations themselves, their SQL (`store.sql`) and the mapping of rows to records by
column name are here, the same for both.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TypeVar

from twinline.store import migrate, sql
from twinline.store.base import OnceOutcome, Row, Store, StoreStats, Tx
from twinline.store.errors import StoreClosed, StoreError, StoreUnavailable, UnexpectedRows
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
from twinline.store.writer import Failure, Session, Write, Writer

log = logging.getLogger("twinline.store")

T = TypeVar("T")


class Backend(abc.ABC):
    """What one database engine gives the store."""

    @abc.abstractmethod
    def connect(self) -> Session:
        """A new write session (blocks: call it on the writer thread or another thread)."""

    def migrate(self, session: Session, *, upto: int | None = None) -> migrate.Migrated:
        """Bring the schema up to date (or to version `upto`) on `session`."""
        return migrate.migrate(session, upto=upto)

    @abc.abstractmethod
    async def open_reads(self) -> None:
        """Get ready to serve reads (the writer is running)."""

    @abc.abstractmethod
    async def read(self, fn: Callable[[Tx], T]) -> T:
        """Run `fn` in a read-only transaction off the event loop."""

    @abc.abstractmethod
    async def close_reads(self) -> None:
        """Release what reads hold; idempotent."""


class WriterStore(Store):
    """A store whose writes go through one `Writer` and whose reads through its backend."""

    def __init__(self, backend: Backend, *, name: str, flush_interval: float, batch_size: int):
        if flush_interval <= 0 or batch_size < 1:
            raise ValueError("flush_interval > 0 and batch_size >= 1 please")
        self._backend = backend
        self._name = name
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._writer: Writer | None = None
        self._last_stats = StoreStats()

    # --- lifecycle -----------------------------------------------------------------------

    def _connect_and_migrate(self) -> Session:
        session = self._backend.connect()
        try:
            done = self._backend.migrate(session)
        except Exception as e:
            session.close()
            failure = session.failure(e)
            if isinstance(e, StoreError) or failure is None:
                raise
            error = StoreUnavailable if failure is Failure.LOST else StoreError
            raise error(f"cannot migrate the database {self._name}: {e}") from e
        except BaseException:
            session.close()
            raise
        if done.found != done.now:
            log.info(
                "store: %s: schema migrated from version %d to %d", self._name, done.found, done.now
            )
        return session

    async def open(self) -> None:
        if self._writer is not None:
            raise StoreError(f"{self!r} is already open")
        writer = Writer(
            self._connect_and_migrate,
            name=self._name,
            flush_interval=self.flush_interval,
            batch_size=self.batch_size,
        )
        writer.start()
        await asyncio.wrap_future(writer.started)
        try:
            await self._backend.open_reads()
        except BaseException:
            await asyncio.wrap_future(writer.barrier(stop=True))
            raise
        self._writer = writer

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            # Stops once everything queued before is committed and the connection closed.
            await asyncio.wrap_future(writer.barrier(stop=True))
            self._last_stats = writer.stats
            await self._backend.close_reads()

    @property
    def stats(self) -> StoreStats:
        return self._writer.stats if self._writer is not None else self._last_stats

    def _open_writer(self) -> Writer:
        writer = self._writer
        if writer is None:
            raise StoreClosed(f"{self!r} is not open")
        if not writer.running:
            raise StoreClosed(f"{self!r}: the writer stopped after an error (see the log)")
        return writer

    # --- batched writes ------------------------------------------------------------------

    def _enqueue(self, sql_: str, params: tuple[SqlValue, ...], what: str) -> None:
        self._open_writer().put(Write(sql_, params, what))

    def call_started(self, call: ActiveCall) -> None:
        self._enqueue(
            sql.CALL_STARTED,
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
            sql.CALL_UPDATED,
            (primary, standby, epoch, state, now, call_id, epoch),
            f"call updated {call_id}",
        )

    def call_ended(self, call_id: str) -> None:
        self._enqueue(sql.CALL_ENDED, (call_id,), f"call ended {call_id}")

    def placement(self, call_id: str, server: str, role: Role, epoch: int, at: float) -> None:
        self._enqueue(
            sql.PLACEMENT,
            (call_id, server, role, epoch, at),
            f"placement {call_id} {role} {server}",
        )

    def write_cdr(self, cdr: Cdr) -> None:
        what = f"cdr {cdr.call_id}"
        self._enqueue(
            sql.WRITE_CDR,
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
                None if cdr.cost is None else _units(cdr.cost, what),
                cdr.currency,
            ),
            what,
        )

    async def flush(self) -> None:
        await asyncio.wrap_future(self._open_writer().barrier())

    # --- immediate writes ----------------------------------------------------------------

    async def transaction(self, what: str, fn: Callable[[Tx], T]) -> T:
        return await asyncio.wrap_future(self._open_writer().submit(what, fn))

    async def claim(self, key: str, call_id: str, kind: str, *, result: str | None = None) -> bool:
        params = (key, call_id, kind, time.time(), result)
        return await self.transaction(f"claim {key}", lambda tx: tx.execute(sql.CLAIM, params) == 1)

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
        prepared = tuple((sql_, tuple(args)) for sql_, args in statements)

        def once(tx: Tx) -> bool:
            if tx.execute(sql.CLAIM, params) != 1:
                return False
            for i, (sql_, args) in enumerate(prepared):
                try:
                    tx.execute(sql_, args)
                except Exception as e:
                    raise StoreError(f"side effect {key}: statement {i} failed: {e}") from e
            return True

        return await self.transaction(f"side effect {key}", once)

    async def once_with(
        self, key: str, call_id: str, kind: str, effect: Callable[[Tx], str | None]
    ) -> OnceOutcome:
        params = (key, call_id, kind, time.time(), None)

        def once(tx: Tx) -> OnceOutcome:
            claiming = _Claiming(tx)
            try:
                claiming.claim(params)
                result = effect(claiming)
                claiming.confirm()
            except Exception:
                if not claiming.lost:
                    raise
            if claiming.lost:  # applied before, or by a transaction that committed first
                row = tx.fetchone(sql.SIDE_EFFECT_RESULT, (key,))
                return OnceOutcome(applied=False, result=_opt_str(row, "result"))
            if result is not None:
                tx.send(sql.STORE_RESULT, (result, key), expect=1)
            return OnceOutcome(applied=True, result=result)

        return await self.transaction(f"side effect {key}", once)

    async def save_checkpoint(self, call_id: str, epoch: int, version: int, data: bytes) -> bool:
        params = (call_id, epoch, version, data, time.time())
        return await self.transaction(
            f"checkpoint {call_id}", lambda tx: tx.execute(sql.SAVE_CHECKPOINT, params) == 1
        )

    async def drop_checkpoint(self, call_id: str, *, epoch: int | None = None) -> None:
        def drop(tx: Tx) -> None:
            if epoch is None:
                tx.execute(sql.DROP_CHECKPOINT, (call_id,))
            else:
                tx.execute(sql.DROP_CHECKPOINT_UPTO, (call_id, epoch))

        await self.transaction(f"drop checkpoint {call_id}", drop)

    # --- queries -------------------------------------------------------------------------

    async def read(self, fn: Callable[[Tx], T]) -> T:
        if self._writer is None:
            raise StoreClosed(f"{self!r} is not open")
        return await self._backend.read(fn)

    async def _rows(self, query: str, params: tuple[SqlValue, ...] = ()) -> list[Row]:
        return await self.read(lambda tx: tx.fetchall(query, params))

    async def load_checkpoint(self, call_id: str) -> Checkpoint | None:
        rows = await self._rows(sql.SELECT_CHECKPOINT, (call_id,))
        if not rows:
            return None
        r = rows[0]
        data = r["data"]
        return Checkpoint(
            call_id=_str(r, "call_id"),
            epoch=_int(r, "epoch"),
            version=_int(r, "version"),
            data=bytes(data) if isinstance(data, bytes | memoryview) else b"",
            saved_at=_float(r, "saved_at"),
        )

    async def side_effect(self, key: str) -> SideEffect | None:
        rows = await self._rows(sql.SELECT_SIDE_EFFECT, (key,))
        if not rows:
            return None
        r = rows[0]
        return SideEffect(
            key=_str(r, "key"),
            call_id=_str(r, "call_id"),
            kind=_str(r, "kind"),
            applied_at=_float(r, "applied_at"),
            result=_opt_str(r, "result"),
        )

    async def cdrs(self) -> list[Cdr]:
        return [
            Cdr(
                call_id=_str(r, "call_id"),
                caller=_str(r, "caller"),
                callee=_str(r, "callee"),
                service=_str(r, "service"),
                started_at=_float(r, "started_at"),
                answered_at=_opt_float(r, "answered_at"),
                ended_at=_float(r, "ended_at"),
                disposition=_str(r, "disposition"),
                status=_int(r, "status"),
                cause=_str(r, "cause"),
                primaries=_split(_str(r, "primaries")),
                standby_servers=_split(_str(r, "standby_servers")),
                epoch=_int(r, "epoch"),
                cost=_opt_money(r, "cost"),
                currency=_opt_str(r, "currency"),
            )
            for r in await self._rows(sql.SELECT_CDRS)
        ]

    async def active_calls(self) -> list[ActiveCall]:
        return [
            ActiveCall(
                call_id=_str(r, "call_id"),
                caller=_str(r, "caller"),
                callee=_str(r, "callee"),
                service=_str(r, "service"),
                primary_server=_str(r, "primary_server"),
                standby_server=_opt_str(r, "standby_server"),
                epoch=_int(r, "epoch"),
                state=_str(r, "state"),
                started_at=_float(r, "started_at"),
                updated_at=_float(r, "updated_at"),
            )
            for r in await self._rows(sql.SELECT_ACTIVE_CALLS)
        ]

    async def placements(self) -> list[Placement]:
        return [
            Placement(
                call_id=_str(r, "call_id"),
                server=_str(r, "server"),
                role=_role(_str(r, "role")),
                epoch=_int(r, "epoch"),
                at=_float(r, "at"),
            )
            for r in await self._rows(sql.SELECT_PLACEMENTS)
        ]


# --- rows to records, by column name ----------------------------------------------------


class _Claiming:
    """The transaction as an effect of `once_with` sees it while the key's claim is in
    flight. The claim goes out with the effect's first statement if that one is a
    SELECT (one round trip less on PostgreSQL); anything else waits until the claim is
    confirmed, so that nothing the effect writes ever runs after a lost claim (a key
    found taken: applied before, or by a transaction that committed first). Once lost,
    every statement is refused, even if the effect caught the error."""

    __slots__ = ("_tx", "confirmed", "lost")

    def __init__(self, tx: Tx) -> None:
        self._tx = tx
        self.confirmed = False
        self.lost = False

    def claim(self, params: tuple[SqlValue, ...]) -> None:
        self._checked(lambda: self._tx.send(sql.CLAIM, params, expect=1))  # SQLite: at once

    def confirm(self) -> None:
        if not self.confirmed:
            self._checked(self._tx.flush)
            self.confirmed = True

    def _checked(self, fn: Callable[[], T]) -> T:
        if self.lost:
            raise StoreError("the effect's key was found applied: nothing more runs")
        try:
            return fn()
        except UnexpectedRows as e:
            if e.sql == sql.CLAIM:
                self.lost = True
            raise

    def _wait(self, sql_: str, fn: Callable[[], T]) -> T:
        if sql_.lstrip()[:6].upper() != "SELECT":
            self.confirm()
        out = self._checked(fn)
        self.confirmed = True
        return out

    def execute(self, sql_: str, params: Sequence[SqlValue] = ()) -> int:
        return self._wait(sql_, lambda: self._tx.execute(sql_, params))

    def fetchone(self, sql_: str, params: Sequence[SqlValue] = ()) -> Row | None:
        return self._wait(sql_, lambda: self._tx.fetchone(sql_, params))

    def fetchall(self, sql_: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        return self._wait(sql_, lambda: self._tx.fetchall(sql_, params))

    def flush(self) -> None:
        if self.confirmed:
            self._checked(self._tx.flush)
        else:
            self.confirm()  # flushes everything sent so far

    def send(
        self, sql_: str, params: Sequence[SqlValue] = (), *, expect: int | None = None
    ) -> None:
        self.confirm()
        self._tx.send(sql_, params, expect=expect)


def _str(row: Row, name: str) -> str:
    value = row[name]
    if not isinstance(value, str):
        raise StoreError(f"column {name}: expected text, found {value!r}")
    return value


def _opt_str(row: Row | None, name: str) -> str | None:
    return None if row is None or row[name] is None else _str(row, name)


def _int(row: Row, name: str) -> int:
    value = row[name]
    if not isinstance(value, int):
        raise StoreError(f"column {name}: expected an integer, found {value!r}")
    return value


def _float(row: Row, name: str) -> float:
    value = row[name]
    if not isinstance(value, int | float):
        raise StoreError(f"column {name}: expected a number, found {value!r}")
    return float(value)


def _opt_float(row: Row, name: str) -> float | None:
    return None if row[name] is None else _float(row, name)


# Money in the database is BIGINT millionths of the currency unit (docs/services.md).
MONEY_DECIMALS = 6


def _units(amount: Decimal, what: str) -> int:
    units = amount.scaleb(MONEY_DECIMALS)
    if not amount.is_finite() or units != units.to_integral_value():
        raise ValueError(f"{what}: the amount {amount} has more than {MONEY_DECIMALS} decimals")
    return int(units)


def _opt_money(row: Row, name: str) -> Decimal | None:
    return None if row[name] is None else Decimal(_int(row, name)).scaleb(-MONEY_DECIMALS)


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
