"""What only the PostgreSQL backend does: many writers on one account from many stores,
a multi-host URL that finds the primary (and the promoted replica), passwords from the
environment or a file, a connection lost and reopened."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from storefix import PgDb, call, cdr, run

from conftest import PgDatabase
from pgserver import USER, PgServer
from twinline.errors import StartupError
from twinline.store import (
    OnceOutcome,
    Store,
    StoreError,
    StoreUnavailable,
    Tx,
    open_database,
    open_store,
)
from twinline.store.postgres import PgSettings, PostgresStore

LEDGER = """
CREATE TABLE test_ledger (
    key     TEXT PRIMARY KEY,
    amount  BIGINT NOT NULL,
    balance BIGINT NOT NULL
)
"""


def debit(key: str, want: int) -> Callable[[Tx], str | None]:
    """Debit up to `want` from what the balance holds, writing the balance as a value
    computed from the read: without the row lock, two debits that read the same balance
    would lose one of the updates."""

    def effect(tx: Tx) -> str:
        row = tx.fetchone("SELECT balance FROM test_purses WHERE id = 'acct-1' FOR UPDATE")
        assert row is not None
        balance = int(str(row["balance"]))
        take = min(want, balance)
        tx.execute("UPDATE test_purses SET balance = ? WHERE id = 'acct-1'", (balance - take,))
        tx.execute("INSERT INTO test_ledger VALUES (?, ?, ?)", (key, take, balance - take))
        return str(take)

    return effect


def test_twenty_stores_debit_one_account_exactly_once_each(pg_database: PgDatabase) -> None:
    """20 stores (20 processes' worth of writers) x 50 debits of one account, all at once:
    each store's debits share group commits, half the keys are shared by every store (a
    replay racing its original). Every key is applied once, no update is lost."""
    db = PgDb(pg_database)
    stores_n, per_store, amount = 20, 50, 7

    async def main() -> list[list[OnceOutcome]]:
        stores = [db.store(pool_size=1) for _ in range(stores_n)]
        for store in stores:
            await store.open()
        db.create_accounts(100_000)
        db.execute(LEDGER)
        try:

            async def debits(i: int, store: Store) -> list[OnceOutcome]:
                keys = [f"shared/{j}" if j % 2 else f"s{i}/{j}" for j in range(per_store)]
                return await asyncio.gather(
                    *(store.once_with(k, "c", "debit", debit(k, amount)) for k in keys)
                )

            return await asyncio.gather(*(debits(i, s) for i, s in enumerate(stores)))
        finally:
            for store in stores:
                await store.close()

    outcomes = [o for per in run(main()) for o in per]
    keys = per_store // 2 * stores_n + per_store // 2
    assert len(outcomes) == stores_n * per_store
    assert sum(o.applied for o in outcomes) == keys
    assert {o.result for o in outcomes} == {str(amount)}
    assert db.scalar("SELECT count(*) FROM test_ledger") == keys
    assert db.scalar("SELECT sum(amount) FROM test_ledger") == keys * amount
    assert db.balance() == 100_000 - keys * amount
    assert db.scalar("SELECT count(*) FROM side_effects") == keys


def test_failed_pipelines_leave_no_stale_prepared_statements(pg_database: PgDatabase) -> None:
    """Sent statements go out in pipeline mode; one failing on the server makes it skip
    the rest, and psycopg may then believe statements prepared that never were ("prepared
    statement _pg3_N does not exist" on their next use). Operations that fail so, one in
    two while the statements are new, must not make the others fail."""
    db = PgDb(pg_database)

    def take(amount: int) -> Callable[[Tx], str | None]:
        def effect(tx: Tx) -> str:
            tx.fetchone("SELECT balance FROM test_purses WHERE id = 'acct-1' FOR UPDATE")
            tx.send("UPDATE test_purses SET balance = balance - ? WHERE id = 'acct-1'", (amount,))
            return str(amount)

        return effect

    async def main() -> None:
        async with db.store() as store:
            db.create_accounts(1_000)
            for i in range(40):
                if i % 2:
                    with pytest.raises(StoreError, match=r"(?i)check"):
                        await store.once_with(f"c{i}/x", f"c{i}", "debit", take(10_000))
                else:
                    outcome = await store.once_with(f"c{i}/x", f"c{i}", "debit", take(1))
                    assert (outcome.applied, outcome.result) == (True, "1")
            assert db.balance() == 1_000 - 20

    run(main())


def test_a_multi_host_url_finds_the_primary_then_the_promoted_replica(
    pg_replicated: tuple[PgServer, PgServer],
) -> None:
    primary, standby = pg_replicated
    hosts = f"127.0.0.1:{standby.port},127.0.0.1:{primary.port}"
    url = f"postgresql://{USER}@{hosts}/postgres?target_session_attrs=read-write"
    settings = PgSettings(url, password=primary.password, connect_timeout=2)

    async def before() -> None:
        # The replica is listed first and accepts connections, but not writes: skipped.
        async with PostgresStore(settings) as store:
            for i in range(50):
                store.write_cdr(cdr(f"call-{i}"))
            await store.flush()
            assert await store.claim("call-1/debit/1", "call-1", "debit")
            assert len(await store.cdrs()) == 50

    run(before())
    # Without target_session_attrs the first host, the read-only replica, is used.
    only_standby = PgSettings(
        f"postgresql://{USER}@{hosts}/postgres", password=primary.password, connect_timeout=2
    )
    with pytest.raises(StoreError, match="read-only"):
        run(PostgresStore(only_standby).open())

    primary.stop("immediate")  # the primary's host is lost
    standby.promote()

    async def after() -> None:
        async with PostgresStore(settings) as store:
            # Synchronous replication: every commit the primary acknowledged is here.
            assert len(await store.cdrs()) == 50
            assert not await store.claim("call-1/debit/1", "call-1", "debit")
            store.write_cdr(cdr("call-after"))
            await store.flush()
            assert len(await store.cdrs()) == 51

    run(after())


def test_the_password_comes_from_the_environment_or_a_file(
    pg_database: PgDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twinline.config import Database

    async def count(store: Store) -> int:
        await store.open()
        try:
            return len(await store.cdrs())
        finally:
            await store.close()

    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("TWINLINE_DATABASE_PASSWORD", raising=False)
    with pytest.raises(StartupError, match="password"):
        run(open_database(pg_database.url))

    monkeypatch.setenv("TWINLINE_DATABASE_PASSWORD", pg_database.password)
    assert run(count(open_store(pg_database.url))) == 0
    monkeypatch.delenv("TWINLINE_DATABASE_PASSWORD")

    monkeypatch.setenv("PGPASSWORD", pg_database.password)  # libpq's own
    assert run(count(open_store(pg_database.url))) == 0
    monkeypatch.delenv("PGPASSWORD")

    secret = tmp_path / "password"
    secret.write_text(pg_database.password + "\n")
    database = Database(url=pg_database.url, password_file=str(secret), pool_size=2)
    assert run(count(open_store(database))) == 0
    secret.write_text("wrong\n")
    with pytest.raises(StartupError, match="password authentication failed") as failed:
        run(open_database(database))
    assert "wrong" not in str(failed.value)
    with pytest.raises(StoreError, match="cannot read the database password file"):
        open_store(Database(url=pg_database.url, password_file=str(tmp_path / "none")))


def test_a_lost_connection_is_reopened(pg_database: PgDatabase) -> None:
    db = PgDb(pg_database)

    def kill_connections() -> int:
        return len(
            db.rows(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = ? AND application_name = 'twinline'",
                (pg_database.name,),
            )
        )

    async def main() -> None:
        async with db.store() as store:
            assert await store.save_checkpoint("call-1", 1, 1, b"one")
            assert kill_connections() >= 2  # the writer's and the read pool's
            assert await store.save_checkpoint("call-1", 1, 2, b"two")
            checkpoint = await store.load_checkpoint("call-1")
            assert checkpoint is not None and checkpoint.data == b"two"
            kill_connections()
            store.write_cdr(cdr("call-1"))
            await store.flush()
            assert [c.call_id for c in await store.cdrs()] == ["call-1"]

    run(main())


def test_writes_wait_out_a_database_outage_and_operations_fail_fast(
    pg_database: PgDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    """The server stopped for a few seconds under writes: batched writes are held and all
    written once it is back, none twice; immediate operations get `StoreUnavailable` at
    once meanwhile, as a service needs to answer 503; a flush waits for the database."""
    db = PgDb(pg_database)
    server = pg_database.server

    async def main() -> None:
        async with db.store(flush_interval=0.01) as store:
            store.write_cdr(cdr("before"))
            await store.flush()
            server.stop("fast")
            try:
                for i in range(300):
                    store.write_cdr(cdr(f"during-{i}"))
                    store.call_started(call(i))
                    if i % 30 == 0:
                        await asyncio.sleep(0.01)
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="unreachable"):
                    await store.claim("during/debit/1", "during", "debit")
                assert time.monotonic() - started < 1.0
                flushing = asyncio.ensure_future(store.flush())
                await asyncio.sleep(1.0)
                assert not flushing.done()
                assert store.stats.held == 600
            finally:
                server.start()
            await asyncio.wait_for(flushing, 30)
            assert store.stats.held == 0
            # The next immediate operation runs again (after the short refusal window).
            await asyncio.sleep(1.0)
            assert await store.claim("after/debit/1", "after", "debit")
            ids = [c.call_id for c in await store.cdrs()]
            assert len(ids) == len(set(ids)) == 301
            assert len(await store.active_calls()) == 300
            assert store.stats.dropped == 0

    with caplog.at_level(logging.WARNING, logger="twinline.store"):
        run(main())
    assert "the database is unreachable" in caplog.text
    assert "the database is back after" in caplog.text


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def pg_behind_a_link(pg_server: PgServer) -> Iterator[tuple[PgServer, str, str]]:
    """A PostgreSQL in a network namespace of its own, reached over a veth pair: the
    link can be cut (its far end down), as a network cut leaves a server: silent."""
    del pg_server  # whether PostgreSQL runs here at all
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    tag = f"{os.getpid() % 10000}"
    ns, near, far = f"tlpg{tag}", f"tlpga{tag}", f"tlpgb{tag}"
    net = f"10.231.{os.getpid() % 250}"
    server: PgServer | None = None
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", near, "type", "veth", "peer", "name", far)
        _ip("link", "set", far, "netns", ns)
        _ip("addr", "add", f"{net}.1/30", "dev", near)
        _ip("link", "set", near, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", far)
        _ip("netns", "exec", ns, "ip", "link", "set", far, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        server = PgServer(settings={"listen_addresses": f"{net}.2"}, netns=ns)
        server.start()
        yield server, f"postgresql://{USER}@{net}.2:{server.port}/postgres", far
    finally:
        if server is not None:
            server.destroy()
        subprocess.run(["ip", "link", "del", near], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def test_a_server_cut_off_by_the_network_is_found_lost_and_the_writes_wait(
    pg_behind_a_link: tuple[PgServer, str, str],
) -> None:
    """No reset, no answer: the connection is declared lost within the TCP user
    timeout (10 s), operations are refused meanwhile, and the held writes land once
    the link is back."""
    server, url, far = pg_behind_a_link
    ns = server.netns
    assert ns is not None

    async def main() -> None:
        async with PostgresStore(PgSettings(url, password=server.password)) as store:
            store.write_cdr(cdr("before"))
            await store.flush()
            _ip("netns", "exec", ns, "ip", "link", "set", far, "down")
            try:
                for i in range(50):
                    store.write_cdr(cdr(f"cut-{i}"))
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(store.claim("cut/debit/1", "cut", "debit"), 40)
                lost_after = time.monotonic() - started
                assert lost_after < 25, lost_after
                assert store.stats.held == 50
            finally:
                _ip("netns", "exec", ns, "ip", "link", "set", far, "up")
            await asyncio.wait_for(store.flush(), 60)
            ids = [c.call_id for c in await store.cdrs()]
            assert len(ids) == len(set(ids)) == 51

    run(main())
