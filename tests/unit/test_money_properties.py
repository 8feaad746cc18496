"""The money operations under any sequence of reservations, settlements, top-ups and
adjustments (Hypothesis, stateful): the ledger always replays to the balance, holds add up
to what is reserved, nothing goes below the credit limit, one debit per call."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from twinline.store import Row, SqlValue
from twinline.store import servicedata as sd
from twinline.store.schema import MIGRATIONS, statements_for
from twinline.store.sql import render

T = TypeVar("T")
ACCOUNTS = ("a", "b")
CALLS = tuple(f"c{i}" for i in range(8))
amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal(5), places=2)


class ConnTx:
    """A `Tx` over a bare sqlite3 connection, for fast properties (no store threads)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> int:
        return self.conn.execute(render(sql, "sqlite"), tuple(params)).rowcount

    def fetchone(self, sql: str, params: Sequence[SqlValue] = ()) -> Row | None:
        cur = self.conn.execute(render(sql, "sqlite"), tuple(params))
        row = cur.fetchone()
        return None if row is None else dict(zip([d[0] for d in cur.description], row, strict=True))

    def fetchall(self, sql: str, params: Sequence[SqlValue] = ()) -> list[Row]:
        cur = self.conn.execute(render(sql, "sqlite"), tuple(params))
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def send(self, sql: str, params: Sequence[SqlValue] = (), *, expect: int | None = None) -> None:
        changed = self.execute(sql, params)
        assert expect is None or changed == expect, (sql, changed, expect)

    def flush(self) -> None:
        return


class Money(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        for migration in MIGRATIONS:
            for statement in statements_for(migration, "sqlite"):
                self.conn.execute(statement)
        self.tx = ConnTx(self.conn)
        self.at = 0.0
        self.run(lambda tx: sd.add_account(tx, "a", "EUR", balance=Decimal(10), at=self.at))
        self.run(
            lambda tx: sd.add_account(
                tx, "b", "EUR", balance=Decimal(2), credit_limit=Decimal(3), max_calls=2, at=self.at
            )
        )
        self.settled: dict[str, sd.Settlement] = {}

    def run(self, fn: Callable[[sd.Tx], T]) -> T | None:
        """One transaction: rolled back if `fn` refuses (as `Store.transaction` does)."""
        self.at += 1
        self.conn.execute("BEGIN")
        try:
            result = fn(self.tx)
        except sd.DataError:
            self.conn.execute("ROLLBACK")
            return None
        self.conn.execute("COMMIT")
        return result

    @rule(account=st.sampled_from(ACCOUNTS), call=st.sampled_from(CALLS), amount=amounts)
    def reserve(self, account: str, call: str, amount: Decimal) -> None:
        result = self.run(lambda tx: sd.reserve(tx, account, call, amount, at=self.at))
        if isinstance(result, sd.Reservation):
            assert result.amount >= amount

    @rule(account=st.sampled_from(ACCOUNTS), call=st.sampled_from(CALLS), share=st.integers(0, 100))
    def reserve_what_is_available(self, account: str, call: str, share: int) -> None:
        def hold(available: Decimal) -> Decimal | None:
            amount = (available * share / 100).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
            return amount if amount > 0 else None

        self.run(lambda tx: sd.reserve(tx, account, call, hold, at=self.at))

    @rule(call=st.sampled_from(CALLS), cost=st.decimals(min_value=0, max_value=20, places=4))
    def settle(self, call: str, cost: Decimal) -> None:
        result = self.run(lambda tx: sd.settle(tx, call, cost, at=self.at))
        if result is None:
            return
        first = self.settled.setdefault(call, result)
        assert result.debited == first.debited and result.cost == first.cost
        assert 0 <= result.debited <= result.cost

    @rule(account=st.sampled_from(ACCOUNTS), amount=amounts)
    def top_up(self, account: str, amount: Decimal) -> None:
        self.run(lambda tx: sd.top_up(tx, account, amount, "top-up", at=self.at))

    @rule(account=st.sampled_from(ACCOUNTS), amount=amounts, negative=st.booleans())
    def adjust(self, account: str, amount: Decimal, negative: bool) -> None:
        change = -amount if negative else amount
        self.run(lambda tx: sd.adjust(tx, account, change, "adjustment", at=self.at))

    @invariant()
    def the_books_balance(self) -> None:
        for account_id in ACCOUNTS:
            account = sd.get_account(self.tx, account_id)
            assert account is not None
            entries = sd.ledger(self.tx, account_id)
            assert account.balance == sum(e.amount for e in entries)
            assert entries[-1].balance == account.balance
            assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
            holds = sd.open_reservations(self.tx, account_id)
            assert account.reserved == sum((h.amount for h in holds), Decimal(0))
            assert account.open_calls == len(holds)
            assert account.available >= 0
            assert account.balance + account.credit_limit >= 0
            if account.max_calls is not None:
                assert account.open_calls <= account.max_calls
        debits = self.tx.fetchall("SELECT call_id FROM ledger WHERE kind = 'debit'")
        assert len(debits) == len({r["call_id"] for r in debits})
        for call, settled in self.settled.items():
            debit = [e for a in ACCOUNTS for e in sd.ledger(self.tx, a) if e.call_id == call]
            assert sum((-e.amount for e in debit), Decimal(0)) == settled.debited

    def teardown(self) -> None:
        self.conn.close()


Money.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
test_money_operations_keep_the_books = Money.TestCase
