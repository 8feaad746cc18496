"""Service data on SQLite: accounts and their ledger, reservations under concurrency,
settlement exactly once, rates, cards and PINs, translations, forwarding, screening."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import pytest
from storefix import Db, PgDb, SqliteDb

from twinline.services.rating import Tariff, authorize, cost, duration_for
from twinline.store import Store, Tx
from twinline.store import datatables as dt
from twinline.store import servicedata as sd
from twinline.store.schema import MIGRATIONS, statements_for

T = TypeVar("T")
D = Decimal
NOW = 1_790_000_000.0


def with_store(db: Db, fn: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        async with db.store() as store:
            return await fn(store)

    return asyncio.run(main())


def tx_run(db: Db, fn: Callable[[Tx], T]) -> T:
    return with_store(db, lambda s: s.transaction("test", fn))


def add_rows(tx: Tx, table: str, *rows: dict[str, str]) -> None:
    for row in rows:
        dt.add(tx, dt.TABLES[table], row, at=NOW)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    """A database of each backend holding the account `acme` with 3.00 EUR."""
    database: Db
    if request.param == "sqlite":
        database = SqliteDb(tmp_path / "twinline.db")
    else:
        database = PgDb(request.getfixturevalue("pg_database"))

    def setup(tx: Tx) -> None:
        sd.add_account(
            tx, "acme", "EUR", balance=D("3.00"), identities=["alice", "+33123456"], at=NOW
        )

    tx_run(database, setup)
    return database


# --- accounts and the ledger -------------------------------------------------------------


def test_money_is_kept_in_millionths_exactly() -> None:
    assert sd.to_units(D("474.995")) == 474_995_000
    assert sd.from_units(475_000_000) == D("475.00")
    assert str(sd.from_units(6_000)) == "0.006"
    with pytest.raises(sd.DataError, match="more than 6 decimals"):
        sd.to_units(D("0.0000001"))


def test_accounts_are_found_by_identity_and_every_balance_change_is_in_the_ledger(
    db: Db,
) -> None:
    def work(tx: Tx) -> None:
        by_user = sd.find_account(tx, "alice")
        by_number = sd.find_account(tx, "+33123456")
        assert by_user is not None and by_number is not None
        assert by_user.id == by_number.id == "acme"
        assert sd.find_account(tx, "bob") is None
        sd.top_up(tx, "acme", D("10"), "voucher 17", at=NOW, key="pay-17")
        sd.top_up(tx, "acme", D("10"), "voucher 17", at=NOW, key="pay-17")  # replayed: once
        sd.adjust(tx, "acme", D("-0.50"), "goodwill reversal", at=NOW)
        with pytest.raises(sd.DataError, match="below its credit limit"):
            sd.adjust(tx, "acme", D("-100"), "too much", at=NOW)
        with pytest.raises(sd.DataError, match="no account"):
            sd.top_up(tx, "nobody", D("1"), "x", at=NOW)

    tx_run(db, work)
    entries = with_store(db, lambda s: s.read(lambda tx: sd.ledger(tx, "acme")))
    assert [(e.seq, e.kind, e.amount, e.balance) for e in entries] == [
        (1, "opening", D("3"), D("3")),
        (2, "top-up", D("10"), D("13")),
        (3, "adjustment", D("-0.5"), D("12.5")),
    ]
    account = with_store(db, lambda s: s.read(lambda tx: sd.get_account(tx, "acme")))
    assert account is not None
    assert account.balance == sum(e.amount for e in entries)


def test_the_balance_cannot_change_without_a_ledger_entry_by_the_account_commands(
    db: Db,
) -> None:
    def work(tx: Tx) -> None:
        with pytest.raises(dt.Invalid, match="cannot be changed"):
            dt.change(tx, dt.TABLES["accounts"], ("acme",), {"balance": "100"}, at=NOW)

    tx_run(db, work)


# --- reservations and settlement ---------------------------------------------------------

MINUTE = Tariff(per_minute=D("0.60"), initial=60, increment=60, decimals=2)


def test_a_call_reserves_then_settles_once(db: Db) -> None:
    async def work(store: Store) -> None:
        def hold(available: Decimal) -> Decimal | None:
            granted = authorize(MINUTE, available, hold_seconds=120)
            return None if granted is None else granted.hold

        first = await store.once_with(
            "c1/reserve",
            "c1",
            "reserve",
            lambda tx: sd.encode(sd.reserve(tx, "acme", "c1", hold, at=NOW)),
        )
        reservation = sd.decode(first.result, sd.Reservation | sd.Refusal)
        assert isinstance(reservation, sd.Reservation)
        assert reservation.amount == D("1.20")
        assert duration_for(MINUTE, reservation.amount) == 120
        account = await store.read(lambda tx: sd.get_account(tx, "acme"))
        assert account is not None
        assert (account.reserved, account.available, account.open_calls) == (
            D("1.20"),
            D("1.80"),
            1,
        )

        charge = cost(MINUTE, 95)  # two started minutes

        def settle(tx: Tx) -> str:
            settled = sd.settle(tx, "c1", charge, at=NOW + 100)
            assert settled is not None
            return sd.encode(settled)

        outcomes = [await store.once_with("c1/settle", "c1", "settle", settle) for _ in range(3)]
        assert [o.applied for o in outcomes] == [True, False, False]
        assert len({o.result for o in outcomes}) == 1  # every replay gets the first result
        settled = sd.decode(outcomes[0].result, sd.Settlement)
        assert (settled.cost, settled.debited, settled.balance) == (D("1.2"), D("1.2"), D("1.8"))
        # Settling outside once_with again changes nothing either.
        again = await store.transaction("settle", lambda tx: sd.settle(tx, "c1", D(5), at=NOW))
        assert again == settled
        account = await store.read(lambda tx: sd.get_account(tx, "acme"))
        assert account is not None
        assert (account.balance, account.reserved, account.open_calls) == (D("1.80"), 0, 0)
        debits = [
            e for e in await store.read(lambda tx: sd.ledger(tx, "acme")) if e.kind == "debit"
        ]
        assert [(e.amount, e.call_id) for e in debits] == [(D("-1.2"), "c1")]

    with_store(db, work)


def test_a_cost_beyond_what_the_account_holds_is_debited_only_down_to_its_limit(db: Db) -> None:
    def work(tx: Tx) -> None:
        assert isinstance(sd.reserve(tx, "acme", "c1", D("1.00"), at=NOW), sd.Reservation)
        assert isinstance(sd.reserve(tx, "acme", "c2", D("1.50"), at=NOW), sd.Reservation)
        # c1 ran 4 s over its credit: rated 3.10, but c2 still holds 1.50.
        settled = sd.settle(tx, "c1", D("3.10"), at=NOW)
        assert settled is not None
        assert settled.debited == D("1.50")
        account = sd.get_account(tx, "acme")
        assert account is not None
        assert account.balance == D("1.50") and account.reserved == D("1.50")
        assert account.balance >= 0
        assert sd.release(tx, "c2", at=NOW) is not None  # unanswered: nothing debited
        after = sd.get_account(tx, "acme")
        assert after is not None
        assert (after.balance, after.reserved, after.open_calls) == (D("1.50"), 0, 0)
        assert [e.kind for e in sd.ledger(tx, "acme")] == ["opening", "debit"]

    tx_run(db, work)


def test_refusals_name_their_cause(db: Db) -> None:
    def work(tx: Tx) -> None:
        sd.change_account(tx, "acme", max_calls=1)
        assert sd.reserve(tx, "nobody", "c0", D(1), at=NOW) == sd.Refusal(cause=sd.Cause.NO_ACCOUNT)
        no_credit = sd.reserve(tx, "acme", "c1", D("3.01"), at=NOW)
        assert isinstance(no_credit, sd.Refusal) and no_credit.cause is sd.Cause.NO_CREDIT
        nothing = sd.reserve(tx, "acme", "c1", lambda available: None, at=NOW)
        assert isinstance(nothing, sd.Refusal) and nothing.cause is sd.Cause.NO_CREDIT
        assert isinstance(sd.reserve(tx, "acme", "c1", D(1), at=NOW), sd.Reservation)
        too_many = sd.reserve(tx, "acme", "c2", D(1), at=NOW)
        assert isinstance(too_many, sd.Refusal) and too_many.cause is sd.Cause.TOO_MANY_CALLS
        # An extension of c1's hold is not another call.
        extended = sd.reserve(tx, "acme", "c1", D("0.5"), at=NOW)
        assert isinstance(extended, sd.Reservation) and extended.amount == D("1.5")
        sd.change_account(tx, "acme", status="suspended")
        disabled = sd.reserve(tx, "acme", "c3", D(1), at=NOW)
        assert isinstance(disabled, sd.Refusal) and disabled.cause is sd.Cause.ACCOUNT_DISABLED

    tx_run(db, work)


def _one_minute(available: Decimal) -> Decimal | None:
    granted = authorize(MINUTE, available, hold_seconds=60)
    return None if granted is None else granted.hold


@pytest.mark.parametrize("hold", [_one_minute, D("0.60")], ids=["authorized", "fixed"])
def test_twenty_parallel_calls_never_reserve_more_than_the_account_holds(
    db: Db, hold: sd.Amount
) -> None:
    """The issue's case: 20 calls at once on one account whose balance covers 5 minutes
    in total, from four stores (four connections, four writer threads) on one file."""

    async def main() -> list[sd.Reservation | sd.Refusal]:
        stores = [db.store() for _ in range(4)]
        for s in stores:
            await s.open()
        try:

            async def call(i: int) -> sd.Reservation | sd.Refusal:
                store = stores[i % len(stores)]
                outcome = await store.once_with(
                    f"call-{i}/reserve",
                    f"call-{i}",
                    "reserve",
                    lambda tx: sd.encode(sd.reserve(tx, "acme", f"call-{i}", hold, at=NOW)),
                )
                return sd.decode(outcome.result, sd.Reservation | sd.Refusal)

            return await asyncio.gather(*(call(i) for i in range(20)))
        finally:
            for s in stores:
                await s.close()

    results = asyncio.run(main())
    granted = [r for r in results if isinstance(r, sd.Reservation)]
    refused = [r for r in results if isinstance(r, sd.Refusal)]
    assert len(granted) == 5  # 3.00 buys five minutes at 0.60
    assert all(r.cause is sd.Cause.NO_CREDIT for r in refused)
    assert sum(r.amount for r in granted) == D("3.00")

    # Each granted call talks its full minute and is settled; the account ends at zero.
    def settle_all(tx: Tx) -> None:
        for r in granted:
            assert sd.settle(tx, r.call_id, cost(MINUTE, 60), at=NOW) is not None

    tx_run(db, settle_all)
    account = with_store(db, lambda s: s.read(lambda tx: sd.get_account(tx, "acme")))
    assert account is not None
    assert (account.balance, account.reserved, account.open_calls) == (0, 0, 0)


def test_greedy_parallel_holds_never_overdraw(db: Db) -> None:
    """Every call asks for as much as it can get (up to 5 minutes) at once."""

    def hold(available: Decimal) -> Decimal | None:
        granted = authorize(MINUTE, available, hold_seconds=300)
        return None if granted is None else granted.hold

    async def main() -> list[sd.Reservation | sd.Refusal]:
        stores = [db.store() for _ in range(3)]
        for s in stores:
            await s.open()
        try:
            return list(
                await asyncio.gather(
                    *(
                        stores[i % 3].transaction(
                            "reserve", lambda tx, i=i: sd.reserve(tx, "acme", f"g{i}", hold, at=NOW)
                        )
                        for i in range(20)
                    )
                )
            )
        finally:
            for s in stores:
                await s.close()

    results = asyncio.run(main())
    total = sum(r.amount for r in results if isinstance(r, sd.Reservation))
    assert total == D("3.00")  # the first takes everything; no one takes more


# --- rates -------------------------------------------------------------------------------


def test_the_longest_prefix_of_the_plan_rates_the_call(db: Db) -> None:
    def work(tx: Tx) -> None:
        add_rows(
            tx,
            "rates",
            {"plan": "default", "prefix": "", "currency": "EUR", "per_minute": "1.00"},
            {"plan": "default", "prefix": "33", "currency": "EUR", "per_minute": "0.05"},
            {
                "plan": "default",
                "prefix": "336",
                "currency": "EUR",
                "per_minute": "0.20",
                "increments": "30/6",
                "time_zone": "Europe/Paris",
                "periods": "sat,sun all 0.10 0.01",
            },
            {"plan": "gold", "prefix": "336", "currency": "EUR", "per_minute": "0.01"},
        )
        mobile = sd.find_rate(tx, "default", "+33612345678", "EUR")
        assert mobile is not None
        assert (mobile.prefix, mobile.tariff.per_minute, mobile.tariff.initial) == (
            "336",
            D("0.2"),
            30,
        )
        saturday = datetime(2026, 11, 7, 12, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
        assert mobile.tariff_at(saturday).per_minute == D("0.1")
        assert mobile.tariff_at(saturday).connect_fee == D("0.01")
        fixed = sd.find_rate(tx, "default", "33123", "EUR")
        assert fixed is not None and fixed.prefix == "33"
        anywhere = sd.find_rate(tx, "default", "44207", "EUR")
        assert anywhere is not None and anywhere.prefix == ""
        gold = sd.find_rate(tx, "gold", "33612", "EUR")
        assert gold is not None and gold.tariff.per_minute == D("0.01")
        assert sd.find_rate(tx, "gold", "44", "EUR") is None
        assert sd.find_rate(tx, "default", "33612", "USD") is None  # not the account's money
        # The offer's one query: the paying account and the same rate, with its periods.
        payer, rate = sd.payer_and_rate(tx, "+33612345678", identity="+33123456")
        assert payer is not None and (payer.id, payer.status, payer.rate_plan) == (
            "acme",
            "active",
            "default",
        )
        assert rate == mobile
        assert sd.payer_and_rate(tx, "44207", account_id="acme")[1] == anywhere
        assert sd.payer_and_rate(tx, "33612", identity="nobody") == (None, None)
        dt.change(tx, dt.TABLES["accounts"], ["acme"], {"rate_plan": "gold"}, at=NOW)
        assert sd.payer_and_rate(tx, "44", identity="alice")[1] is None  # gold has no 44

    tx_run(db, work)


# --- cards -------------------------------------------------------------------------------


def test_a_card_locks_on_the_third_wrong_pin(db: Db) -> None:
    def setup(tx: Tx) -> None:
        add_rows(tx, "cards", {"card": "5550001234", "account": "acme", "pin": "4321"})

    tx_run(db, setup)

    def check(pin: str) -> sd.CardLogin | sd.Refusal:
        return tx_run(db, lambda tx: sd.check_pin(tx, "5550001234", pin))

    stored = tx_run(db, lambda tx: sd.find_card(tx, "5550001234"))
    assert stored is not None and "4321" not in stored.pin_hash
    assert stored.pin_hash.startswith("scrypt$")
    assert check("4321") == sd.CardLogin(card="5550001234", account_id="acme")
    assert check("0000") == sd.Refusal(cause=sd.Cause.WRONG_PIN, detail="1 of 3")
    assert check("4321") == sd.CardLogin(card="5550001234", account_id="acme")  # count cleared
    assert check("1111") == sd.Refusal(cause=sd.Cause.WRONG_PIN, detail="1 of 3")
    assert check("2222") == sd.Refusal(cause=sd.Cause.WRONG_PIN, detail="2 of 3")
    third = check("3333")
    assert isinstance(third, sd.Refusal) and third.cause is sd.Cause.CARD_LOCKED
    locked = check("4321")  # the right PIN, too late
    assert isinstance(locked, sd.Refusal) and locked.cause is sd.Cause.CARD_LOCKED
    assert tx_run(db, lambda tx: sd.check_pin(tx, "999", "4321")) == sd.Refusal(
        cause=sd.Cause.UNKNOWN_CARD
    )
    # The operator unlocks it: the count starts again.
    tx_run(
        db,
        lambda tx: dt.change(tx, dt.TABLES["cards"], ("5550001234",), {"status": "active"}, at=NOW),
    )
    assert check("4321") == sd.CardLogin(card="5550001234", account_id="acme")


def test_verify_pin() -> None:
    pin_hash = sd.hash_pin("123456")
    assert sd.verify_pin(pin_hash, "123456")
    assert not sd.verify_pin(pin_hash, "123457")
    assert not sd.verify_pin(pin_hash, "")
    with pytest.raises(sd.DataError, match="4 to 12 digits"):
        sd.hash_pin("12a4")


# --- translations, forwarding, screening -------------------------------------------------


def test_translation_by_time_holiday_and_caller(db: Db) -> None:
    def setup(tx: Tx) -> None:
        common = {"number": "0800123", "time_zone": "Europe/Paris"}
        add_rows(
            tx,
            "numbers",
            {**common, "step": "1", "target": "paris-a", "days": "mon-fri",
             "hours": "08:00-18:00", "holidays": "except", "weight": "70"},
            {**common, "step": "2", "target": "paris-b", "days": "mon-fri",
             "hours": "08:00-18:00", "holidays": "except", "weight": "30"},
            {**common, "step": "3", "target": "lyon", "days": "mon-fri",
             "hours": "08:00-18:00", "holidays": "except", "priority": "1"},
            {**common, "step": "4", "target": "night", "hours": "18:00-08:00"},
            {**common, "step": "5", "target": "weekend", "days": "sat,sun"},
            {**common, "step": "6", "target": "closed", "holidays": "only"},
            {**common, "step": "7", "target": "north", "caller_prefix": "3332",
             "days": "mon-fri", "hours": "08:00-18:00", "holidays": "except"},
        )  # fmt: skip
        add_rows(tx, "holidays", {"date": "2026-12-25", "name": "Christmas"})

    tx_run(db, setup)
    paris = ZoneInfo("Europe/Paris")

    def targets(caller: str, *when: int) -> list[str] | None:
        at = datetime(*when, tzinfo=paris).timestamp()  # type: ignore[misc]
        found = tx_run(db, lambda tx: sd.translate(tx, "0800123", caller, at))
        return None if found is None else [d.target for d in found]

    assert targets("33145", 2026, 12, 1, 10) == ["paris-a", "paris-b", "lyon"]  # Tuesday 10:00
    assert targets("33320", 2026, 12, 1, 10) == ["north"]  # a longer caller prefix wins
    assert targets("33145", 2026, 12, 1, 19) == ["night"]
    assert targets("33145", 2026, 12, 5, 10) == ["weekend"]  # Saturday
    assert targets("33145", 2026, 12, 25, 10) == ["closed"]  # Christmas, a Friday
    assert tx_run(db, lambda tx: sd.translate(tx, "0800999", "33145", NOW)) is None


def test_forwarding_plan(db: Db) -> None:
    def setup(tx: Tx) -> None:
        add_rows(
            tx,
            "forwarding",
            {"subscriber": "bob", "kind": "busy", "target": "voicemail"},
            {"subscriber": "bob", "kind": "no-answer", "target": "carol", "ring_seconds": "20"},
            {"subscriber": "bob", "kind": "hunt", "step": "2", "target": "dave",
             "ring_seconds": "15"},
            {"subscriber": "bob", "kind": "hunt", "step": "1", "target": "+33612",
             "ring_seconds": "10"},
        )  # fmt: skip
        with pytest.raises(dt.Invalid, match="ring_seconds: required for no-answer"):
            add_rows(tx, "forwarding", {"subscriber": "eve", "kind": "no-answer", "target": "x"})

    tx_run(db, setup)
    plan = tx_run(db, lambda tx: sd.find_forwarding(tx, "bob"))
    assert plan == sd.ForwardingPlan(
        subscriber="bob",
        busy="voicemail",
        no_answer="carol",
        no_answer_seconds=20,
        hunt=(
            sd.HuntStep(target="+33612", ring_seconds=10),
            sd.HuntStep(target="dave", ring_seconds=15),
        ),
    )
    assert tx_run(db, lambda tx: sd.find_forwarding(tx, "nobody")) is None


def test_screening(db: Db) -> None:
    def setup(tx: Tx) -> None:
        add_rows(
            tx,
            "screening",
            {"subscriber": "bob", "kind": "block", "prefix": "33"},
            {"subscriber": "bob", "kind": "allow", "prefix": "3314"},
            {"subscriber": "bob", "kind": "block", "prefix": "331456"},
            {"subscriber": "bob", "kind": "reject-anonymous"},
            {"subscriber": "bob", "kind": "block", "prefix": ""},
            {"subscriber": "bob", "kind": "allow", "prefix": "44"},
            {"subscriber": "*", "kind": "allow", "prefix": "112"},
        )
        with pytest.raises(dt.Invalid, match="allow list only"):
            add_rows(tx, "screening", {"subscriber": "*", "kind": "block", "prefix": "1"})

    tx_run(db, setup)
    lists = tx_run(db, lambda tx: sd.find_screening(tx, "bob"))
    assert lists.reject_anonymous and lists.operator_allow == ("112",)
    verdicts = {c: sd.screen(lists, c) for c in ("3312", "3314", "3314567", "44", "49", "112")}
    assert verdicts == {
        "3312": "block",
        "3314": "allow",
        "3314567": "block",
        "44": "allow",
        "49": "block",
        "112": "allow",  # the operator's list: no user list blocks it
    }
    assert sd.screen(lists, None) == "anonymous"
    assert sd.screen(tx_run(db, lambda tx: sd.find_screening(tx, "carol")), None) == "allow"


# --- the schema --------------------------------------------------------------------------


def test_a_version_1_database_is_migrated_with_its_data(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute(
            "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, description TEXT NOT NULL,"
            " applied_at DOUBLE PRECISION NOT NULL)"
        )
        for statement in statements_for(MIGRATIONS[0], "sqlite"):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, 'v1', 0)")
        conn.execute("INSERT INTO side_effects VALUES ('k', 'c', 'debit', 0, NULL)")

    def work(tx: Tx) -> tuple[int, int]:
        sd.add_account(tx, "a", "EUR", balance=D(1), at=NOW)
        kept = tx.fetchone("SELECT COUNT(*) AS n FROM side_effects")
        assert kept is not None
        return int(str(kept["n"])), len(sd.ledger(tx, "a"))

    assert tx_run(SqliteDb(path), work) == (1, 1)
