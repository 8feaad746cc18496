"""Which way to drive psycopg: the store's design (a synchronous connection on the shared
writer thread, group commit) against async psycopg on the event loop, on one workload.

    python -m bench.pg_driver            # starts a PostgreSQL of its own (tests/pgserver.py)

The workload is what an application server asks of the database: bursts of exactly-once
debits (each a key insert, a row-locked read and an update of one of 50 accounts) from
many calls at once, and batches of CDRs. Printed per design: debits per second, CDRs per
second, and the event loop's worst delay while the work runs (what SIP messages would
wait). Async designs: one transaction per debit on a pool of 4 connections (how async
code is usually written), and one connection with the same group commit as the store.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from tests.pgserver import PgServer

from twinline.store import Tx
from twinline.store.postgres import PgSettings, PostgresStore
from twinline.store.records import Cdr
from twinline.store.sql import CLAIM, WRITE_CDR, render

ACCOUNTS = 50
DEBITS = 3000
CONCURRENCY = 200  # calls asking at once
CDRS = 20_000

SELECT = "SELECT balance FROM bench_accounts WHERE id = ? FOR UPDATE"
UPDATE = "UPDATE bench_accounts SET balance = ? WHERE id = ?"


def cdr(i: int) -> tuple[Any, ...]:
    c = Cdr(
        call_id=f"cdr-{i}", caller="alice", callee="5551000", service="basic",
        started_at=1.0, answered_at=2.0, ended_at=3.0, disposition="answered",
        status=200, cause="caller-bye", primaries=("as1",), standby_servers=("as2",), epoch=1,
    )  # fmt: skip
    return (
        c.call_id, c.caller, c.callee, c.service, c.started_at, c.answered_at, c.ended_at,
        c.disposition, c.status, c.cause, "as1", "as2", c.epoch, None, None,
    )  # fmt: skip


async def loop_lag(stop: asyncio.Event) -> float:
    """The worst delay of a 1 ms timer while the work runs, in ms."""
    worst = 0.0
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t - 0.001)
    return worst * 1000


async def measure(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    stop = asyncio.Event()
    lag = asyncio.ensure_future(loop_lag(stop))
    t = time.perf_counter()
    await work()
    elapsed = time.perf_counter() - t
    stop.set()
    return elapsed, await lag


def reset(server: PgServer, db: str) -> None:
    with server.connect(db) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_accounts")
        conn.execute("CREATE TABLE bench_accounts (id TEXT PRIMARY KEY, balance BIGINT NOT NULL)")
        for a in range(ACCOUNTS):
            conn.execute("INSERT INTO bench_accounts VALUES (%s, 1000000000)", (f"a{a}",))
        conn.execute("TRUNCATE side_effects, cdrs")


def debit_effect(account: str) -> Callable[[Tx], str]:
    def effect(tx: Tx) -> str:
        row = tx.fetchone(SELECT, (account,))
        assert row is not None
        tx.execute(UPDATE, (int(str(row["balance"])) - 7, account))
        return "7"

    return effect


async def in_waves(n: int, one: Callable[[int], Awaitable[Any]]) -> None:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def limited(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(limited(i) for i in range(n)))


# --- the store's design ---------------------------------------------------------------------


async def store_design(server: PgServer, db: str) -> dict[str, float]:
    settings = PgSettings(server.url(db), password=server.password)
    async with PostgresStore(settings) as store:
        reset(server, db)

        async def debits() -> None:
            await in_waves(
                DEBITS,
                lambda i: store.once_with(
                    f"k{i}", f"c{i}", "debit", debit_effect(f"a{i % ACCOUNTS}")
                ),
            )

        async def cdrs() -> None:
            for i in range(CDRS):
                store._enqueue(WRITE_CDR, cdr(i), "cdr")
                if i % 500 == 0:
                    await asyncio.sleep(0)
            await store.flush()

        return await run_both(debits, cdrs)


# --- async psycopg ----------------------------------------------------------------------------


async def async_per_transaction(server: PgServer, db: str) -> dict[str, float]:
    """One transaction per debit on a pool: the usual async shape."""
    pool = AsyncConnectionPool(
        server.url(db), kwargs={"password": server.password}, min_size=4, max_size=4, open=False
    )
    await pool.open(wait=True)
    try:
        reset(server, db)
        claim, select, update = (render(s, "postgresql") for s in (CLAIM, SELECT, UPDATE))

        async def one(i: int) -> None:
            account = f"a{i % ACCOUNTS}"
            async with pool.connection() as conn, conn.transaction():
                cur = await conn.execute(claim, (f"k{i}", f"c{i}", "debit", time.time(), None))
                if cur.rowcount == 1:
                    row = await (await conn.execute(select, (account,))).fetchone()
                    assert row is not None
                    await conn.execute(update, (row[0] - 7, account))

        async def debits() -> None:
            await in_waves(DEBITS, one)

        async def cdrs() -> None:
            async with pool.connection() as conn:
                sql = render(WRITE_CDR, "postgresql")
                for start in range(0, CDRS, 500):
                    async with conn.transaction(), conn.cursor() as cur:
                        await cur.executemany(sql, [cdr(i) for i in range(start, start + 500)])

        return await run_both(debits, cdrs)
    finally:
        await pool.close()


async def async_group_commit(server: PgServer, db: str) -> dict[str, float]:
    """One async connection and the store's group commit: the debits queued together
    share a transaction, each in a savepoint."""
    conn = await psycopg.AsyncConnection.connect(
        server.url(db), password=server.password, autocommit=True
    )
    try:
        reset(server, db)
        claim, select, update = (render(s, "postgresql") for s in (CLAIM, SELECT, UPDATE))
        queue: asyncio.Queue[tuple[int, asyncio.Future[None]]] = asyncio.Queue()

        async def writer() -> None:
            while True:
                group = [await queue.get()]
                while not queue.empty() and len(group) < 500:
                    group.append(queue.get_nowait())
                async with conn.transaction():
                    for i, _ in group:
                        account = f"a{i % ACCOUNTS}"
                        async with conn.transaction():  # a savepoint
                            cur = await conn.execute(
                                claim, (f"k{i}", f"c{i}", "debit", time.time(), None)
                            )
                            if cur.rowcount == 1:
                                row = await (await conn.execute(select, (account,))).fetchone()
                                assert row is not None
                                await conn.execute(update, (row[0] - 7, account))
                for _, done in group:
                    done.set_result(None)

        task = asyncio.ensure_future(writer())

        async def one(i: int) -> None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            queue.put_nowait((i, done))
            await done

        async def debits() -> None:
            await in_waves(DEBITS, one)

        async def cdrs() -> None:
            pass  # the same executemany as above: measured once

        try:
            return await run_both(debits, cdrs)
        finally:
            task.cancel()
    finally:
        await conn.close()


async def run_both(
    debits: Callable[[], Awaitable[None]], cdrs: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    d_time, d_lag = await measure(debits)
    c_time, c_lag = await measure(cdrs)
    return {
        "debits_per_s": DEBITS / d_time,
        "debit_lag_ms": d_lag,
        "cdrs_per_s": CDRS / c_time if c_time > 0.001 else float("nan"),
        "cdr_lag_ms": c_lag,
    }


def main() -> None:
    server = PgServer()
    server.start()
    try:
        db = server.create_database("bench")
        from twinline.store.admin import migrate_database  # noqa: PLC0415

        os.environ["TWINLINE_DATABASE_PASSWORD"] = server.password
        migrate_database(server.url(db))
        designs = {
            "sync psycopg, writer thread, group commit (the store)": store_design,
            "async psycopg, pool of 4, a transaction per debit": async_per_transaction,
            "async psycopg, one connection, group commit": async_group_commit,
        }
        for name, design in designs.items():
            runs = [asyncio.run(design(server, db)) for _ in range(3)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{name}: {med['debits_per_s']:.0f} debits/s"
                f" (loop lag {med['debit_lag_ms']:.1f} ms),"
                f" {med['cdrs_per_s']:.0f} CDRs/s (loop lag {med['cdr_lag_ms']:.1f} ms)"
            )
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
