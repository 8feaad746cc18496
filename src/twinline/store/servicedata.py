"""Service data: typed reads and the money operations, as functions of a `Tx`.

Services call them through the store, so each runs in one transaction::

    account = await store.read(lambda tx: find_account(tx, "alice"))
    outcome = await store.once_with(key, call_id, "reserve",
                                    lambda tx: encode(reserve(tx, acct, call_id, hold, at=now)))

Money is `Decimal` here and BIGINT millionths of the currency unit in the database
(`to_units`, `from_units`): SQL adds and compares it exactly on every backend.

Concurrency. A reservation is one guarded UPDATE::

    UPDATE accounts SET reserved = reserved + :hold, open_calls = open_calls + 1
    WHERE id = :id AND balance + credit_limit - reserved >= :hold AND ...

which is atomic on SQLite (one writer at a time) and on PostgreSQL (the UPDATE takes the
row lock, and under READ COMMITTED re-evaluates its WHERE on the row as the concurrent
transaction left it). So parallel calls on one account can never hold more than it has,
whichever process runs them. Every other write to an account starts with an UPDATE of
its row too, so it holds the row lock before it reads what it decides on.
"""

# ruff: noqa: S608 - SQL is built from this module's constant column lists and `?` marks
# only; every value goes through a placeholder.

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import Literal, TypeVar

import msgspec

from twinline.services.rating import MAX_DECIMALS, Rate, RatePeriod, Rounding, Tariff
from twinline.services.timeofday import Window, local_time, parse_days
from twinline.store.base import Row, Tx

T = TypeVar("T")

UNITS = 10**MAX_DECIMALS  # database money: integer millionths of the currency unit
OPERATOR = "*"  # the subscriber that holds the operator-wide allow list
PIN_FAILURES_LOCK = 3  # wrong PINs in a row that lock a card


class DataError(ValueError):
    """Service data refused: an unknown key, a value out of range. The message says which."""


def to_units(amount: Decimal) -> int:
    """`amount` as integer millionths; DataError if it has more decimals than that."""
    if not amount.is_finite():
        raise DataError(f"{amount} is not an amount")
    units = amount.scaleb(MAX_DECIMALS)
    if units != units.to_integral_value():
        raise DataError(f"{amount} has more than {MAX_DECIMALS} decimals")
    return int(units)


def from_units(units: int) -> Decimal:
    """Integer millionths as a Decimal, with trailing zeros dropped down to cents."""
    value = Decimal(units).scaleb(-MAX_DECIMALS)
    for places in range(2, MAX_DECIMALS):
        shorter = value.quantize(Decimal(1).scaleb(-places))
        if shorter == value:
            return shorter
    return value


def _int(row: Row, name: str) -> int:
    value = row[name]
    assert isinstance(value, int), (name, value)
    return value


def _str(row: Row, name: str) -> str:
    value = row[name]
    assert isinstance(value, str), (name, value)
    return value


def _float(row: Row, name: str) -> float:
    value = row[name]
    assert isinstance(value, int | float), (name, value)
    return float(value)


def _money(row: Row, name: str) -> Decimal:
    return from_units(_int(row, name))


def _opt_int(row: Row, name: str) -> int | None:
    value = row[name]
    return None if value is None else _int(row, name)


# --- results of the money operations: text for `once_with`, the same on every replay ---


class Cause(enum.StrEnum):
    """Why a call is refused; the SIP reason phrase of its 403 (docs/services.md)."""

    NO_ACCOUNT = "No Account"
    ACCOUNT_DISABLED = "Account Disabled"
    NO_CREDIT = "No Credit"
    TOO_MANY_CALLS = "Too Many Calls"
    NO_RATE = "No Rate For Destination"
    UNKNOWN_CARD = "Unknown Card"
    WRONG_PIN = "Wrong PIN"
    CARD_LOCKED = "Card Locked"


class Refusal(msgspec.Struct, frozen=True, kw_only=True, tag="refusal"):
    cause: Cause
    detail: str = ""


class Reservation(msgspec.Struct, frozen=True, kw_only=True, tag="reservation"):
    """Credit held for a call until it is settled."""

    call_id: str
    account_id: str
    amount: Decimal  # what is held (the sum, after extensions)
    created_at: float
    released_at: float | None = None


class Settlement(msgspec.Struct, frozen=True, kw_only=True, tag="settlement"):
    """A call's end on its account: the hold released, `debited` taken (at most what the
    account could pay, so at most `cost`), the ledger entry that records it."""

    call_id: str
    account_id: str
    cost: Decimal  # as rated
    debited: Decimal  # what left the balance: the CDR's cost
    balance: Decimal  # the balance after it
    ledger_seq: int | None  # None when nothing was debited (no ledger entry)


class CardLogin(msgspec.Struct, frozen=True, kw_only=True, tag="card"):
    card: str
    account_id: str


Outcome = Reservation | Settlement | CardLogin | Refusal

_encoder = msgspec.json.Encoder()


def encode(result: Outcome) -> str:
    """A result as the text `Store.once_with` stores."""
    return _encoder.encode(result).decode()


def decode(text: str | None, kind: type[T]) -> T:
    """A stored result back (`kind` may be a union, such as Reservation | Refusal)."""
    if text is None:
        raise DataError("no result was stored for this effect")
    return msgspec.json.decode(text, type=kind)


# --- accounts and the ledger -------------------------------------------------------------

AccountStatus = Literal["active", "suspended", "closed"]
LedgerKind = Literal["opening", "debit", "top-up", "adjustment"]


class Account(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    currency: str
    balance: Decimal
    reserved: Decimal  # held by calls in progress
    credit_limit: Decimal  # how far below zero the balance may go (0: never)
    max_calls: int | None  # None: no limit
    open_calls: int
    status: AccountStatus
    rate_plan: str
    description: str
    identities: tuple[str, ...]

    @property
    def available(self) -> Decimal:
        """What a new call may reserve."""
        return self.balance + self.credit_limit - self.reserved


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    seq: int
    at: float
    kind: LedgerKind
    amount: Decimal  # signed: a debit is negative
    balance: Decimal  # after the entry
    reason: str
    call_id: str | None = None
    idempotency_key: str | None = None


_ACCOUNT_COLUMNS = (
    "id, currency, balance, reserved, credit_limit, max_calls, open_calls, status,"
    " rate_plan, description"
)


def _account(tx: Tx, row: Row) -> Account:
    account_id = _str(row, "id")
    identities = tx.fetchall(
        "SELECT identity FROM account_identities WHERE account_id = ? ORDER BY identity",
        (account_id,),
    )
    status = _str(row, "status")
    assert status in ("active", "suspended", "closed")
    return Account(
        id=account_id,
        currency=_str(row, "currency"),
        balance=_money(row, "balance"),
        reserved=_money(row, "reserved"),
        credit_limit=_money(row, "credit_limit"),
        max_calls=_opt_int(row, "max_calls"),
        open_calls=_int(row, "open_calls"),
        status=status,  # type: ignore[arg-type]  # checked above
        rate_plan=_str(row, "rate_plan"),
        description=_str(row, "description"),
        identities=tuple(_str(r, "identity") for r in identities),
    )


def get_account(tx: Tx, account_id: str) -> Account | None:
    """The account `account_id`, or None."""
    row = tx.fetchone(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = ?", (account_id,))
    return None if row is None else _account(tx, row)


def find_account(tx: Tx, identity: str) -> Account | None:
    """The account that pays for `identity` (a user name, or a caller number: a leading
    ``+`` is ignored), or None."""
    row = tx.fetchone(
        f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id ="
        " (SELECT account_id FROM account_identities WHERE identity = ?)",
        (identity.removeprefix("+"),),
    )
    return None if row is None else _account(tx, row)


class PayingAccount(msgspec.Struct, frozen=True, kw_only=True):
    """What the offer of a prepaid call needs of the account that pays for it."""

    id: str
    currency: str
    status: AccountStatus
    rate_plan: str


def _payer(row: Row | None) -> PayingAccount | None:
    if row is None:
        return None
    status = _str(row, "status")
    assert status in ("active", "suspended", "closed")
    return PayingAccount(
        id=_str(row, "id"),
        currency=_str(row, "currency"),
        status=status,  # type: ignore[arg-type]  # checked above
        rate_plan=_str(row, "rate_plan"),
    )


def list_accounts(tx: Tx) -> list[Account]:
    rows = tx.fetchall(f"SELECT {_ACCOUNT_COLUMNS} FROM accounts ORDER BY id")
    return [_account(tx, r) for r in rows]


def _entry(row: Row) -> LedgerEntry:
    kind = _str(row, "kind")
    assert kind in ("opening", "debit", "top-up", "adjustment")
    call_id, key = row["call_id"], row["idempotency_key"]
    return LedgerEntry(
        account_id=_str(row, "account_id"),
        seq=_int(row, "seq"),
        at=_float(row, "at"),
        kind=kind,  # type: ignore[arg-type]  # checked above
        amount=_money(row, "amount"),
        balance=_money(row, "balance"),
        reason=_str(row, "reason"),
        call_id=call_id if isinstance(call_id, str) else None,
        idempotency_key=key if isinstance(key, str) else None,
    )


_LEDGER_COLUMNS = "account_id, seq, at, kind, amount, balance, reason, call_id, idempotency_key"


def ledger(tx: Tx, account_id: str, *, limit: int | None = None) -> list[LedgerEntry]:
    """The account's ledger, oldest first (with `limit`: the last `limit` entries)."""
    if limit is None:
        rows = tx.fetchall(
            f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE account_id = ? ORDER BY seq",
            (account_id,),
        )
    else:
        rows = tx.fetchall(
            f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE account_id = ? ORDER BY seq DESC LIMIT ?",
            (account_id, limit),
        )
        rows.reverse()
    return [_entry(r) for r in rows]


def _post(
    tx: Tx,
    account_id: str,
    kind: LedgerKind,
    amount: Decimal,
    reason: str,
    *,
    at: float,
    call_id: str | None = None,
    key: str | None = None,
) -> LedgerEntry:
    """Change the balance by `amount` and write its ledger entry, in the caller's
    transaction; DataError if the account is unknown, or if what it would have left
    (with its credit limit) would not cover what calls in progress hold."""
    units = to_units(amount)
    changed = tx.fetchall(
        "UPDATE accounts SET balance = balance + ?, seq = seq + 1"
        " WHERE id = ? AND balance + ? + credit_limit - reserved >= 0 RETURNING seq, balance",
        (units, account_id, units),
    )
    if not changed:
        account = get_account(tx, account_id)
        if account is None:
            raise DataError(f"no account {account_id!r}")
        raise DataError(
            f"account {account_id}: {kind} of {amount} would take the balance"
            f" {account.balance} below its credit limit {account.credit_limit}"
            f" and what calls in progress hold ({account.reserved})"
        )
    seq, balance = _int(changed[0], "seq"), _int(changed[0], "balance")
    tx.execute(
        f"INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (account_id, seq, at, kind, units, balance, reason, call_id, key),
    )
    return LedgerEntry(
        account_id=account_id,
        seq=seq,
        at=at,
        kind=kind,
        amount=from_units(units),
        balance=from_units(balance),
        reason=reason,
        call_id=call_id,
        idempotency_key=key,
    )


def _by_key(tx: Tx, key: str | None) -> LedgerEntry | None:
    if key is None:
        return None
    row = tx.fetchone(f"SELECT {_LEDGER_COLUMNS} FROM ledger WHERE idempotency_key = ?", (key,))
    return None if row is None else _entry(row)


def top_up(
    tx: Tx, account_id: str, amount: Decimal, reason: str, *, at: float, key: str | None = None
) -> LedgerEntry:
    """Credit the account. With `key` (a payment's reference), a second top-up with the
    same key changes nothing and returns the first one's entry."""
    if amount <= 0:
        raise DataError(f"a top-up of {amount}: must be more than 0 (use an adjustment)")
    if not reason.strip():
        raise DataError("a top-up needs a reason")
    return _by_key(tx, key) or _post(tx, account_id, "top-up", amount, reason, at=at, key=key)


def adjust(
    tx: Tx, account_id: str, amount: Decimal, reason: str, *, at: float, key: str | None = None
) -> LedgerEntry:
    """Correct the balance by `amount` (either sign), never below the credit limit."""
    if amount == 0:
        raise DataError("an adjustment of 0 changes nothing")
    if not reason.strip():
        raise DataError("an adjustment needs a reason")
    return _by_key(tx, key) or _post(tx, account_id, "adjustment", amount, reason, at=at, key=key)


def add_account(
    tx: Tx,
    account_id: str,
    currency: str,
    *,
    balance: Decimal = Decimal(0),
    credit_limit: Decimal = Decimal(0),
    max_calls: int | None = None,
    status: AccountStatus = "active",
    rate_plan: str = "default",
    description: str = "",
    identities: Sequence[str] = (),
    at: float,
    reason: str = "opening balance",
) -> Account:
    """Create an account; a non-zero opening balance is the ledger's first entry."""
    check_account_fields(account_id, currency, credit_limit, max_calls, status)
    if get_account(tx, account_id) is not None:
        raise DataError(f"account {account_id!r} exists")
    # The numbering goes on after the entries of a removed account of the same id.
    last = tx.fetchone("SELECT MAX(seq) AS seq FROM ledger WHERE account_id = ?", (account_id,))
    seq = _opt_int(last, "seq") if last is not None else None
    tx.execute(
        "INSERT INTO accounts (id, currency, balance, reserved, credit_limit, max_calls,"
        " open_calls, status, rate_plan, description, seq)"
        " VALUES (?, ?, 0, 0, ?, ?, 0, ?, ?, ?, ?)",
        (
            account_id,
            currency,
            to_units(credit_limit),
            max_calls,
            status,
            rate_plan,
            description,
            seq or 0,
        ),
    )
    set_identities(tx, account_id, identities)
    if balance:
        _post(tx, account_id, "opening", balance, reason, at=at)
    account = get_account(tx, account_id)
    assert account is not None
    return account


def check_account_fields(
    account_id: str,
    currency: str,
    credit_limit: Decimal,
    max_calls: int | None,
    status: str,
) -> None:
    if not account_id or account_id != account_id.strip():
        raise DataError(f"account id {account_id!r}: must be non-empty, without spaces around")
    if len(currency) != 3 or not currency.isalpha() or not currency.isupper():
        raise DataError(f"currency {currency!r}: use an ISO 4217 code such as EUR")
    if credit_limit < 0:
        raise DataError(f"credit limit {credit_limit}: must be 0 or more")
    if max_calls is not None and max_calls < 1:
        raise DataError(f"max calls {max_calls}: must be 1 or more (or none: no limit)")
    if status not in ("active", "suspended", "closed"):
        raise DataError(f"status {status!r}: use active, suspended or closed")


def change_account(
    tx: Tx,
    account_id: str,
    *,
    currency: str | None = None,
    credit_limit: Decimal | None = None,
    max_calls: int | Literal["keep"] | None = "keep",
    status: AccountStatus | None = None,
    rate_plan: str | None = None,
    description: str | None = None,
    identities: Sequence[str] | None = None,
) -> Account:
    """Change an account's terms (never its balance: that is `top_up` and `adjust`)."""
    old = get_account(tx, account_id)
    if old is None:
        raise DataError(f"no account {account_id!r}")
    new_currency = currency or old.currency
    if new_currency != old.currency and (old.balance or old.reserved):
        raise DataError(f"account {account_id}: the currency of a balance cannot change")
    limit = old.credit_limit if credit_limit is None else credit_limit
    calls = old.max_calls if max_calls == "keep" else max_calls
    new_status = status or old.status
    check_account_fields(account_id, new_currency, limit, calls, new_status)
    if old.balance + limit - old.reserved < 0:
        raise DataError(
            f"account {account_id}: a credit limit of {limit} is less than the balance"
            f" {old.balance} owes with what calls in progress hold ({old.reserved})"
        )
    tx.execute(
        "UPDATE accounts SET currency = ?, credit_limit = ?, max_calls = ?, status = ?,"
        " rate_plan = ?, description = ? WHERE id = ?",
        (
            new_currency,
            to_units(limit),
            calls,
            new_status,
            rate_plan if rate_plan is not None else old.rate_plan,
            description if description is not None else old.description,
            account_id,
        ),
    )
    if identities is not None:
        set_identities(tx, account_id, identities)
    account = get_account(tx, account_id)
    assert account is not None
    return account


def set_identities(tx: Tx, account_id: str, identities: Iterable[str]) -> None:
    """Make `identities` the ones that pay with the account (an identity pays with one
    account only: DataError naming the other)."""
    wanted = sorted({i.strip().removeprefix("+") for i in identities if i.strip()})
    for identity in wanted:
        row = tx.fetchone(
            "SELECT account_id FROM account_identities WHERE identity = ?", (identity,)
        )
        if row is not None and row["account_id"] != account_id:
            raise DataError(
                f"identity {identity!r} already pays with account {row['account_id']!s}"
            )
    tx.execute("DELETE FROM account_identities WHERE account_id = ?", (account_id,))
    for identity in wanted:
        tx.execute(
            "INSERT INTO account_identities (identity, account_id) VALUES (?, ?)",
            (identity, account_id),
        )


def remove_account(tx: Tx, account_id: str) -> None:
    """Remove an account with no balance and no call in progress (its ledger stays)."""
    account = get_account(tx, account_id)
    if account is None:
        raise DataError(f"no account {account_id!r}")
    if account.balance or account.open_calls or account.reserved:
        raise DataError(
            f"account {account_id}: balance {account.balance}, {account.open_calls} calls"
            " in progress: only an empty, idle account can be removed (or set status closed)"
        )
    tx.execute("DELETE FROM account_identities WHERE account_id = ?", (account_id,))
    tx.execute("DELETE FROM accounts WHERE id = ?", (account_id,))


# --- reservations and settlement ---------------------------------------------------------


def _reservation(row: Row) -> Reservation:
    released = row["released_at"]
    return Reservation(
        call_id=_str(row, "call_id"),
        account_id=_str(row, "account_id"),
        amount=_money(row, "amount"),
        created_at=_float(row, "created_at"),
        released_at=None if released is None else _float(row, "released_at"),
    )


_RESERVATION_COLUMNS = "call_id, account_id, amount, created_at, released_at, cost, debited"


def get_reservation(tx: Tx, call_id: str) -> Reservation | None:
    row = tx.fetchone(
        f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE call_id = ?", (call_id,)
    )
    return None if row is None else _reservation(row)


def open_reservations(tx: Tx, account_id: str | None = None) -> list[Reservation]:
    """Reservations not yet settled, oldest first."""
    if account_id is None:
        rows = tx.fetchall(
            f"SELECT {_RESERVATION_COLUMNS} FROM reservations WHERE released_at IS NULL"
            " ORDER BY created_at, call_id"
        )
    else:
        rows = tx.fetchall(
            f"SELECT {_RESERVATION_COLUMNS} FROM reservations"
            " WHERE account_id = ? AND released_at IS NULL ORDER BY created_at, call_id",
            (account_id,),
        )
    return [_reservation(r) for r in rows]


Amount = Decimal | Callable[[Decimal], Decimal | None]

# The account (locked: concurrent reservations and settlements of the account queue
# here, each reading what the previous one committed) and the call's reservation if it
# has one, in one round trip.
_RESERVE_READ = """
SELECT a.status, a.balance, a.reserved, a.credit_limit, a.max_calls, a.open_calls,
       r.account_id AS reserved_on, r.amount AS held, r.created_at AS reserved_at,
       r.released_at
FROM accounts a LEFT JOIN reservations r ON r.call_id = ?
WHERE a.id = ? FOR UPDATE OF a
"""
# The guards below hold by construction (the rows are locked, or on SQLite the file):
# sent with `expect=1`, a broken one fails the operation rather than pass unseen.
_HOLD = """
UPDATE accounts SET reserved = reserved + ?, open_calls = open_calls + ?
WHERE id = ? AND status = 'active' AND balance + credit_limit - reserved >= ?
  AND (? = 0 OR max_calls IS NULL OR open_calls < max_calls)
"""


def reserve(
    tx: Tx, account_id: str, call_id: str, amount: Amount, *, at: float
) -> Reservation | Refusal:
    """Hold credit on the account for the call, or say why not.

    `amount` is what to hold, or a function of the credit available that returns it
    (None: refuse for lack of credit), such as the hold `rating.authorize` computes.
    A second reservation for the same call adds to its hold (an extension: it does
    not count as another call).
    """
    # Lean on purpose: this runs inside the offer's transaction, which holds the
    # account's row (PostgreSQL) or the whole file (SQLite) until it commits. One read;
    # the writes go out with the commit.
    row = tx.fetchone(_RESERVE_READ, (call_id, account_id))
    if row is None:
        existing = get_reservation(tx, call_id)
        if existing is not None:
            raise DataError(f"call {call_id}: reserved on account {existing.account_id}")
        return Refusal(cause=Cause.NO_ACCOUNT)
    new_call = row["reserved_on"] is None
    if not new_call:
        if row["released_at"] is not None:
            raise DataError(f"call {call_id}: its reservation was already settled")
        if _str(row, "reserved_on") != account_id:
            raise DataError(f"call {call_id}: reserved on account {_str(row, 'reserved_on')}")
    status = _str(row, "status")
    if status != "active":
        return Refusal(cause=Cause.ACCOUNT_DISABLED, detail=status)
    max_calls, open_calls = _opt_int(row, "max_calls"), _int(row, "open_calls")
    if new_call and max_calls is not None and open_calls >= max_calls:
        return Refusal(cause=Cause.TOO_MANY_CALLS, detail=f"{open_calls} of {max_calls}")
    available = from_units(_int(row, "balance") + _int(row, "credit_limit") - _int(row, "reserved"))
    hold = amount(available) if callable(amount) else amount
    if hold is None or hold > available:
        return Refusal(cause=Cause.NO_CREDIT, detail=f"available {available}")
    if hold < 0:
        raise DataError(f"call {call_id}: a hold of {hold}")
    units = to_units(hold)
    tx.send(_HOLD, (units, int(new_call), account_id, units, int(new_call)), expect=1)
    if new_call:
        tx.send(
            f"INSERT INTO reservations ({_RESERVATION_COLUMNS})"
            " VALUES (?, ?, ?, ?, NULL, NULL, NULL)",
            (call_id, account_id, units, at),
        )
        return Reservation(
            call_id=call_id, account_id=account_id, amount=from_units(units), created_at=at
        )
    tx.send(
        "UPDATE reservations SET amount = amount + ? WHERE call_id = ? AND released_at IS NULL",
        (units, call_id),
        expect=1,
    )
    return Reservation(
        call_id=call_id,
        account_id=account_id,
        amount=from_units(_int(row, "held") + units),
        created_at=_float(row, "reserved_at"),
    )


# The call's reservation and its account, both locked: a second settlement of the call
# waits here, then finds it settled.
_SETTLE_READ = """
SELECT r.account_id, r.amount, r.released_at, a.balance, a.credit_limit, a.reserved, a.seq
FROM reservations r JOIN accounts a ON a.id = r.account_id
WHERE r.call_id = ? FOR UPDATE
"""


def settle(
    tx: Tx, call_id: str, cost: Decimal, *, at: float, reason: str = ""
) -> Settlement | None:
    """End the call on its account: release its hold and debit `cost`, or as much of it
    as the account can pay without going below its credit limit (the CDR carries what
    was debited). One ledger entry when anything was debited. None if the call never
    reserved; settling again returns the first settlement unchanged.
    """
    if cost < 0:
        raise DataError(f"call {call_id}: a cost of {cost}")
    row = tx.fetchone(_SETTLE_READ, (call_id,))
    if row is None:
        found = tx.fetchone("SELECT released_at FROM reservations WHERE call_id = ?", (call_id,))
        if found is None:
            return None
        if found["released_at"] is None:
            raise DataError(f"call {call_id}: its account is gone")
        return _settled(tx, call_id)
    if row["released_at"] is not None:
        return _settled(tx, call_id)
    account_id, hold = _str(row, "account_id"), _int(row, "amount")
    reserved = _int(row, "reserved") - hold
    payable = max(0, _int(row, "balance") + _int(row, "credit_limit") - reserved)
    units = min(to_units(cost), payable)
    balance, seq = _int(row, "balance") - units, _int(row, "seq")
    tx.send(
        "UPDATE reservations SET released_at = ?, cost = ?, debited = ?"
        " WHERE call_id = ? AND released_at IS NULL",
        (at, to_units(cost), units, call_id),
        expect=1,
    )
    tx.send(
        "UPDATE accounts SET reserved = reserved - ?, open_calls = open_calls - 1,"
        " balance = balance - ?, seq = seq + ? WHERE id = ? AND seq = ?",
        (hold, units, int(units > 0), account_id, seq),
        expect=1,
    )
    ledger_seq: int | None = None
    if units:
        ledger_seq = seq + 1
        why = reason or f"call {call_id}"
        if units < to_units(cost):
            why += f" (rated {cost}, the account could pay {from_units(units)})"
        tx.send(
            f"INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (account_id, ledger_seq, at, "debit", -units, balance, why, call_id, None),
        )
    return Settlement(
        call_id=call_id,
        account_id=account_id,
        cost=cost,
        debited=from_units(units),
        balance=from_units(balance),
        ledger_seq=ledger_seq,
    )


def release(tx: Tx, call_id: str, *, at: float) -> Settlement | None:
    """Settle a call that was never answered: the hold released, nothing debited."""
    return settle(tx, call_id, Decimal(0), at=at)


def release_stale(tx: Tx, call_id: str, *, at: float) -> Settlement:
    """Release the hold of a call that no longer exists (an operator's repair), nothing
    debited; DataError if the call is live (the switch lists it among its active calls),
    never reserved, or was settled already."""
    if tx.fetchone("SELECT call_id FROM active_calls WHERE call_id = ?", (call_id,)):
        raise DataError(f"call {call_id} is in progress: its service settles it when it ends")
    reservation = get_reservation(tx, call_id)
    if reservation is None:
        raise DataError(f"call {call_id} holds no credit")
    if reservation.released_at is not None:
        raise DataError(f"call {call_id} was settled already")
    settled = release(tx, call_id, at=at)
    assert settled is not None
    return settled


def _settled(tx: Tx, call_id: str) -> Settlement:
    row = tx.fetchone(
        "SELECT r.account_id, r.cost, r.debited, l.seq, l.balance, a.balance AS now"
        " FROM reservations r"
        " LEFT JOIN ledger l ON l.call_id = r.call_id AND l.kind = 'debit'"
        " LEFT JOIN accounts a ON a.id = r.account_id"
        " WHERE r.call_id = ?",
        (call_id,),
    )
    assert row is not None
    seq = _opt_int(row, "seq")
    balance = _opt_int(row, "balance") if seq is not None else _opt_int(row, "now")
    return Settlement(
        call_id=call_id,
        account_id=_str(row, "account_id"),
        cost=from_units(_opt_int(row, "cost") or 0),
        debited=from_units(_opt_int(row, "debited") or 0),
        balance=from_units(balance or 0),
        ledger_seq=seq,
    )


# --- rates -------------------------------------------------------------------------------


def digits_of(number: str) -> str:
    """A number as rates and translations match it: without a leading ``+``."""
    return number.strip().removeprefix("+")


def _prefixes(number: str) -> list[str]:
    digits = digits_of(number)
    return [digits[:i] for i in range(len(digits) + 1)]


_RATE_COLUMNS = (
    "plan, prefix, description, currency, connect_fee, per_minute, initial_seconds,"
    " increment_seconds, decimals, rounding, time_zone"
)


def _rate(tx: Tx, row: Row) -> Rate:
    periods = tx.fetchall(
        "SELECT days, start_minute, end_minute, connect_fee, per_minute FROM rate_periods"
        " WHERE plan = ? AND prefix = ? ORDER BY step",
        (_str(row, "plan"), _str(row, "prefix")),
    )
    return _rate_of(row, periods)


def _rate_of(row: Row, periods: Sequence[Row]) -> Rate:
    return Rate(
        prefix=_str(row, "prefix"),
        currency=_str(row, "currency"),
        time_zone=_str(row, "time_zone"),
        description=_str(row, "description"),
        tariff=Tariff(
            per_minute=_money(row, "per_minute"),
            connect_fee=_money(row, "connect_fee"),
            initial=_int(row, "initial_seconds"),
            increment=_int(row, "increment_seconds"),
            decimals=_int(row, "decimals"),
            rounding=Rounding(_str(row, "rounding")),
        ),
        periods=tuple(
            RatePeriod(
                window=Window(
                    days=parse_days(_str(p, "days")),
                    start=_int(p, "start_minute"),
                    end=_int(p, "end_minute"),
                ),
                per_minute=_money(p, "per_minute"),
                connect_fee=_money(p, "connect_fee"),
            )
            for p in periods
        ),
    )


def find_rate(tx: Tx, plan: str, destination: str, currency: str) -> Rate | None:
    """The plan's rate in `currency` (the account's) whose prefix is the longest that
    starts `destination` (an empty prefix matches every destination), or None."""
    prefixes = _prefixes(destination)
    # One query, the rate with its periods (a call's offer waits for it).
    rows = tx.fetchall(
        f"SELECT r.*, p.days, p.start_minute, p.end_minute, p.connect_fee AS period_fee,"
        f" p.per_minute AS period_per_minute FROM (SELECT {_RATE_COLUMNS} FROM rates"
        f" WHERE plan = ? AND currency = ? AND prefix IN ({', '.join('?' * len(prefixes))})"
        " ORDER BY LENGTH(prefix) DESC LIMIT 1) r"
        " LEFT JOIN rate_periods p ON p.plan = r.plan AND p.prefix = r.prefix ORDER BY p.step",
        (plan, currency, *prefixes),
    )
    if not rows:
        return None
    periods = [
        {**row, "connect_fee": row["period_fee"], "per_minute": row["period_per_minute"]}
        for row in rows
        if row["days"] is not None
    ]
    return _rate_of(rows[0], periods)


def payer_and_rate(
    tx: Tx, destination: str, *, identity: str | None = None, account_id: str | None = None
) -> tuple[PayingAccount | None, Rate | None]:
    """The account that pays (`find_payer` for `identity`, or `get_payer`) and its rate for
    `destination` (`find_rate` on its plan, in its currency), in one query: a prepaid
    call's offer waits for it."""
    if (identity is None) == (account_id is None):
        raise ValueError("an identity or an account id please")
    prefixes = _prefixes(destination)
    by_identity = "(SELECT account_id FROM account_identities WHERE identity = ?)"
    which = "?" if identity is None else by_identity
    rate_columns = ", ".join(f"r.{c.strip()}" for c in _RATE_COLUMNS.split(","))
    rows = tx.fetchall(
        "SELECT a.id AS account_id, a.currency AS account_currency,"
        f" a.status AS account_status, a.rate_plan AS account_plan, {rate_columns},"
        " p.days, p.start_minute, p.end_minute, p.connect_fee AS period_fee,"
        " p.per_minute AS period_per_minute"
        " FROM accounts a LEFT JOIN rates r ON r.plan = a.rate_plan AND r.currency = a.currency"
        " AND r.prefix = (SELECT q.prefix FROM rates q WHERE q.plan = a.rate_plan"
        f" AND q.currency = a.currency AND q.prefix IN ({', '.join('?' * len(prefixes))})"
        " ORDER BY LENGTH(q.prefix) DESC LIMIT 1)"
        " LEFT JOIN rate_periods p ON p.plan = r.plan AND p.prefix = r.prefix"
        f" WHERE a.id = {which} ORDER BY p.step",
        (*prefixes, identity.removeprefix("+") if identity is not None else account_id),
    )
    if not rows:
        return None, None
    first = rows[0]
    payer = _payer(
        {
            "id": first["account_id"],
            "currency": first["account_currency"],
            "status": first["account_status"],
            "rate_plan": first["account_plan"],
        }
    )
    if first["prefix"] is None:
        return payer, None
    periods = [
        {**row, "connect_fee": row["period_fee"], "per_minute": row["period_per_minute"]}
        for row in rows
        if row["days"] is not None
    ]
    return payer, _rate_of(first, periods)


def list_rates(tx: Tx, plan: str | None = None) -> list[tuple[str, Rate]]:
    """(plan, rate) pairs, by plan and prefix."""
    if plan is None:
        rows = tx.fetchall(f"SELECT {_RATE_COLUMNS} FROM rates ORDER BY plan, prefix")
    else:
        rows = tx.fetchall(
            f"SELECT {_RATE_COLUMNS} FROM rates WHERE plan = ? ORDER BY prefix", (plan,)
        )
    return [(_str(r, "plan"), _rate(tx, r)) for r in rows]


# --- calling cards -----------------------------------------------------------------------

# scrypt (RFC 7914) with n=2**12, r=8, p=1: 4 MiB and about 10 ms of a core per check, so
# a stolen table costs an attacker that much per guess while a bulk import of cards or a
# burst of card calls stays affordable. A PIN has few digits: the lock after three wrong
# PINs is what protects a card online. Parameters are stored with each hash, so they can
# be raised later without invalidating the cards already issued.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**12, 8, 1


class Card(msgspec.Struct, frozen=True, kw_only=True):
    card: str
    account_id: str
    pin_hash: str
    failures: int  # wrong PINs in a row
    status: Literal["active", "locked"]
    description: str = ""


def hash_pin(pin: str, *, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$SALT$HASH`` (base64) of a PIN of 4 to 12 digits."""
    check_pin_format(pin)
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.scrypt(
        pin.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P, dklen=32
    )
    b64 = base64.b64encode
    return f"scrypt${_SCRYPT_N}${_SCRYPT_R}${_SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def check_pin_format(pin: str) -> None:
    if not (pin.isdigit() and pin.isascii() and 4 <= len(pin) <= 12):
        raise DataError("a PIN is 4 to 12 digits")


def check_pin_hash(pin_hash: str) -> None:
    parts = pin_hash.split("$")
    try:
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ValueError
        int(parts[1]), int(parts[2]), int(parts[3])
        base64.b64decode(parts[4], validate=True)
        base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise DataError("not a PIN hash of the form scrypt$N$r$p$SALT$HASH") from None


def verify_pin(pin_hash: str, pin: str) -> bool:
    """Whether `pin` is the PIN `pin_hash` was made from. Slow on purpose (scrypt): a
    service runs it off its event loop."""
    check_pin_hash(pin_hash)
    _, n, r, p, salt, digest = pin_hash.split("$")
    if not (pin.isdigit() and pin.isascii()):
        return False
    computed = hashlib.scrypt(
        pin.encode(),
        salt=base64.b64decode(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        dklen=len(base64.b64decode(digest)),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(computed, base64.b64decode(digest))


def _card(row: Row) -> Card:
    status = _str(row, "status")
    assert status in ("active", "locked")
    return Card(
        card=_str(row, "card"),
        account_id=_str(row, "account_id"),
        pin_hash=_str(row, "pin_hash"),
        failures=_int(row, "failures"),
        status=status,  # type: ignore[arg-type]  # checked above
        description=_str(row, "description"),
    )


def find_card(tx: Tx, card: str) -> Card | None:
    row = tx.fetchone(
        "SELECT card, account_id, pin_hash, failures, status, description FROM cards"
        " WHERE card = ?",
        (card,),
    )
    return None if row is None else _card(row)


def pin_checked(tx: Tx, card: str, correct: bool) -> CardLogin | Refusal:
    """Record the outcome of a PIN check (`verify_pin`, run outside the transaction):
    a correct PIN clears the count of wrong ones; the third wrong PIN in a row locks
    the card. A locked card is refused whatever the PIN."""
    found = find_card(tx, card)
    if found is None:
        return Refusal(cause=Cause.UNKNOWN_CARD)
    if correct:
        if tx.execute(
            "UPDATE cards SET failures = 0 WHERE card = ? AND status = 'active'", (card,)
        ):
            return CardLogin(card=card, account_id=found.account_id)
        return Refusal(cause=Cause.CARD_LOCKED)
    tx.execute(
        "UPDATE cards SET failures = failures + 1,"
        " status = CASE WHEN failures + 1 >= ? THEN 'locked' ELSE status END"
        " WHERE card = ? AND status = 'active'",
        (PIN_FAILURES_LOCK, card),
    )
    after = find_card(tx, card)
    assert after is not None
    if after.status == "locked":
        return Refusal(cause=Cause.CARD_LOCKED, detail=f"{after.failures} wrong PINs")
    return Refusal(cause=Cause.WRONG_PIN, detail=f"{after.failures} of {PIN_FAILURES_LOCK}")


def check_pin(tx: Tx, card: str, pin: str) -> CardLogin | Refusal:
    """Check a PIN and record the outcome in one transaction (the scrypt runs inside it:
    for tools and tests; a service verifies first, then calls `pin_checked`)."""
    found = find_card(tx, card)
    if found is None:
        return Refusal(cause=Cause.UNKNOWN_CARD)
    if found.status == "locked":
        return Refusal(cause=Cause.CARD_LOCKED)
    return pin_checked(tx, card, verify_pin(found.pin_hash, pin))


# --- number translation ------------------------------------------------------------------

HolidayRule = Literal["any", "only", "except"]


class Destination(msgspec.Struct, frozen=True, kw_only=True):
    """One destination of a translated number, with when and for whom it applies."""

    step: int
    target: str
    window: Window
    holidays: HolidayRule  # any day / on holidays only / except on holidays
    caller_prefix: str  # '' for every caller
    weight: int  # share among the destinations of the same priority
    priority: int  # overflow order: the lowest first
    time_zone: str


class Translation(msgspec.Struct, frozen=True, kw_only=True):
    number: str
    destinations: tuple[Destination, ...]  # by step


def _destination(row: Row) -> Destination:
    holidays = _str(row, "holidays")
    assert holidays in ("any", "only", "except")
    return Destination(
        step=_int(row, "step"),
        target=_str(row, "target"),
        window=Window(
            days=parse_days(_str(row, "days")),
            start=_int(row, "start_minute"),
            end=_int(row, "end_minute"),
        ),
        holidays=holidays,  # type: ignore[arg-type]  # checked above
        caller_prefix=_str(row, "caller_prefix"),
        weight=_int(row, "weight"),
        priority=_int(row, "priority"),
        time_zone=_str(row, "time_zone"),
    )


def find_translation(tx: Tx, number: str) -> Translation | None:
    """Every destination of a translated number, or None if it is not one."""
    rows = tx.fetchall(
        "SELECT step, target, days, start_minute, end_minute, holidays, caller_prefix,"
        " weight, priority, time_zone FROM translations WHERE service_number = ?"
        " ORDER BY step",
        (digits_of(number),),
    )
    if not rows:
        return None
    return Translation(number=digits_of(number), destinations=tuple(map(_destination, rows)))


def holidays(tx: Tx) -> frozenset[date]:
    rows = tx.fetchall("SELECT calendar_day FROM holidays")
    return frozenset(date.fromisoformat(_str(r, "calendar_day")) for r in rows)


def applicable(
    translation: Translation, caller: str, at: float, holiday_dates: frozenset[date]
) -> list[Destination]:
    """The destinations that apply to `caller` at `at`: those whose window holds the
    local time of their time zone and whose holiday rule fits the local date; of these,
    the ones with the longest caller prefix that starts the caller's number. Ordered by
    priority, then step (the service draws by weight within a priority and overflows
    to the next)."""
    caller_digits = digits_of(caller)
    fitting: list[Destination] = []
    for d in translation.destinations:
        local = local_time(at, d.time_zone)
        holiday = local.date() in holiday_dates
        if d.holidays == "only" and not holiday:
            continue
        if d.holidays == "except" and holiday:
            continue
        if d.window.contains(local) and caller_digits.startswith(d.caller_prefix):
            fitting.append(d)
    if not fitting:
        return []
    longest = max(len(d.caller_prefix) for d in fitting)
    chosen = [d for d in fitting if len(d.caller_prefix) == longest]
    return sorted(chosen, key=lambda d: (d.priority, d.step))


def translate(tx: Tx, number: str, caller: str, at: float) -> list[Destination] | None:
    """The destinations of `number` that apply now (`applicable`); None if `number` is
    not a translated number, [] if none applies at this time or to this caller."""
    translation = find_translation(tx, number)
    if translation is None:
        return None
    return applicable(translation, caller, at, holidays(tx))


# --- forwarding --------------------------------------------------------------------------

ForwardKind = Literal["always", "busy", "no-answer", "unavailable", "hunt"]


class HuntStep(msgspec.Struct, frozen=True, kw_only=True):
    target: str
    ring_seconds: int


class ForwardingPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Where a subscriber's calls go instead of, or after, ringing the subscriber."""

    subscriber: str
    always: str | None = None  # unconditional: the subscriber is not rung
    busy: str | None = None
    no_answer: str | None = None
    no_answer_seconds: int | None = None  # ring the subscriber this long first
    unavailable: str | None = None  # not registered, or unreachable
    hunt: tuple[HuntStep, ...] = ()  # rung one after the other, each for its time


def find_forwarding(tx: Tx, subscriber: str) -> ForwardingPlan | None:
    rows = tx.fetchall(
        "SELECT kind, step, target, ring_seconds FROM forwarding WHERE subscriber = ?"
        " ORDER BY kind, step",
        (subscriber,),
    )
    if not rows:
        return None
    first: dict[str, Row] = {}
    hunt: list[HuntStep] = []
    for r in rows:
        kind = _str(r, "kind")
        if kind == "hunt":
            hunt.append(HuntStep(target=_str(r, "target"), ring_seconds=_int(r, "ring_seconds")))
        else:
            first.setdefault(kind, r)

    def target(kind: str) -> str | None:
        return _str(first[kind], "target") if kind in first else None

    no_answer = first.get("no-answer")
    return ForwardingPlan(
        subscriber=subscriber,
        always=target("always"),
        busy=target("busy"),
        no_answer=target("no-answer"),
        no_answer_seconds=None if no_answer is None else _opt_int(no_answer, "ring_seconds"),
        unavailable=target("unavailable"),
        hunt=tuple(hunt),
    )


# --- screening ---------------------------------------------------------------------------


class Screening(msgspec.Struct, frozen=True, kw_only=True):
    """A callee's lists and the operator's, as prefixes of caller numbers."""

    subscriber: str
    allow: tuple[str, ...] = ()
    block: tuple[str, ...] = ()
    reject_anonymous: bool = False
    operator_allow: tuple[str, ...] = ()  # emergency and service numbers: never blocked


Verdict = Literal["allow", "block", "anonymous"]


def find_screening(tx: Tx, subscriber: str) -> Screening:
    """The callee's lists (empty when it has none) with the operator-wide allow list."""
    rows = tx.fetchall(
        "SELECT subscriber, kind, prefix FROM screening WHERE subscriber IN (?, ?)"
        " ORDER BY kind, prefix",
        (subscriber, OPERATOR),
    )
    own = [r for r in rows if r["subscriber"] == subscriber]
    return Screening(
        subscriber=subscriber,
        allow=tuple(_str(r, "prefix") for r in own if r["kind"] == "allow"),
        block=tuple(_str(r, "prefix") for r in own if r["kind"] == "block"),
        reject_anonymous=any(r["kind"] == "reject-anonymous" for r in own),
        operator_allow=tuple(
            _str(r, "prefix") for r in rows if r["subscriber"] == OPERATOR and r["kind"] == "allow"
        ),
    )


def screen(screening: Screening, caller: str | None) -> Verdict:
    """The callee's decision on a caller (None: anonymous). The operator's allow list
    wins over everything; then an anonymous caller is rejected if the callee asks;
    then the longest matching prefix of the callee's lists, allow on a tie; no match
    allows."""
    if caller is None:
        return "anonymous" if screening.reject_anonymous else "allow"
    digits = digits_of(caller)
    if any(digits.startswith(p) for p in screening.operator_allow):
        return "allow"
    best_allow = max((len(p) for p in screening.allow if digits.startswith(p)), default=-1)
    best_block = max((len(p) for p in screening.block if digits.startswith(p)), default=-1)
    return "block" if best_block > best_allow else "allow"
