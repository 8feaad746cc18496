"""What the store tests share: records to write, and a database of either backend with
raw access beside the store (to set up service data and check what was committed)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg

from twinline.store import ActiveCall, Cdr, SqliteStore, Store
from twinline.store.backend import Backend
from twinline.store.postgres import PgBackend, PgSettings, PostgresStore
from twinline.store.sql import Dialect, render
from twinline.store.sqlite import SqliteBackend

T = TypeVar("T")

DEBIT = "UPDATE test_purses SET balance = balance - ? WHERE id = ?"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def call(i: int, *, epoch: int = 1) -> ActiveCall:
    return ActiveCall(
        call_id=f"call-{i}",
        caller="alice",
        callee="5551000",
        service="prepaid",
        primary_server="as1",
        standby_server="as2",
        epoch=epoch,
        state="setup",
        started_at=1000.0 + i,
        updated_at=1000.0 + i,
    )


def cdr(call_id: str, *, cause: str = "caller hung up") -> Cdr:
    return Cdr(
        call_id=call_id,
        caller="alice",
        callee="5551000",
        service="prepaid",
        started_at=1000.0,
        answered_at=1001.5,
        ended_at=1060.0,
        disposition="answered",
        status=200,
        cause=cause,
        primaries=("as1", "as2"),
        standby_servers=("as2", "as3"),
        epoch=2,
    )


def cdr_fields(call_id: str) -> dict[str, object]:
    c = cdr(call_id)
    return {f: getattr(c, f) for f in c.__struct_fields__}


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll the database (no event to wait for: the commit happens in another thread)."""
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not so within 3 s")


class PgDatabaseLike(Protocol):
    url: str
    password: str


class Db:
    """One database of one backend: stores on it, and raw SQL (`?` placeholders) beside."""

    dialect: Dialect

    def store(self, **options: Any) -> Store:
        raise NotImplementedError

    def backend(self) -> Backend:
        """What the store and `twinline db` use: write sessions, migrations."""
        raise NotImplementedError

    def toml(self, tmp_path: Path) -> str:
        """A [database] section that reaches this database (a password in a file)."""
        raise NotImplementedError

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        raise NotImplementedError

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def scalar(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        return self.rows(sql, params)[0][0]

    def create_accounts(self, balance: int = 1000) -> None:
        """A table of balances the tests debit (not the services' accounts)."""
        self.execute(
            "CREATE TABLE test_purses (id TEXT PRIMARY KEY, balance BIGINT NOT NULL"
            " CHECK (balance >= 0))"
        )
        self.execute("INSERT INTO test_purses VALUES ('acct-1', ?)", (balance,))

    def balance(self) -> int:
        value: int = self.scalar("SELECT balance FROM test_purses WHERE id = 'acct-1'")
        return value


class SqliteDb(Db):
    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return "sqlite"

    def store(self, **options: Any) -> Store:
        return SqliteStore(self.path, **options)

    def backend(self) -> Backend:
        return SqliteBackend(self.path, busy_timeout=5.0)

    def toml(self, tmp_path: Path) -> str:
        return f'[database]\nurl = "sqlite:///{self.path}"\n'

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5, isolation_level=None)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        conn = self._connect()
        try:
            conn.execute(render(sql, "sqlite"), params)
        finally:
            conn.close()

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        conn = self._connect()
        try:
            return conn.execute(render(sql, "sqlite"), params).fetchall()
        finally:
            conn.close()


class PgDb(Db):
    dialect = "postgresql"

    def __init__(self, database: PgDatabaseLike) -> None:
        self.url = database.url
        self.password = database.password

    def __repr__(self) -> str:
        return "postgresql"

    def settings(self, **options: Any) -> PgSettings:
        return PgSettings(self.url, password=self.password, **options)

    def store(self, **options: Any) -> Store:
        pg = {k: options.pop(k) for k in ("pool_size", "statement_timeout") if k in options}
        return PostgresStore(self.settings(**pg), **options)

    def backend(self) -> Backend:
        return PgBackend(self.settings())

    def toml(self, tmp_path: Path) -> str:
        secret = tmp_path / "db-password"
        secret.write_text(self.password + "\n")
        return f'[database]\nurl = "{self.url}"\npassword_file = "{secret}"\n'

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url, password=self.password, autocommit=True)

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> None:
        with self._connect() as conn:
            conn.execute(render(sql, "postgresql"), params)

    def rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._connect() as conn:
            return conn.execute(render(sql, "postgresql"), params).fetchall()
