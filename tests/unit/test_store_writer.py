"""The shared writer's group commit, with a session that records what it is asked to do:
operations queued while a transaction waits for the database's write lock join it, and
nothing joins a transaction ahead of a write queued before it."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from twinline.store.base import Tx
from twinline.store.records import SqlValue
from twinline.store.writer import Failure, Session, Write, Writer


class _Tx:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def execute(self, sql: str, params: Any = ()) -> int:
        if not sql.startswith(("SAVEPOINT", "RELEASE", "ROLLBACK TO")):
            self.log.append(sql)
        return 1

    def fetchone(self, sql: str, params: Any = ()) -> None:
        return None

    def fetchall(self, sql: str, params: Any = ()) -> list[dict[str, SqlValue]]:
        return []

    def send(self, sql: str, params: Any = (), *, expect: int | None = None) -> None:
        self.execute(sql, params)

    def flush(self) -> None:
        return


class LockedSession(Session):
    """`begin` waits until `unlock` is set, as a writer waits for another process's lock."""

    dialect = "sqlite"

    def __init__(self) -> None:
        self.log: list[str] = []
        self.waiting = threading.Event()
        self.unlock = threading.Event()
        self._tx = _Tx(self.log)

    @property
    def tx(self) -> Tx:
        return self._tx

    def begin(self) -> None:
        self.waiting.set()
        assert self.unlock.wait(10)
        self.log.append("BEGIN")

    def commit(self) -> None:
        self.log.append("COMMIT")

    def rollback(self) -> None:
        self.log.append("ROLLBACK")

    def failure(self, error: BaseException) -> Failure | None:
        return None

    def close(self) -> None:
        pass


def op(name: str) -> Any:
    def fn(tx: Tx) -> str:
        tx.execute(name)
        return name

    return fn


def waiting_writer() -> tuple[LockedSession, Writer, Future[str]]:
    """A writer whose first operation, `a`, waits for the lock (`session.unlock`)."""
    session = LockedSession()
    writer = Writer(lambda: session, name="test", flush_interval=60, batch_size=100)
    writer.start()
    writer.started.result(5)
    first = writer.submit("a", op("a"))
    assert session.waiting.wait(5)
    return session, writer, first


def test_operations_queued_while_the_lock_is_awaited_join_the_transaction() -> None:
    session, writer, first = waiting_writer()
    later = [writer.submit(name, op(name)) for name in ("b", "c")]
    session.unlock.set()
    assert [f.result(5) for f in (first, *later)] == ["a", "b", "c"]
    writer.barrier(stop=True).result(5)
    assert session.log == ["BEGIN", "a", "b", "c", "COMMIT"]


def test_an_operation_queued_after_a_write_does_not_overtake_it() -> None:
    session, writer, first = waiting_writer()
    writer.put(Write("INSERT w", (), "w"))
    after = writer.submit("b", op("b"))
    session.unlock.set()
    assert (first.result(5), after.result(5)) == ("a", "b")
    writer.barrier(stop=True).result(5)
    assert session.log == [
        *("BEGIN", "a", "COMMIT"),
        *("BEGIN", "INSERT w", "COMMIT"),
        *("BEGIN", "b", "COMMIT"),
    ]
