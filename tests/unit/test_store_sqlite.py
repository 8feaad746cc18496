"""What only SQLite does: WAL mode, a file locked by another process, URLs of files,
several processes on one file (the rest of the store's contract: test_store_contract.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from storefix import call, cdr, run

from twinline.store import (
    Cdr,
    SqliteStore,
    StoreBusy,
    StoreError,
    open_store,
    sqlite_path,
)
from twinline.store.postgres import PostgresStore
from twinline.store.schema import MIGRATIONS, SCHEMA_VERSION

SRC = Path(__file__).resolve().parents[2] / "src"


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


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot open the database"):
        run(SqliteStore(tmp_path / "nowhere" / "twinline.db").open())


# --- batched writes -------------------------------------------------------------------------


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


# --- URLs -----------------------------------------------------------------------------------


def test_database_urls() -> None:
    assert sqlite_path("sqlite:///twinline.db") == Path("twinline.db")
    assert sqlite_path("sqlite:///data/twinline.db") == Path("data/twinline.db")
    assert sqlite_path("sqlite:////var/lib/twinline.db") == Path("/var/lib/twinline.db")
    store = open_store("sqlite:///twinline.db")
    assert isinstance(store, SqliteStore)
    assert store.path == Path("twinline.db")
    pg = open_store("postgresql://twinline@db1.example.net,db2.example.net/twinline")
    assert isinstance(pg, PostgresStore)
    assert repr(pg) == "PostgresStore('postgresql://db1.example.net,db2.example.net/twinline')"
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
