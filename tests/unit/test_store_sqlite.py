"""SqliteStore: schema, batching, exactly-once writes, checkpoints, several processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from twinline.store import (
    ActiveCall,
    Cdr,
    SchemaTooNew,
    SqliteStore,
    StoreBusy,
    StoreClosed,
    StoreError,
    Tx,
    open_store,
    sqlite_path,
)
from twinline.store.schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")
SRC = Path(__file__).resolve().parents[2] / "src"


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


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=5, isolation_level=None)


def create_accounts(path: Path, balance: int = 1000) -> None:
    """A table of balances the tests debit (not the services' accounts)."""
    with raw(path) as conn:
        conn.execute(
            "CREATE TABLE test_purses (id TEXT PRIMARY KEY, balance BIGINT NOT NULL"
            " CHECK (balance >= 0))"
        )
        conn.execute("INSERT INTO test_purses VALUES ('acct-1', ?)", (balance,))


def balance(path: Path) -> int:
    with raw(path) as conn:
        value: int = conn.execute("SELECT balance FROM test_purses WHERE id = 'acct-1'").fetchone()[
            0
        ]
        return value


DEBIT = "UPDATE test_purses SET balance = balance - ? WHERE id = ?"


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll the database (no event to wait for: the commit happens in another thread)."""
    for _ in range(300):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not so within 3 s")


# --- schema ---------------------------------------------------------------------------------


def test_open_creates_the_schema_in_wal_mode_and_reopens_it(tmp_path: Path) -> None:
    path = tmp_path / "twinline.db"

    async def first() -> None:
        async with SqliteStore(path) as store:
            store.write_cdr(cdr("call-1"))

    async def second() -> list[Cdr]:
        async with SqliteStore(path) as store:
            return await store.cdrs()

    run(first())
    assert run(second()) == [cdr("call-1")]
    with raw(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert {"active_calls", "cdrs", "side_effects", "checkpoints", "call_placements"} <= tables
    # Each migration once: reopening applied nothing again.
    assert versions == [(m.version,) for m in MIGRATIONS]
    assert versions[-1] == (SCHEMA_VERSION,)
    assert mode == "wal"


def test_a_database_from_a_newer_twinline_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twinline.db"

    async def create() -> None:
        async with SqliteStore(path):
            pass

    run(create())
    with raw(path) as conn:
        conn.execute(
            "INSERT INTO schema_version VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 1,)
        )
    store = SqliteStore(path)
    with pytest.raises(SchemaTooNew, match="newer than this twinline supports") as err:
        run(store.open())
    assert err.value.found == SCHEMA_VERSION + 1
    with pytest.raises(StoreClosed):
        store.call_ended("call-1")


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the database"):
        run(SqliteStore(tmp_path / "nowhere" / "twinline.db").open())


# --- batched writes -------------------------------------------------------------------------


def test_batched_writes_are_visible_after_flush(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "t.db", flush_interval=60) as store:
            store.call_started(call(1))
            store.call_started(call(2))
            store.placement("call-1", "as1", "primary", 1, 1001.0)
            store.placement("call-1", "as2", "standby", 1, 1001.0)
            store.call_updated("call-1", "as2", "as3", 2, "answered", at=1010.0)
            store.placement("call-1", "as2", "primary", 2, 1010.0)
            store.call_updated("call-1", "as1", "as2", 1, "late", at=1011.0)  # older epoch
            store.call_ended("call-2")
            assert await store.active_calls() == []  # nothing committed yet
            await store.flush()

            [active] = await store.active_calls()
            assert (active.call_id, active.primary_server, active.standby_server) == (
                "call-1",
                "as2",
                "as3",
            )
            assert (active.epoch, active.state, active.updated_at) == (2, "answered", 1010.0)
            placements = await store.placements()
            assert [(p.server, p.role, p.epoch) for p in placements] == [
                ("as1", "primary", 1),
                ("as2", "standby", 1),
                ("as2", "primary", 2),
            ]
            stats = store.stats
            assert stats.writes == 8
            assert stats.batches == 1
            assert stats.errors == stats.dropped == 0

    run(main())


def test_a_batch_commits_by_itself_after_the_interval_or_at_batch_size(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "a.db", flush_interval=0.02) as store:
            store.call_started(call(1))

            async def committed() -> bool:
                return len(await store.active_calls()) == 1

            await eventually(committed)

        async with SqliteStore(tmp_path / "b.db", flush_interval=60, batch_size=10) as store:
            for i in range(25):
                store.call_started(call(i))

            async def two_batches() -> bool:
                return len(await store.active_calls()) == 20

            await eventually(two_batches)
            assert store.stats.batches == 2

    run(main())


def test_an_immediate_write_commits_the_batched_writes_before_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "t.db", flush_interval=60) as store:
            store.call_started(call(1))
            assert await store.save_checkpoint("call-1", 1, 1, b"state")
            assert [c.call_id for c in await store.active_calls()] == ["call-1"]

    run(main())


def test_close_commits_what_is_pending(tmp_path: Path) -> None:
    path = tmp_path / "t.db"

    async def write() -> None:
        store = SqliteStore(path, flush_interval=60)
        await store.open()
        for i in range(1200):
            store.call_started(call(i))
        await store.close()
        assert store.stats.writes == 1200
        await store.close()  # idempotent
        with pytest.raises(StoreClosed):
            store.call_started(call(9999))
        with pytest.raises(StoreClosed):
            await store.cdrs()

    async def read() -> int:
        async with SqliteStore(path) as store:
            return len(await store.active_calls())

    run(write())
    assert run(read()) == 1200


def test_enqueueing_never_waits_for_the_database(tmp_path: Path) -> None:
    """While the writer is stuck waiting for another process's lock, the call path still
    enqueues and the event loop still runs; the writes land once the lock is released."""
    path = tmp_path / "t.db"

    async def main() -> None:
        async with SqliteStore(path, busy_timeout=30) as store:
            blocker = raw(path)
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            try:
                store.call_started(call(0))
                flushing = asyncio.ensure_future(store.flush())
                ticks = 0
                while store.stats.pending > 0 or ticks < 5:  # the writer took the batch
                    await asyncio.sleep(0.01)
                    ticks += 1
                assert not flushing.done()
                for i in range(1, 2001):
                    store.call_started(call(i))
                await asyncio.sleep(0.01)  # the loop is not blocked either
                assert not flushing.done()
                assert await store.active_calls() == []  # readers are not blocked by the lock
            finally:
                blocker.execute("COMMIT")
                blocker.close()
            await flushing
            await store.flush()
            assert len(await store.active_calls()) == 2001
            assert store.stats.errors == 0

    run(main())


def test_a_batch_locked_out_twice_is_dropped_logged_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.db"

    async def main() -> None:
        async with SqliteStore(path, busy_timeout=0.05) as store:
            blocker = raw(path)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                for i in range(3):
                    store.call_started(call(i))
                await store.flush()  # returns: the failure is logged, not raised
                with pytest.raises(StoreBusy, match="locked"):
                    await store.claim("k", "call-1", "debit")
            finally:
                blocker.execute("COMMIT")
                blocker.close()
            stats = store.stats
            assert (stats.errors, stats.dropped, stats.retries) == (1, 3, 2)
            store.call_started(call(7))  # the writer lives on
            await store.flush()
            assert [c.call_id for c in await store.active_calls()] == ["call-7"]
            assert await store.claim("k", "call-1", "debit")

    with caplog.at_level(logging.ERROR, logger="twinline.store"):
        run(main())
    assert "dropped a batch of 3 writes (call started call-0, call started call-1" in caplog.text


def test_a_bad_write_costs_only_itself(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "t.db") as store:
            store.placement("call-1", "as1", "primary", 1, 1.0)
            store.placement("call-1", "as2", "sideways", 1, 1.0)  # type: ignore[arg-type]
            store.placement("call-1", "as2", "standby", 1, 1.0)
            await store.flush()
            assert [p.role for p in await store.placements()] == ["primary", "standby"]
            stats = store.stats
            assert (stats.writes, stats.errors, stats.dropped) == (2, 1, 1)

    with caplog.at_level(logging.ERROR, logger="twinline.store"):
        run(main())
    assert "dropped a write (placement call-1 sideways as2)" in caplog.text
    assert "CHECK constraint failed" in caplog.text


def test_a_server_name_with_a_comma_is_refused_on_the_spot(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "t.db") as store:
            with pytest.raises(ValueError, match="contains a comma"):
                store.write_cdr(Cdr(**{**cdr_fields("call-1"), "primaries": ("as1,as2",)}))

    run(main())


def cdr_fields(call_id: str) -> dict[str, object]:
    c = cdr(call_id)
    return {f: getattr(c, f) for f in c.__struct_fields__}


# --- exactly once ---------------------------------------------------------------------------


def test_a_second_cdr_for_a_call_is_ignored(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "t.db") as store:
            store.write_cdr(cdr("call-1", cause="first"))
            store.write_cdr(cdr("call-1", cause="second"))
            await store.flush()
            store.write_cdr(cdr("call-1", cause="third"))
            await store.flush()
            assert [c.cause for c in await store.cdrs()] == ["first"]
            assert store.stats.rows == 1
            unanswered = Cdr(**{**cdr_fields("call-2"), "answered_at": None, "primaries": ()})
            store.write_cdr(unanswered)
            await store.flush()
            assert (await store.cdrs())[-1] == unanswered

    run(main())


def test_cdrs_written_by_two_stores_on_one_file_land_once_each(tmp_path: Path) -> None:
    path = tmp_path / "t.db"

    async def main() -> None:
        async with SqliteStore(path) as a, SqliteStore(path) as b:

            async def write(store: SqliteStore, cause: str) -> None:
                for i in range(200):
                    store.write_cdr(cdr(f"call-{i}", cause=cause))
                    if i % 50 == 0:
                        await asyncio.sleep(0)
                await store.flush()

            await asyncio.gather(write(a, "a"), write(b, "b"))
            cdrs = await a.cdrs()
            assert sorted(c.call_id for c in cdrs) == sorted(f"call-{i}" for i in range(200))
            assert a.stats.rows + b.stats.rows == 200
            assert a.stats.errors == b.stats.errors == 0

    run(main())


def test_once_debits_exactly_once_under_concurrency_from_two_stores(tmp_path: Path) -> None:
    path = tmp_path / "t.db"

    async def main() -> None:
        async with SqliteStore(path) as a, SqliteStore(path) as b:
            create_accounts(path, 1000)
            attempts = [
                store.once("call-1/debit/1", "call-1", "debit", [(DEBIT, (30, "acct-1"))])
                for _ in range(50)
                for store in (a, b)
            ]
            applied = await asyncio.gather(*attempts)
            assert applied.count(True) == 1
            assert balance(path) == 970
            # Another step of the same call is another key: applied, once.
            assert await b.once("call-1/debit/2", "call-1", "debit", [(DEBIT, (5, "acct-1"))])
            assert not await a.once("call-1/debit/2", "call-1", "debit", [(DEBIT, (5, "acct-1"))])
            assert balance(path) == 965

    run(main())


def test_a_failing_side_effect_leaves_no_key_behind(tmp_path: Path) -> None:
    path = tmp_path / "t.db"

    async def main() -> None:
        async with SqliteStore(path) as store:
            create_accounts(path, 10)
            overdraw = [(DEBIT, (11, "acct-1"))]
            with pytest.raises(StoreError, match=r"call-1/debit/1: statement 0 failed: CHECK"):
                await store.once("call-1/debit/1", "call-1", "debit", overdraw)
            assert await store.side_effect("call-1/debit/1") is None
            assert balance(path) == 10
            debit = [(DEBIT, (4, "acct-1")), (DEBIT, (6, "acct-1"))]
            assert await store.once("call-1/debit/1", "call-1", "debit", debit, result="0")
            assert balance(path) == 0

    run(main())


def test_once_with_decides_from_the_database_and_replays_its_first_result(
    tmp_path: Path,
) -> None:
    """An effect that reads before it writes (debit what the balance allows) runs once;
    every later application of its key gets the first result back, not a new decision."""
    path = tmp_path / "t.db"

    def debit_up_to(want: int) -> Callable[[Tx], str | None]:
        def effect(tx: Tx) -> str:
            row = tx.fetchone("SELECT balance FROM test_purses WHERE id = ?", ("acct-1",))
            assert row is not None
            take = min(want, int(str(row["balance"])))
            assert tx.execute(DEBIT, (take, "acct-1")) == 1
            return str(take)

        return effect

    async def main() -> None:
        async with SqliteStore(path) as a, SqliteStore(path) as b:
            create_accounts(path, 50)
            outcomes = await asyncio.gather(
                *(s.once_with("c1/debit", "c1", "debit", debit_up_to(80)) for s in (a, b) * 10)
            )
            assert [o.applied for o in outcomes].count(True) == 1
            assert {o.result for o in outcomes} == {"50"}
            assert balance(path) == 0
            # The same key after the balance changed: still the first result.
            with raw(path) as conn:
                conn.execute("UPDATE test_purses SET balance = 1000")
            again = await b.once_with("c1/debit", "c1", "debit", debit_up_to(80))
            assert (again.applied, again.result) == (False, "50")

    run(main())


def test_a_failing_effect_rolls_back_with_its_key_and_transactions_read_by_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.db"

    def refuse(tx: Tx) -> str:
        tx.execute(DEBIT, (1, "acct-1"))
        raise ValueError("no credit")

    async def main() -> None:
        async with SqliteStore(path) as store:
            create_accounts(path, 10)
            with pytest.raises(ValueError, match="no credit"):
                await store.once_with("c1/x", "c1", "debit", refuse)
            assert await store.side_effect("c1/x") is None
            changed = await store.transaction(
                "top-up", lambda tx: tx.execute("UPDATE test_purses SET balance = balance + 5")
            )
            assert changed == 1
            rows = await store.read(lambda tx: tx.fetchall("SELECT id, balance FROM test_purses"))
            assert rows == [{"id": "acct-1", "balance": 15}]
            assert await store.read(lambda tx: tx.fetchone("SELECT 1 AS x WHERE 0")) is None

    run(main())


def test_operations_queued_together_fail_alone(tmp_path: Path) -> None:
    # 150 debits of 1 from a balance of 100, queued at once: they commit in shared
    # transactions (group commit), and the 50 that break the CHECK fail alone, each
    # leaving no key behind, while every other one is applied and durable.
    path = tmp_path / "t.db"

    async def main() -> None:
        async with SqliteStore(path) as store:
            create_accounts(path, 100)
            outcomes = await asyncio.gather(
                *(
                    store.once(f"call-{i}/debit/1", f"call-{i}", "debit", [(DEBIT, (1, "acct-1"))])
                    for i in range(150)
                ),
                return_exceptions=True,
            )
            applied = [i for i, o in enumerate(outcomes) if o is True]
            failed = [i for i, o in enumerate(outcomes) if isinstance(o, StoreError)]
            assert (len(applied), len(failed)) == (100, 50)
            assert all("statement 0 failed: CHECK" in str(outcomes[i]) for i in failed)
            assert balance(path) == 0
            for i in (applied[0], applied[-1]):
                assert await store.side_effect(f"call-{i}/debit/1") is not None
            for i in (failed[0], failed[-1]):
                assert await store.side_effect(f"call-{i}/debit/1") is None

    run(main())


def test_claim_records_a_side_effect_once_with_its_result(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "t.db") as store:
            assert await store.side_effect("call-1/notify/1") is None
            assert await store.claim("call-1/notify/1", "call-1", "notify", result="sent")
            assert not await store.claim("call-1/notify/1", "call-1", "notify", result="again")
            effect = await store.side_effect("call-1/notify/1")
            assert effect is not None
            assert (effect.call_id, effect.kind, effect.result) == ("call-1", "notify", "sent")

    run(main())


# --- checkpoints ----------------------------------------------------------------------------


def test_checkpoints_save_load_and_drop_and_never_go_back(tmp_path: Path) -> None:
    async def main() -> None:
        async with SqliteStore(tmp_path / "t.db") as store:
            assert await store.load_checkpoint("call-1") is None
            assert await store.save_checkpoint("call-1", 1, 1, b"\x00one")
            assert await store.save_checkpoint("call-1", 1, 2, b"\x00two")
            assert await store.save_checkpoint("call-1", 1, 2, b"\x00two")  # a retry
            assert not await store.save_checkpoint("call-1", 1, 1, b"stale version")
            cp = await store.load_checkpoint("call-1")
            assert cp is not None
            assert (cp.epoch, cp.version, cp.data) == (1, 2, b"\x00two")

            # A takeover: the new primary's epoch wins; the deposed one is refused.
            assert await store.save_checkpoint("call-1", 2, 1, b"new primary")
            assert not await store.save_checkpoint("call-1", 1, 9, b"deposed primary")
            await store.drop_checkpoint("call-1", epoch=1)  # the deposed one cannot drop it
            cp = await store.load_checkpoint("call-1")
            assert cp is not None
            assert (cp.epoch, cp.version, cp.data) == (2, 1, b"new primary")

            await store.drop_checkpoint("call-1", epoch=2)
            assert await store.load_checkpoint("call-1") is None
            assert await store.save_checkpoint("call-2", 1, 1, b"x")
            await store.drop_checkpoint("call-2")
            assert await store.load_checkpoint("call-2") is None

    run(main())


# --- URLs -----------------------------------------------------------------------------------


def test_database_urls() -> None:
    assert sqlite_path("sqlite:///twinline.db") == Path("twinline.db")
    assert sqlite_path("sqlite:///data/twinline.db") == Path("data/twinline.db")
    assert sqlite_path("sqlite:////var/lib/twinline.db") == Path("/var/lib/twinline.db")
    store = open_store("sqlite:///twinline.db")
    assert isinstance(store, SqliteStore)
    assert store.path == Path("twinline.db")
    with pytest.raises(StoreError, match="PostgreSQL backend is not yet supported"):
        open_store("postgresql://twinline@db.example.net/twinline")
    with pytest.raises(StoreError, match="unknown database URL scheme"):
        open_store("mysql://db/twinline")
    with pytest.raises(StoreError, match="not a host"):
        open_store("sqlite://host/twinline.db")
    with pytest.raises(StoreError, match="cannot be shared"):
        open_store("sqlite:///:memory:")
    with pytest.raises(StoreError, match="no file named"):
        open_store("sqlite://")
    with pytest.raises(StoreError, match="takes no options"):
        open_store("sqlite:///t.db?timeout=3")


# --- several processes ----------------------------------------------------------------------

WRITER_SCRIPT = """
import asyncio, json, os, sys, time
from twinline.store import Cdr, SqliteStore

path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
DEBIT = "UPDATE test_purses SET balance = balance - ? WHERE id = ?"

def cdr(call_id):
    return Cdr(call_id=call_id, caller=name, callee="5551000", service="prepaid",
               started_at=1.0, answered_at=None, ended_at=2.0, disposition="busy",
               status=486, cause="busy", primaries=(name,), standby_servers=(), epoch=1)

async def main():
    async with SqliteStore(path) as store:
        open(path + ".ready-" + name, "w").close()
        deadline = time.monotonic() + 20
        while not os.path.exists(path + ".go"):
            assert time.monotonic() < deadline, "no go"
            await asyncio.sleep(0.005)
        applied = 0
        for i in range(n):
            store.write_cdr(cdr(f"{name}-{i}"))
            store.write_cdr(cdr(f"shared-{i}"))
            store.placement(f"{name}-{i}", name, "primary", 1, float(i))
            if i % 10 == 0:
                key = f"shared-{i}/debit/1"
                applied += await store.once(key, f"shared-{i}", "debit", [(DEBIT, (1, "acct-1"))])
            if i % 100 == 0:
                await asyncio.sleep(0)
        await store.flush()
        stats = store.stats
    print(json.dumps({"applied": applied, "errors": stats.errors, "dropped": stats.dropped}))

asyncio.run(main())
"""


def test_two_processes_write_one_file_concurrently(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    create_accounts(path, 10_000)  # the store's schema is created by the two writers, racing
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    n = 1000
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), name, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name in ("as1", "as2")
    ]
    try:
        deadline = time.monotonic() + 20
        while not all(Path(f"{path}.ready-{name}").exists() for name in ("as1", "as2")):
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, [p.communicate()[1] for p in dead]
            assert time.monotonic() < deadline, "the writers did not start"
            time.sleep(0.005)
        Path(f"{path}.go").touch()
        outputs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err and "busy" not in err, err
    reports = [json.loads(out) for out, _ in outputs]
    assert all(r["errors"] == r["dropped"] == 0 for r in reports), reports
    assert sum(r["applied"] for r in reports) == n // 10  # each shared debit once

    async def check() -> None:
        async with SqliteStore(path) as store:
            cdrs = await store.cdrs()
            placements = await store.placements()
        ids = [c.call_id for c in cdrs]
        assert len(ids) == len(set(ids)) == 3 * n
        assert len(placements) == 2 * n

    run(check())
    assert balance(path) == 10_000 - n // 10
