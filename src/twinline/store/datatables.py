"""The service data as operators manage it: one flat table per kind of data, each row a
set of named text cells, the same for the CLI's options, its `--json` output and CSV
files. Every write goes through the same parsing, so `add`, `change` and an import
refuse the same things with the same words.

Imports are all or nothing: every line is parsed and written in one transaction; any
error (a cell that does not parse, a key given twice, a row the database refuses) is
collected with its line and column, and the transaction is rolled back, so nothing is
written unless every row is good.
"""

# ruff: noqa: S608 - SQL is built from this module's constant table and column names
# and `?` marks only; every value goes through a placeholder.

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from twinline.services.rating import MAX_DECIMALS, Rounding, Tariff
from twinline.services.timeofday import (
    Window,
    format_days,
    format_minute,
    parse_days,
    parse_hours,
    zone,
)
from twinline.store import servicedata as sd
from twinline.store.base import Row, Tx

Text = dict[str, str]  # a row as text cells, by column name
Values = dict[str, Any]  # a row as parsed values, by column name

# --- cells -------------------------------------------------------------------------------


def _text(value: str) -> str:
    return value.strip()


def _name(value: str) -> str:
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{value!r}: a name without spaces")
    return value


def _digits(value: str) -> str:
    value = value.strip().removeprefix("+")
    if value and not value.isdigit():
        raise ValueError(f"{value!r}: digits only (a leading + is dropped)")
    return value


def _number(value: str) -> str:
    value = _digits(value)
    if not value:
        raise ValueError("a number is needed")
    return value


def _target(value: str) -> str:
    """A SIP user or number to route to, or a full sip: URI."""
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{value!r}: a user, a number or a sip: URI, without spaces")
    return value


def parse_money(value: str) -> Decimal:
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount: write 12.50") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount")
    if amount != amount.quantize(Decimal(1).scaleb(-MAX_DECIMALS)):
        raise ValueError(f"{value}: at most {MAX_DECIMALS} decimals")
    return amount


def _positive_money(value: str) -> Decimal:
    amount = parse_money(value)
    if amount < 0:
        raise ValueError(f"{value}: must not be negative")
    return amount


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value.strip())
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
        if number < low or (high is not None and number > high):
            bounds = f"{low} to {high}" if high is not None else f"{low} or more"
            raise ValueError(f"{number}: must be {bounds}")
        return number

    return parse


def _optional_int(low: int) -> Callable[[str], int | None]:
    parse = _int(low)

    def optional(value: str) -> int | None:
        return None if value.strip().lower() in ("", "none") else parse(value)

    return optional


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in choices:
            raise ValueError(f"{value!r}: use {', '.join(choices)}")
        return value

    return parse


def _currency(value: str) -> str:
    value = value.strip().upper()
    if len(value) != 3 or not value.isalpha():
        raise ValueError(f"{value!r}: an ISO 4217 code such as EUR")
    return value


def _time_zone(value: str) -> str:
    value = value.strip() or "UTC"
    zone(value)
    return value


def _increments(value: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if m is None:
        raise ValueError(f"{value!r}: write INITIAL/INCREMENT in seconds, such as 60/60 or 30/6")
    initial, increment = int(m.group(1)), int(m.group(2))
    if increment < 1:
        raise ValueError(f"{value}: the increment must be 1 s or more")
    return initial, increment


def _days(value: str) -> frozenset[int]:
    return parse_days(value)


def _hours(value: str) -> tuple[int, int]:
    return parse_hours(value)


def _date(value: str) -> str:
    try:
        return date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise ValueError(f"{value!r} is not a date: write YYYY-MM-DD") from None


def _identities(value: str) -> tuple[str, ...]:
    items = value.replace(",", " ").split()
    return tuple(sorted({i.removeprefix("+") for i in items}))


def _pin(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    sd.check_pin_format(value)
    return value


def _pin_hash(value: str) -> str | None:
    value = value.strip()
    if not value:
        return None
    sd.check_pin_hash(value)
    return value


def _periods(value: str) -> tuple[tuple[Window, Decimal, Decimal], ...]:
    """``DAYS HOURS PER_MINUTE [CONNECT_FEE]; ...`` such as
    ``mon-fri 08:00-18:00 0.02; sat,sun all 0.005 0.01``."""
    periods = []
    for part in value.split(";"):
        words = part.split()
        if not words:
            continue
        if len(words) not in (3, 4):
            raise ValueError(
                f"{part.strip()!r}: write DAYS HOURS PER_MINUTE [CONNECT_FEE],"
                " such as mon-fri 08:00-18:00 0.02; periods are separated by ;"
            )
        start, end = parse_hours(words[1])
        window = Window(days=parse_days(words[0]), start=start, end=end)
        per_minute = _positive_money(words[2])
        connect_fee = _positive_money(words[3]) if len(words) == 4 else Decimal(0)
        periods.append((window, per_minute, connect_fee))
    return tuple(periods)


def _format_periods(rows: Iterable[Row]) -> str:
    parts = []
    for r in rows:
        days = parse_days(str(r["days"]))
        hours = _hours_text(int(str(r["start_minute"])), int(str(r["end_minute"])))
        part = f"{format_days(days)} {hours} "
        part += str(sd.from_units(int(str(r["per_minute"]))))
        if r["connect_fee"]:
            part += f" {sd.from_units(int(str(r['connect_fee'])))}"
        parts.append(part)
    return "; ".join(parts)


def _hours_text(start: int, end: int) -> str:
    return "all" if (start, end) == (0, 24 * 60) else f"{format_minute(start)}-{format_minute(end)}"


# --- tables ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    name: str
    parse: Callable[[str], Any]
    help: str
    default: str | None = None  # None: required
    key: bool = False
    changeable: bool = True  # settable by `change` (the balance is not: top-up, adjust)
    integer: bool = False  # a whole number in --json output


class Table:
    """One kind of service data: its columns, and how its rows are read and written."""

    name: str
    title: str
    columns: tuple[Column, ...]

    @property
    def keys(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.key)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def rows(self, tx: Tx, key: Sequence[str] = ()) -> list[Text]:
        """Every row (with `key`: those whose key starts with those values), in key order."""
        raise NotImplementedError

    def put(self, tx: Tx, values: Values, *, exists: bool, at: float) -> None:
        """Write a parsed row: add it, or replace the row with its key."""
        raise NotImplementedError

    def delete(self, tx: Tx, key: Sequence[str]) -> int:
        """Remove the rows whose key starts with `key`; how many."""
        raise NotImplementedError

    # --- shared by every table ---------------------------------------------------------

    def parse(self, cells: Mapping[str, str]) -> tuple[Values, dict[str, str]]:
        """Parse a row's cells (defaults for the missing ones): the values, and an error
        message by column for each cell that does not parse."""
        values: Values = {}
        errors: dict[str, str] = {}
        for c in self.columns:
            text = cells.get(c.name)
            if text is None or (text.strip() == "" and c.default is not None):
                text = c.default
            if text is None:
                errors[c.name] = "required"
                continue
            try:
                values[c.name] = c.parse(text)
            except ValueError as e:
                errors[c.name] = str(e)
        if not errors:
            errors.update(self.check(values))
        return values, errors

    def check(self, values: Values) -> dict[str, str]:
        """Rules across the cells of one row: an error by column."""
        return {}

    def key_of(self, values: Values) -> tuple[str, ...]:
        return tuple(str(values[c.name]) for c in self.keys)

    def find(self, tx: Tx, key: Sequence[str]) -> Text | None:
        """The row with exactly this key."""
        for row in self.rows(tx, key):
            if tuple(row[c.name] for c in self.keys) == tuple(key):
                return row
        return None

    def to_json(self, row: Text) -> dict[str, Any]:
        """A row for `--json`: whole numbers as numbers, amounts as exact text."""
        out: dict[str, Any] = dict(row)
        integers = {c.name for c in self.columns if c.integer} | (row.keys() - self.names)
        for name in integers:
            text = row.get(name, "")
            if text.lstrip("-").isdigit():
                out[name] = int(text)
        return out

    @property
    def names(self) -> set[str]:
        return {c.name for c in self.columns}


def _where_key(names: Sequence[str], key: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    if len(key) > len(names):
        raise sd.DataError(f"too many key values: {' '.join(key)} (the key is {', '.join(names)})")
    if not key:
        return "", ()
    return " WHERE " + " AND ".join(f"{n} = ?" for n in names[: len(key)]), tuple(key)


class Accounts(Table):
    name = "accounts"
    title = "prepaid accounts"
    columns = (
        Column("id", _name, "the account's id", key=True),
        Column("currency", _currency, "ISO 4217 code, such as EUR"),
        Column(
            "balance",
            parse_money,
            "the opening balance of a new account (an existing one keeps its own:"
            " top-up and adjust change it, with a ledger entry)",
            default="0",
            changeable=False,
        ),
        Column("credit_limit", _positive_money, "how far below zero it may go", default="0"),
        Column(
            "max_calls",
            _optional_int(1),
            "calls at once (empty: no limit)",
            default="",
            integer=True,
        ),
        Column(
            "status",
            _choice("active", "suspended", "closed"),
            "active, suspended, closed",
            default="active",
        ),
        Column("rate_plan", _name, "the rates it pays", default="default"),
        Column(
            "identities",
            _identities,
            "users and caller numbers that pay with it, separated by spaces",
            default="",
        ),
        Column("description", _text, "free text", default=""),
    )

    def rows(self, tx: Tx, key: Sequence[str] = ()) -> list[Text]:
        if key:
            found = sd.get_account(tx, key[0])
            accounts = [found] if found is not None else []
        else:
            accounts = sd.list_accounts(tx)
        return [
            {
                "id": a.id,
                "currency": a.currency,
                "balance": str(a.balance),
                "credit_limit": str(a.credit_limit),
                "max_calls": "" if a.max_calls is None else str(a.max_calls),
                "status": a.status,
                "rate_plan": a.rate_plan,
                "identities": " ".join(a.identities),
                "description": a.description,
                # Not columns: what an operator looks at.
                "reserved": str(a.reserved),
                "open_calls": str(a.open_calls),
            }
            for a in accounts
        ]

    def put(self, tx: Tx, values: Values, *, exists: bool, at: float) -> None:
        if exists:
            sd.change_account(
                tx,
                values["id"],
                currency=values["currency"],
                credit_limit=values["credit_limit"],
                max_calls=values["max_calls"],
                status=values["status"],
                rate_plan=values["rate_plan"],
                description=values["description"],
                identities=values["identities"],
            )
        else:
            sd.add_account(
                tx,
                values["id"],
                values["currency"],
                balance=values["balance"],
                credit_limit=values["credit_limit"],
                max_calls=values["max_calls"],
                status=values["status"],
                rate_plan=values["rate_plan"],
                description=values["description"],
                identities=values["identities"],
                at=at,
            )

    def delete(self, tx: Tx, key: Sequence[str]) -> int:
        if sd.get_account(tx, key[0]) is None:
            return 0
        sd.remove_account(tx, key[0])
        return 1


class Rates(Table):
    name = "rates"
    title = "rates by destination prefix"
    columns = (
        Column("plan", _name, "the rate plan (accounts name theirs)", key=True),
        Column("prefix", _digits, "destination prefix, longest match wins (empty: any)", key=True),
        Column("currency", _currency, "ISO 4217 code: the accounts' currency"),
        Column("per_minute", _positive_money, "price per minute"),
        Column("connect_fee", _positive_money, "charged once per answered call", default="0"),
        Column(
            "increments",
            _increments,
            "INITIAL/INCREMENT seconds: 60/60, 30/6, 1/1",
            default="60/60",
        ),
        Column("decimals", _int(0, MAX_DECIMALS), "a cost's decimals", default="4", integer=True),
        Column(
            "rounding",
            _choice(*(r.value for r in Rounding)),
            "up, half-up, half-even, down",
            default="up",
        ),
        Column("time_zone", _time_zone, "the periods' time zone (IANA)", default="UTC"),
        Column(
            "periods",
            _periods,
            "DAYS HOURS PER_MINUTE [CONNECT_FEE]; ... (the first that holds wins)",
            default="",
        ),
        Column("description", _text, "free text", default=""),
    )

    def check(self, values: Values) -> dict[str, str]:
        initial, increment = values["increments"]
        try:
            Tariff(
                per_minute=values["per_minute"],
                connect_fee=values["connect_fee"],
                initial=initial,
                increment=increment,
                decimals=values["decimals"],
                rounding=Rounding(values["rounding"]),
            )
        except ValueError as e:
            return {"increments": str(e)}
        return {}

    def rows(self, tx: Tx, key: Sequence[str] = ()) -> list[Text]:
        where, params = _where_key(("plan", "prefix"), key)
        rows = tx.fetchall(
            "SELECT plan, prefix, description, currency, connect_fee, per_minute,"
            " initial_seconds, increment_seconds, decimals, rounding, time_zone"
            f" FROM rates{where} ORDER BY plan, prefix",
            params,
        )
        out = []
        for r in rows:
            periods = tx.fetchall(
                "SELECT days, start_minute, end_minute, connect_fee, per_minute"
                " FROM rate_periods WHERE plan = ? AND prefix = ? ORDER BY step",
                (r["plan"], r["prefix"]),
            )
            out.append(
                {
                    "plan": str(r["plan"]),
                    "prefix": str(r["prefix"]),
                    "currency": str(r["currency"]),
                    "per_minute": str(sd.from_units(int(str(r["per_minute"])))),
                    "connect_fee": str(sd.from_units(int(str(r["connect_fee"])))),
                    "increments": f"{r['initial_seconds']!s}/{r['increment_seconds']!s}",
                    "decimals": str(r["decimals"]),
                    "rounding": str(r["rounding"]),
                    "time_zone": str(r["time_zone"]),
                    "periods": _format_periods(periods),
                    "description": str(r["description"]),
                }
            )
        return out

    def put(self, tx: Tx, values: Values, *, exists: bool, at: float) -> None:
        plan, prefix = values["plan"], values["prefix"]
        initial, increment = values["increments"]
        self.delete(tx, (plan, prefix))
        tx.execute(
            "INSERT INTO rates (plan, prefix, description, currency, connect_fee, per_minute,"
            " initial_seconds, increment_seconds, decimals, rounding, time_zone)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                plan,
                prefix,
                values["description"],
                values["currency"],
                sd.to_units(values["connect_fee"]),
                sd.to_units(values["per_minute"]),
                initial,
                increment,
                values["decimals"],
                values["rounding"],
                values["time_zone"],
            ),
        )
        for step, (window, per_minute, connect_fee) in enumerate(values["periods"], 1):
            tx.execute(
                "INSERT INTO rate_periods (plan, prefix, step, days, start_minute, end_minute,"
                " connect_fee, per_minute) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    plan,
                    prefix,
                    step,
                    format_days(window.days),
                    window.start,
                    window.end,
                    sd.to_units(connect_fee),
                    sd.to_units(per_minute),
                ),
            )

    def delete(self, tx: Tx, key: Sequence[str]) -> int:
        where, params = _where_key(("plan", "prefix"), key)
        tx.execute(f"DELETE FROM rate_periods{where}", params)
        return tx.execute(f"DELETE FROM rates{where}", params)


class Cards(Table):
    name = "cards"
    title = "calling cards"
    columns = (
        Column("card", _number, "the card number (digits)", key=True),
        Column("account", _name, "the account it spends"),
        Column("pin", _pin, "the PIN in clear, to set it (stored hashed; never shown)", default=""),
        Column("pin_hash", _pin_hash, "the stored hash (from an export)", default=""),
        Column(
            "status",
            _choice("active", "locked"),
            "active, or locked after 3 wrong PINs",
            default="active",
        ),
        Column("failures", _int(0), "wrong PINs in a row", default="0", integer=True),
        Column("description", _text, "free text", default=""),
    )

    def check(self, values: Values) -> dict[str, str]:
        if values["pin"] is None and values["pin_hash"] is None:
            return {"pin": "required: a PIN (or the pin_hash of an export)"}
        return {}

    def rows(self, tx: Tx, key: Sequence[str] = ()) -> list[Text]:
        where, params = _where_key(("card",), key)
        rows = tx.fetchall(
            "SELECT card, account_id, pin_hash, failures, status, description"
            f" FROM cards{where} ORDER BY card",
            params,
        )
        return [
            {
                "card": str(r["card"]),
                "account": str(r["account_id"]),
                "pin": "",
                "pin_hash": str(r["pin_hash"]),
                "status": str(r["status"]),
                "failures": str(r["failures"]),
                "description": str(r["description"]),
            }
            for r in rows
        ]

    def put(self, tx: Tx, values: Values, *, exists: bool, at: float) -> None:
        if sd.get_account(tx, values["account"]) is None:
            raise sd.DataError(f"account: no account {values['account']!r}")
        pin_hash = sd.hash_pin(values["pin"]) if values["pin"] is not None else values["pin_hash"]
        failures = values["failures"]
        if values["status"] == "active" and failures >= sd.PIN_FAILURES_LOCK:
            failures = 0  # unlocked by the operator
        self.delete(tx, (values["card"],))
        tx.execute(
            "INSERT INTO cards (card, account_id, pin_hash, failures, status, description)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                values["card"],
                values["account"],
                pin_hash,
                failures,
                values["status"],
                values["description"],
            ),
        )

    def delete(self, tx: Tx, key: Sequence[str]) -> int:
        where, params = _where_key(("card",), key)
        return tx.execute(f"DELETE FROM cards{where}", params)


class Numbers(Table):
    name = "numbers"
    title = "number translations"
    columns = (
        Column("number", _number, "the translated number (toll-free, premium...)", key=True),
        Column("step", _int(1), "the destination's place in the list", key=True, integer=True),
        Column("target", _target, "where calls go: a user, a number, a sip: URI"),
        Column("days", _days, "days it applies: mon-fri, sat,sun, all", default="all"),
        Column("hours", _hours, "hours it applies: 08:00-18:00, all", default="all"),
        Column(
            "holidays",
            _choice("any", "only", "except"),
            "any day, holidays only, or except on holidays",
            default="any",
        ),
        Column("caller_prefix", _digits, "callers it applies to (longest wins)", default=""),
        Column(
            "weight",
            _int(0),
            "share among destinations of the same priority",
            default="1",
            integer=True,
        ),
        Column("priority", _int(0), "overflow order: lowest first", default="0", integer=True),
        Column("time_zone", _time_zone, "the time zone of days and hours", default="UTC"),
    )

    def rows(self, tx: Tx, key: Sequence[str] = ()) -> list[Text]:
        where, params = _where_key(("service_number", "step"), key)
        rows = tx.fetchall(
            "SELECT service_number, step, target, days, start_minute, end_minute, holidays,"
            " caller_prefix, weight, priority, time_zone"
            f" FROM translations{where} ORDER BY service_number, step",
            params,
        )
        return [
            {
                "number": str(r["service_number"]),
                "step": str(r["step"]),
                "target": str(r["target"]),
                "days": str(r["days"]),
                "hours": _hours_text(int(str(r["start_minute"])), int(str(r["end_minute"]))),
                "holidays": str(r["holidays"]),
                "caller_prefix": str(r["caller_prefix"]),
                "weight": str(r["weight"]),
                "priority": str(r["priority"]),
                "time_zone": str(r["time_zone"]),
            }
            for r in rows
        ]

    def put(self, tx: Tx, values: Values, *, exists: bool, at: float) -> None:
        self.delete(tx, (values["number"], str(values["step"])))
        start, end = values["hours"]
        tx.execute(
            "INSERT INTO translations (service_number, step, target, days, start_minute,"
            " end_minute, holidays, caller_prefix, weight, priority, time_zone)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                values["number"],
                values["step"],
                values["target"],
                format_days(values["days"]),
                start,
                end,
                values["holidays"],
                values["caller_prefix"],
                values["weight"],
                values["priority"],
                values["time_zone"],
            ),
        )

    def delete(self, tx: Tx, key: Sequence[str]) -> int:
        where, params = _where_key(("service_number", "step"), key)
        return tx.execute(f"DELETE FROM translations{where}", params)


class Holidays(Table):
    name = "holidays"
    title = "holidays (for number translations)"
    columns = (
        Column("date", _date, "YYYY-MM-DD", key=True),
        Column("name", _text, "free text", default=""),
    )

    def rows(self, tx: Tx, key: Sequence[str] = ()) -> list[Text]:
        where, params = _where_key(("calendar_day",), key)
        rows = tx.fetchall(
            f"SELECT calendar_day, name FROM holidays{where} ORDER BY calendar_day",
            params,
        )
        return [{"date": str(r["calendar_day"]), "name": str(r["name"])} for r in rows]

    def put(self, tx: Tx, values: Values, *, exists: bool, at: float) -> None:
        self.delete(tx, (values["date"],))
        tx.execute(
            "INSERT INTO holidays (calendar_day, name) VALUES (?, ?)",
            (values["date"], values["name"]),
        )

    def delete(self, tx: Tx, key: Sequence[str]) -> int:
        where, params = _where_key(("calendar_day",), key)
        return tx.execute(f"DELETE FROM holidays{where}", params)


_FORWARD_KINDS = ("always", "busy", "no-answer", "unavailable", "hunt")


class Forwarding(Table):
    name = "forwarding"
    title = "call forwarding and hunting"
    columns = (
        Column("subscriber", _name, "the forwarded user", key=True),
        Column("kind", _choice(*_FORWARD_KINDS), ", ".join(_FORWARD_KINDS), key=True),
        Column(
            "step",
            _int(1),
            "place in the hunting list (1 otherwise)",
            default="1",
            key=True,
            integer=True,
        ),
        Column("target", _target, "where calls go: a user, a number, a sip: URI"),
        Column(
            "ring_seconds",
            _optional_int(1),
            "no-answer: ring the subscriber this long; hunt: ring this step this long",
            default="",
            integer=True,
        ),
    )

    def check(self, values: Values) -> dict[str, str]:
        kind, seconds = values["kind"], values["ring_seconds"]
        if kind in ("no-answer", "hunt") and seconds is None:
            return {"ring_seconds": f"required for {kind}"}
        if kind not in ("no-answer", "hunt") and seconds is not None:
            return {"ring_seconds": f"only for no-answer and hunt, not {kind}"}
        if kind != "hunt" and values["step"] != 1:
            return {"step": f"only hunt has steps; {kind} has one target (step 1)"}
        return {}

    def rows(self, tx: Tx, key: Sequence[str] = ()) -> list[Text]:
        where, params = _where_key(("subscriber", "kind", "step"), key)
        rows = tx.fetchall(
            "SELECT subscriber, kind, step, target, ring_seconds"
            f" FROM forwarding{where} ORDER BY subscriber, kind, step",
            params,
        )
        return [
            {
                "subscriber": str(r["subscriber"]),
                "kind": str(r["kind"]),
                "step": str(r["step"]),
                "target": str(r["target"]),
                "ring_seconds": "" if r["ring_seconds"] is None else str(r["ring_seconds"]),
            }
            for r in rows
        ]

    def put(self, tx: Tx, values: Values, *, exists: bool, at: float) -> None:
        self.delete(tx, (values["subscriber"], values["kind"], str(values["step"])))
        tx.execute(
            "INSERT INTO forwarding (subscriber, kind, step, target, ring_seconds)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                values["subscriber"],
                values["kind"],
                values["step"],
                values["target"],
                values["ring_seconds"],
            ),
        )

    def delete(self, tx: Tx, key: Sequence[str]) -> int:
        where, params = _where_key(("subscriber", "kind", "step"), key)
        return tx.execute(f"DELETE FROM forwarding{where}", params)


class ScreeningTable(Table):
    name = "screening"
    title = "screening lists (subscriber * is the operator-wide allow list)"
    columns = (
        Column("subscriber", _name, "the callee, or * for the operator-wide list", key=True),
        Column(
            "kind",
            _choice("block", "allow", "reject-anonymous"),
            "block, allow (caller prefixes), reject-anonymous",
            key=True,
        ),
        Column(
            "prefix",
            _digits,
            "caller prefix, longest match wins (empty: every caller)",
            default="",
            key=True,
        ),
    )

    def check(self, values: Values) -> dict[str, str]:
        if values["subscriber"] == sd.OPERATOR and values["kind"] != "allow":
            return {"kind": "the operator-wide list (*) is an allow list only"}
        if values["kind"] == "reject-anonymous" and values["prefix"]:
            return {"prefix": "reject-anonymous takes no prefix"}
        return {}

    def rows(self, tx: Tx, key: Sequence[str] = ()) -> list[Text]:
        where, params = _where_key(("subscriber", "kind", "prefix"), key)
        rows = tx.fetchall(
            "SELECT subscriber, kind, prefix"
            f" FROM screening{where} ORDER BY subscriber, kind, prefix",
            params,
        )
        return [
            {"subscriber": str(r["subscriber"]), "kind": str(r["kind"]), "prefix": str(r["prefix"])}
            for r in rows
        ]

    def put(self, tx: Tx, values: Values, *, exists: bool, at: float) -> None:
        self.delete(tx, (values["subscriber"], values["kind"], values["prefix"]))
        tx.execute(
            "INSERT INTO screening (subscriber, kind, prefix) VALUES (?, ?, ?)",
            (values["subscriber"], values["kind"], values["prefix"]),
        )

    def delete(self, tx: Tx, key: Sequence[str]) -> int:
        where, params = _where_key(("subscriber", "kind", "prefix"), key)
        return tx.execute(f"DELETE FROM screening{where}", params)


TABLES: dict[str, Table] = {
    t.name: t
    for t in (Accounts(), Rates(), Cards(), Numbers(), Holidays(), Forwarding(), ScreeningTable())
}

# --- add, change, import, export ---------------------------------------------------------


@dataclass(frozen=True)
class CellError:
    line: int  # 1 is the header; 0: not from a file
    column: str  # '' when the error is the row's as a whole
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "row"
        return (
            f"{where}, column {self.column}: {self.message}"
            if self.column
            else (f"{where}: {self.message}")
        )


class Invalid(sd.DataError):
    """Rows refused; nothing was written. One `CellError` per problem."""

    def __init__(self, errors: Sequence[CellError]) -> None:
        super().__init__("\n".join(map(str, errors)))
        self.errors = list(errors)


def add(tx: Tx, table: Table, cells: Mapping[str, str], *, at: float) -> Text:
    """Add a row (the missing cells take their defaults); Invalid if its key exists."""
    values, errors = table.parse(cells)
    if errors:
        raise Invalid([CellError(0, c, m) for c, m in errors.items()])
    key = table.key_of(values)
    if table.find(tx, key) is not None:
        raise Invalid([CellError(0, "", f"{table.name} {' '.join(key)} exists: use change")])
    _put(tx, table, values, exists=False, at=at, line=0)
    found = table.find(tx, key)
    assert found is not None
    return found


def change(
    tx: Tx, table: Table, key: Sequence[str], cells: Mapping[str, str], *, at: float
) -> Text:
    """Change some cells of the row with `key`; the others keep their values."""
    old = table.find(tx, key)
    if old is None:
        raise Invalid([CellError(0, "", f"no {table.name} {' '.join(key)}")])
    for name in cells:
        column = table.column(name)
        if column.key or not column.changeable:
            raise Invalid([CellError(0, name, "cannot be changed")])
    merged = {**old, **cells}
    values, errors = table.parse(merged)
    if errors:
        raise Invalid([CellError(0, c, m) for c, m in errors.items()])
    _put(tx, table, values, exists=True, at=at, line=0)
    found = table.find(tx, key)
    assert found is not None
    return found


def _put(tx: Tx, table: Table, values: Values, *, exists: bool, at: float, line: int) -> None:
    try:
        table.put(tx, values, exists=exists, at=at)
    except sd.DataError as e:
        column, sep, message = str(e).partition(": ")
        if sep and column in {c.name for c in table.columns}:
            raise Invalid([CellError(line, column, message)]) from None
        raise Invalid([CellError(line, "", str(e))]) from None


def read_csv(table: Table, text: str) -> list[tuple[int, Text]]:
    """The rows of a CSV file with a header of column names, with their line numbers;
    Invalid for an unknown or missing column in the header."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    names = {c.name for c in table.columns}
    errors = [CellError(1, h, "unknown column") for h in header if h not in names]
    errors += [
        CellError(1, c.name, "missing from the header (required)")
        for c in table.columns
        if c.default is None and c.name not in header
    ]
    if not header:
        errors.append(CellError(1, "", f"no header: the columns are {', '.join(sorted(names))}"))
    if errors:
        raise Invalid(errors)
    rows: list[tuple[int, Text]] = []
    for row in reader:
        extra = row.get(None)
        line = reader.line_num
        if extra:
            raise Invalid([CellError(line, "", f"{len(extra)} more cells than the header")])
        rows.append((line, {k: v if v is not None else "" for k, v in row.items()}))
    return rows


def import_rows(
    tx: Tx, table: Table, rows: Sequence[tuple[int, Text]], *, at: float, replace: bool = False
) -> tuple[int, int]:
    """Write every row (add or replace by key), all or nothing: Invalid lists every bad
    line and column, and the caller's transaction must then be rolled back (raising it
    from `Store.transaction` does that). With `replace`, rows absent from the file are
    removed. Returns (rows written, rows removed)."""
    errors: list[CellError] = []
    parsed: list[tuple[int, Values]] = []
    seen: dict[tuple[str, ...], int] = {}
    for line, cells in rows:
        values, bad = table.parse(cells)
        errors += [CellError(line, c, m) for c, m in bad.items()]
        if bad:
            continue
        key = table.key_of(values)
        if key in seen:
            errors.append(
                CellError(
                    line, table.keys[-1].name, f"key {' '.join(key)} is on line {seen[key]} too"
                )
            )
            continue
        seen[key] = line
        parsed.append((line, values))
    if errors:
        raise Invalid(errors)
    removed = 0
    if replace:
        for row in table.rows(tx):
            key = tuple(row[c.name] for c in table.keys)
            if key not in seen:
                removed += table.delete(tx, key)
    for line, values in parsed:
        exists = table.find(tx, table.key_of(values)) is not None
        try:
            _put(tx, table, values, exists=exists, at=at, line=line)
        except Invalid as e:
            errors += e.errors
    if errors:
        raise Invalid(errors)
    return len(parsed), removed


def export_csv(table: Table, rows: Iterable[Text]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(
        out, fieldnames=[c.name for c in table.columns], extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return out.getvalue()


__all__ = [
    "TABLES",
    "CellError",
    "Column",
    "Invalid",
    "Table",
    "add",
    "change",
    "export_csv",
    "import_rows",
    "parse_money",
    "read_csv",
]
