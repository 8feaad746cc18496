"""The store's contract, on both backends: every test runs on SQLite and on PostgreSQL
(a real server the test session starts: tests/pgserver.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from storefix import (
    DEBIT,
    Db,
    PgDb,
    SqliteDb,
    call,
    cdr,
    cdr_fields,
    eventually,
    run,
)

from twinline.cli import main
from twinline.store import (
    Cdr,
    SchemaTooNew,
    SideEffect,
    Store,
    StoreClosed,
    StoreError,
    Tx,
    UnexpectedRows,
    migrate,
)
from twinline.store.schema import MIGRATIONS, SCHEMA_VERSION


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        return SqliteDb(tmp_path / "twinline.db")
    return PgDb(request.getfixturevalue("pg_database"))


# --- schema ---------------------------------------------------------------------------------


def test_open_creates_the_schema_and_reopening_applies_nothing(db: Db) -> None:
    async def first() -> None:
        async with db.store() as store:
            store.write_cdr(cdr("call-1"))

    async def second() -> list[Cdr]:
        async with db.store() as store:
            return await store.cdrs()

    run(first())
    assert run(second()) == [cdr("call-1")]
    # Each migration once: reopening applied nothing again.
    versions = db.rows("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]
    for table in ("active_calls", "cdrs", "side_effects", "checkpoints", "call_placements"):
        count = db.scalar(f"SELECT count(*) FROM {table}")  # noqa: S608 - our own names
        assert count == (1 if table == "cdrs" else 0)


def test_a_database_from_a_newer_twinline_is_refused(db: Db) -> None:
    async def create() -> None:
        async with db.store():
            pass

    run(create())
    db.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    store = db.store()
    with pytest.raises(SchemaTooNew, match="newer than this twinline supports") as err:
        run(store.open())
    assert err.value.found == SCHEMA_VERSION + 1
    with pytest.raises(StoreClosed):
        store.call_ended("call-1")


def test_batched_writes_are_visible_after_flush(db: Db) -> None:
    async def main() -> None:
        async with db.store(flush_interval=60) as store:
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


def test_a_batch_commits_by_itself_after_the_interval_or_at_batch_size(db: Db) -> None:
    async def main() -> None:
        async with db.store(flush_interval=0.02) as store:
            store.call_started(call(1))

            async def committed() -> bool:
                return len(await store.active_calls()) == 1

            await eventually(committed)

        async with db.store(flush_interval=60, batch_size=10) as store:
            for i in range(25):
                store.call_started(call(i))

            async def two_batches() -> bool:
                return len(await store.active_calls()) == 20

            await eventually(two_batches)
            assert store.stats.batches == 2

    run(main())


def test_an_immediate_write_commits_the_batched_writes_before_it(db: Db) -> None:
    async def main() -> None:
        async with db.store(flush_interval=60) as store:
            store.call_started(call(1))
            assert await store.save_checkpoint("call-1", 1, 1, b"state")
            assert [c.call_id for c in await store.active_calls()] == ["call-1"]

    run(main())


def test_close_commits_what_is_pending(db: Db) -> None:
    async def write() -> None:
        store = db.store(flush_interval=60)
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
        async with db.store() as store:
            return len(await store.active_calls())

    run(write())
    assert run(read()) == 1200


def test_a_bad_write_costs_only_itself(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with db.store() as store:
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
    assert re.search("check constraint", caplog.text, re.IGNORECASE)


def test_a_server_name_with_a_comma_is_refused_on_the_spot(db: Db) -> None:
    async def main() -> None:
        async with db.store() as store:
            with pytest.raises(ValueError, match="contains a comma"):
                store.write_cdr(Cdr(**{**cdr_fields("call-1"), "primaries": ("as1,as2",)}))

    run(main())


def test_a_second_cdr_for_a_call_is_ignored(db: Db) -> None:
    async def main() -> None:
        async with db.store() as store:
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


def test_cdrs_written_by_two_stores_on_one_file_land_once_each(db: Db) -> None:
    async def main() -> None:
        async with db.store() as a, db.store() as b:

            async def write(store: Store, cause: str) -> None:
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


def test_once_debits_exactly_once_under_concurrency_from_two_stores(db: Db) -> None:
    async def main() -> None:
        async with db.store() as a, db.store() as b:
            db.create_accounts(1000)
            attempts = [
                store.once("call-1/debit/1", "call-1", "debit", [(DEBIT, (30, "acct-1"))])
                for _ in range(50)
                for store in (a, b)
            ]
            applied = await asyncio.gather(*attempts)
            assert applied.count(True) == 1
            assert db.balance() == 970
            # Another step of the same call is another key: applied, once.
            assert await b.once("call-1/debit/2", "call-1", "debit", [(DEBIT, (5, "acct-1"))])
            assert not await a.once("call-1/debit/2", "call-1", "debit", [(DEBIT, (5, "acct-1"))])
            assert db.balance() == 965

    run(main())


def test_a_failing_side_effect_leaves_no_key_behind(db: Db) -> None:
    async def main() -> None:
        async with db.store() as store:
            db.create_accounts(10)
            overdraw = [(DEBIT, (11, "acct-1"))]
            with pytest.raises(
                StoreError, match=r"(?i)call-1/debit/1: statement 0 failed: .*check"
            ):
                await store.once("call-1/debit/1", "call-1", "debit", overdraw)
            assert await store.side_effect("call-1/debit/1") is None
            assert db.balance() == 10
            debit = [(DEBIT, (4, "acct-1")), (DEBIT, (6, "acct-1"))]
            assert await store.once("call-1/debit/1", "call-1", "debit", debit, result="0")
            assert db.balance() == 0

    run(main())


def test_once_with_decides_from_the_database_and_replays_its_first_result(db: Db) -> None:
    """An effect that reads before it writes (debit what the balance allows) runs once;
    every later application of its key gets the first result back, not a new decision."""

    def debit_up_to(want: int) -> Callable[[Tx], str | None]:
        def effect(tx: Tx) -> str:
            # FOR UPDATE: on PostgreSQL another debit of the account waits for this one.
            row = tx.fetchone(
                "SELECT balance FROM test_purses WHERE id = ? FOR UPDATE", ("acct-1",)
            )
            assert row is not None
            take = min(want, int(str(row["balance"])))
            assert tx.execute(DEBIT, (take, "acct-1")) == 1
            return str(take)

        return effect

    async def main() -> None:
        async with db.store() as a, db.store() as b:
            db.create_accounts(50)
            outcomes = await asyncio.gather(
                *(s.once_with("c1/debit", "c1", "debit", debit_up_to(80)) for s in (a, b) * 10)
            )
            assert [o.applied for o in outcomes].count(True) == 1
            assert {o.result for o in outcomes} == {"50"}
            assert db.balance() == 0
            # The same key after the balance changed: still the first result.
            db.execute("UPDATE test_purses SET balance = 1000")
            again = await b.once_with("c1/debit", "c1", "debit", debit_up_to(80))
            assert (again.applied, again.result) == (False, "50")

    run(main())


def test_an_effect_that_writes_first_is_not_applied_again_for_its_key(db: Db) -> None:
    # A SELECT may travel with the key's claim; a write waits until the claim is
    # confirmed. Applied again (one after the other, and many at once from two stores),
    # each key debits once, whether the write is an UPDATE or an UPDATE ... RETURNING.
    def update(tx: Tx) -> str:
        return str(tx.execute(DEBIT, (1, "acct-1")))

    def returning(tx: Tx) -> str:
        rows = tx.fetchall(DEBIT + " RETURNING balance", (1, "acct-1"))
        return str(rows[0]["balance"])

    async def main() -> None:
        async with db.store() as a, db.store() as b:
            db.create_accounts(100)
            for effect in (update, returning):
                key = f"c-{effect.__name__}/debit"
                first = await a.once_with(key, "c", "debit", effect)
                again = await b.once_with(key, "c", "debit", effect)
                assert first.applied and not again.applied
                assert again.result == first.result
            assert db.balance() == 98
            outcomes = await asyncio.gather(
                *(
                    s.once_with(f"k{i % 10}", "c", "debit", update)
                    for i, s in enumerate((a, b) * 20)
                )
            )
            assert sum(o.applied for o in outcomes) == 10
            assert db.balance() == 88

    run(main())


def test_a_failing_effect_rolls_back_with_its_key_and_transactions_read_by_name(db: Db) -> None:
    def refuse(tx: Tx) -> str:
        tx.execute(DEBIT, (1, "acct-1"))
        raise ValueError("no credit")

    async def main() -> None:
        async with db.store() as store:
            db.create_accounts(10)
            with pytest.raises(ValueError, match="no credit"):
                await store.once_with("c1/x", "c1", "debit", refuse)
            assert await store.side_effect("c1/x") is None
            changed = await store.transaction(
                "top-up", lambda tx: tx.execute("UPDATE test_purses SET balance = balance + 5")
            )
            assert changed == 1
            rows = await store.read(lambda tx: tx.fetchall("SELECT id, balance FROM test_purses"))
            assert rows == [{"id": "acct-1", "balance": 15}]
            assert await store.read(lambda tx: tx.fetchone("SELECT 1 AS x WHERE 1 = 0")) is None

    run(main())


def test_operations_queued_together_fail_alone(db: Db) -> None:
    # 150 debits of 1 from a balance of 100, queued at once: they commit in shared
    # transactions (group commit), and the 50 that break the CHECK fail alone, each
    # leaving no key behind, while every other one is applied and durable.

    async def main() -> None:
        async with db.store() as store:
            db.create_accounts(100)
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
            assert all(
                re.search("(?i)statement 0 failed: .*check", str(outcomes[i])) for i in failed
            )
            assert db.balance() == 0
            for i in (applied[0], applied[-1]):
                assert await store.side_effect(f"call-{i}/debit/1") is not None
            for i in (failed[0], failed[-1]):
                assert await store.side_effect(f"call-{i}/debit/1") is None

    run(main())


def test_a_sent_statement_fails_its_own_operation(db: Db) -> None:
    # `Tx.send` may defer a statement (PostgreSQL sends it with the next that waits, or
    # when the operation returns): its error still fails that operation alone, with its
    # key, and so does a row count other than the one it expected.
    def debit_one(tx: Tx) -> str:
        tx.send(DEBIT, (1, "acct-1"))
        return "debited"

    def expect_a_row(tx: Tx) -> str:
        tx.send(DEBIT, (1, "no-such-purse"), expect=1)
        return "debited"

    async def main() -> None:
        async with db.store() as store:
            db.create_accounts(100)
            outcomes = await asyncio.gather(
                *(store.once_with(f"c{i}/debit", f"c{i}", "debit", debit_one) for i in range(150)),
                store.once_with("c-none/debit", "c-none", "debit", expect_a_row),
                return_exceptions=True,
            )
            applied = [i for i, o in enumerate(outcomes[:150]) if not isinstance(o, Exception)]
            failed = [i for i, o in enumerate(outcomes[:150]) if isinstance(o, StoreError)]
            assert (len(applied), len(failed)) == (100, 50)
            assert all(re.search("(?i)check", str(outcomes[i])) for i in failed)
            assert isinstance(outcomes[150], UnexpectedRows)
            assert re.search("changed (0|another number of) rows, not 1", str(outcomes[150]))
            assert db.balance() == 0
            assert await store.side_effect(f"c{applied[-1]}/debit") is not None
            for key in (f"c{failed[0]}/debit", "c-none/debit"):
                assert await store.side_effect(key) is None

    run(main())


def test_a_read_of_several_statements_reads_them_all(db: Db) -> None:
    # PostgreSQL runs a read's first statement alone and, when a second comes, the whole
    # read again in one transaction: the caller sees every statement's rows once.
    def two(tx: Tx) -> tuple[object, object]:
        first = tx.fetchone("SELECT balance FROM test_purses WHERE id = ?", ("acct-1",))
        both = tx.fetchall("SELECT id FROM test_purses ORDER BY id")
        return first, both

    async def main() -> None:
        async with db.store() as store:
            db.create_accounts(7)
            assert await store.read(two) == ({"balance": 7}, [{"id": "acct-1"}])

    run(main())


def test_claim_records_a_side_effect_once_with_its_result(db: Db) -> None:
    async def main() -> None:
        async with db.store() as store:
            assert await store.side_effect("call-1/notify/1") is None
            assert await store.claim("call-1/notify/1", "call-1", "notify", result="sent")
            assert not await store.claim("call-1/notify/1", "call-1", "notify", result="again")
            effect = await store.side_effect("call-1/notify/1")
            assert effect is not None
            assert (effect.call_id, effect.kind, effect.result) == ("call-1", "notify", "sent")

    run(main())


def test_checkpoints_save_load_and_drop_and_never_go_back(db: Db) -> None:
    async def main() -> None:
        async with db.store() as store:
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


# --- migrations -----------------------------------------------------------------------------


def test_status_and_migrate_from_an_empty_database(db: Db) -> None:
    backend = db.backend()
    session = backend.connect()
    try:
        empty = migrate.status(session)
        assert (empty.version, empty.known, empty.applied) == (0, SCHEMA_VERSION, ())
        assert empty.pending == MIGRATIONS
        assert backend.migrate(session) == migrate.Migrated(0, SCHEMA_VERSION)
        assert backend.migrate(session) == migrate.Migrated(SCHEMA_VERSION, SCHEMA_VERSION)
        done = migrate.status(session)
    finally:
        session.close()
    assert done.version == SCHEMA_VERSION
    assert [a[0] for a in done.applied] == [m.version for m in MIGRATIONS]
    assert done.pending == ()


def test_migrating_from_version_1_keeps_its_data(db: Db, caplog: pytest.LogCaptureFixture) -> None:
    """The schema as it was released first (version 1), with data in it, brought up to
    date by a process opening it."""
    backend = db.backend()
    session = backend.connect()
    try:
        assert backend.migrate(session, upto=1) == migrate.Migrated(0, 1)
        old = migrate.status(session)
    finally:
        session.close()
    assert old.version == 1
    assert old.pending == MIGRATIONS[1:]
    db.execute(
        "INSERT INTO side_effects (key, call_id, kind, applied_at, result)"
        " VALUES ('c1/debit/1', 'c1', 'debit', 1.5, '30')"
    )

    async def reopen() -> SideEffect | None:
        async with db.store() as store:
            return await store.side_effect("c1/debit/1")

    with caplog.at_level(logging.INFO, logger="twinline.store"):
        effect = run(reopen())
    assert effect is not None
    assert (effect.call_id, effect.result) == ("c1", "30")
    if SCHEMA_VERSION > 1:
        assert f"schema migrated from version 1 to {SCHEMA_VERSION}" in caplog.text
    versions = db.rows("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]


def test_concurrent_migrators_apply_each_migration_once(db: Db) -> None:
    """Eight processes' worth of migrators on one empty database at once: one applies
    everything, the others find it done (PostgreSQL: the advisory lock; SQLite: the
    file's write lock)."""
    backend = db.backend()
    start = threading.Barrier(8)

    def migrator() -> migrate.Migrated:
        session = backend.connect()
        try:
            start.wait()
            return backend.migrate(session)
        finally:
            session.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: migrator(), range(8)))
    assert results.count(migrate.Migrated(0, SCHEMA_VERSION)) == 1
    assert results.count(migrate.Migrated(SCHEMA_VERSION, SCHEMA_VERSION)) == 7
    versions = db.rows("SELECT version FROM schema_version ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]


def test_twinline_db_status_and_migrate(db: Db, tmp_path: Path) -> None:
    config = tmp_path / "twinline.toml"
    config.write_text(db.toml(tmp_path))
    cli = CliRunner()

    status = cli.invoke(main, ["db", "status", "--config", str(config)])
    assert status.exit_code == 0, status.output
    assert f"schema version 0 (this twinline: {SCHEMA_VERSION})" in status.output
    assert f"pending  1: {MIGRATIONS[0].description}" in status.output
    assert "password" not in status.output

    migrated = cli.invoke(main, ["db", "migrate", "--config", str(config)])
    assert migrated.exit_code == 0, migrated.output
    assert f"schema migrated from version 0 to {SCHEMA_VERSION}" in migrated.output
    again = cli.invoke(main, ["db", "migrate", "--config", str(config)])
    assert f"at schema version {SCHEMA_VERSION}, nothing to apply" in again.output

    as_json = cli.invoke(main, ["db", "status", "--json", "--config", str(config)])
    found = json.loads(as_json.output)
    assert (found["version"], found["known"], found["pending"]) == (
        SCHEMA_VERSION,
        SCHEMA_VERSION,
        [],
    )
    assert [a["version"] for a in found["applied"]] == [m.version for m in MIGRATIONS]

    db.execute("INSERT INTO schema_version VALUES (?, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    newer = cli.invoke(main, ["db", "status", "--config", str(config)])
    assert newer.exit_code == 1
    assert "newer than this twinline" in newer.output
    refused = cli.invoke(main, ["db", "migrate", "--config", str(config)])
    assert refused.exit_code == 1
    assert "newer than this twinline supports" in refused.output
