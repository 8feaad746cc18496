"""`twinline accounts|rates|cards|numbers|holidays|forwarding|screening`: CSV imports all
or nothing with every bad line named, exports that import back, --json, the ledger."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from twinline.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "twinline.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "twinline.db"}"\n')
    return path


def cli(config: Path, *args: str, ok: bool = True) -> Result:
    result = CliRunner().invoke(main, [*args, "--config", str(config)])
    if ok:
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code != 0, result.output
    return result


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


ACCOUNTS = """\
id,currency,balance,credit_limit,max_calls,identities
acme,EUR,10,0,5,alice +33123456
globex,EUR,2.50,1,,bob
"""

RATES = """\
plan,prefix,currency,per_minute,connect_fee,increments,decimals,rounding,time_zone,periods
default,,EUR,0.10,0,60/60,4,up,UTC,
default,33,EUR,0.006,0,30/6,4,up,Europe/Paris,"mon-fri 08:00-18:00 0.01; sat,sun all 0.002 0.01"
default,336,EUR,0.05,0.02,1/1,2,half-up,Europe/Paris,
"""


def test_a_file_with_bad_rows_writes_nothing_and_names_each_bad_line(
    config: Path, tmp_path: Path
) -> None:
    cli(config, "accounts", "import", str(write(tmp_path, "a.csv", ACCOUNTS)))
    bad = write(
        tmp_path,
        "rates.csv",
        RATES
        + "default,44,EUR,zero,0,60/60,4,up,UTC,\n"  # line 5: per_minute
        + "default,49,EURO,0.01,0,60/0,4,sideways,Mars/Olympus,\n"  # line 6: four cells
        + "default,33,EUR,0.01,0,60/60,4,up,UTC,\n"  # line 7: key of line 3 again
        + "default,1,EUR,0.01,0,60/60,9,up,UTC,mon-fry 08:00-18:00 0.01\n",  # line 8
    )
    result = cli(config, "rates", "import", str(bad), ok=False)
    out = result.output
    assert "nothing written" in out
    assert "line 5, column per_minute: 'zero' is not an amount" in out
    assert "line 6, column currency:" in out
    assert "line 6, column increments:" in out
    assert "line 6, column rounding: 'sideways'" in out
    assert "line 6, column time_zone: unknown time zone 'Mars/Olympus'" in out
    assert "line 7, column prefix: key default 33 is on line 3 too" in out
    assert "line 8, column decimals:" in out
    assert "line 8, column periods: unknown day" in out
    assert "line 2" not in out and "line 3," not in out and "line 4" not in out
    # The good rows of the file were not written either.
    assert json.loads(cli(config, "rates", "list", "--json").output) == []

    # A row the database refuses (a card of an unknown account) also fails it all.
    cards = write(
        tmp_path,
        "cards.csv",
        "card,account,pin\n5550001,acme,1234\n5550002,initech,1234\n5550003,acme,12\n",
    )
    out = cli(config, "cards", "import", str(cards), ok=False).output
    assert "line 4, column pin: a PIN is 4 to 12 digits" in out
    assert json.loads(cli(config, "cards", "list", "--json").output) == []
    cards.write_text("card,account,pin\n5550001,acme,1234\n5550002,initech,1234\n")
    out = cli(config, "cards", "import", str(cards), ok=False).output
    assert "line 3, column account: no account 'initech'" in out
    assert json.loads(cli(config, "cards", "list", "--json").output) == []


def test_a_header_with_an_unknown_or_missing_column_is_refused(
    config: Path, tmp_path: Path
) -> None:
    bad = write(tmp_path, "n.csv", "number,target,colour\n0800,alice,blue\n")
    out = cli(config, "numbers", "import", str(bad), ok=False).output
    assert "line 1, column colour: unknown column" in out
    assert "line 1, column step: missing from the header (required)" in out


def test_export_then_import_gives_the_same_tables(config: Path, tmp_path: Path) -> None:
    files = {
        "accounts": ACCOUNTS,
        "rates": RATES,
        "cards": "card,account,pin,description\n5550001,acme,1234,blue card\n",
        "numbers": "number,step,target,days,hours,holidays,caller_prefix,weight,time_zone\n"
        "0800123,1,alice,mon-fri,08:00-18:00,except,,70,Europe/Paris\n"
        "0800123,2,bob,mon-fri,08:00-18:00,except,,30,Europe/Paris\n"
        "0800123,3,night,all,18:00-08:00,any,33,1,Europe/Paris\n",
        "holidays": "date,name\n2026-12-25,Christmas\n2027-01-01,New Year\n",
        "forwarding": "subscriber,kind,step,target,ring_seconds\n"
        "bob,busy,1,voicemail,\nbob,hunt,1,alice,10\nbob,hunt,2,carol,15\n",
        "screening": "subscriber,kind,prefix\nbob,block,33\nbob,reject-anonymous,\n*,allow,112\n",
    }
    exported: dict[str, str] = {}
    for table, text in files.items():
        cli(config, table, "import", str(write(tmp_path, f"{table}.csv", text)))
        exported[table] = cli(config, table, "export").output

    other = tmp_path / "other"
    other.mkdir()
    config2 = other / "twinline.toml"
    config2.write_text(f'[database]\nurl = "sqlite:///{other / "twinline.db"}"\n')
    for table, text in exported.items():
        path = write(other, f"{table}.csv", text)
        cli(config2, table, "import", str(path))
        assert cli(config2, table, "export").output == text, table
        # Importing an export again changes nothing (the balance included).
        cli(config2, table, "import", str(path))
        assert cli(config2, table, "export").output == text, table
    ledger = json.loads(cli(config2, "accounts", "ledger", "acme", "--json").output)
    assert [(e["kind"], e["amount"]) for e in ledger] == [("opening", "+10.00")]
    # The card's PIN came across as its hash: it still opens the card.
    export = exported["cards"]
    assert "1234" not in export.split("\n")[1].split(",")[2]


def test_replace_removes_the_rows_not_in_the_file(config: Path, tmp_path: Path) -> None:
    cli(
        config,
        "holidays",
        "import",
        str(write(tmp_path, "h.csv", "date\n2026-12-25\n2026-12-26\n")),
    )
    cli(
        config,
        "holidays",
        "import",
        "--replace",
        str(write(tmp_path, "h2.csv", "date\n2026-12-25\n")),
    )
    dates = [r["date"] for r in json.loads(cli(config, "holidays", "list", "--json").output)]
    assert dates == ["2026-12-25"]


def test_json_output_and_the_ledger(config: Path, tmp_path: Path) -> None:
    options = ("--currency", "EUR", "--balance", "10", "--identities", "alice +33123")
    cli(config, "accounts", "add", "acme", *options, "--max-calls", "2")
    shown = json.loads(cli(config, "accounts", "show", "acme", "--json").output)
    assert shown == {
        "id": "acme",
        "currency": "EUR",
        "balance": "10.00",
        "credit_limit": "0.00",
        "max_calls": 2,
        "status": "active",
        "rate_plan": "default",
        "identities": "33123 alice",
        "description": "",
        "reserved": "0.00",
        "open_calls": 0,
    }
    out = cli(config, "accounts", "top-up", "acme", "5.25", "--reason", "voucher 9", "--key", "v9")
    assert "balance 15.25" in out.output
    cli(config, "accounts", "top-up", "acme", "5.25", "--reason", "voucher 9", "--key", "v9")
    cli(config, "accounts", "adjust", "acme", "-0.25", "--reason", "refund reversal")
    refused = cli(config, "accounts", "adjust", "acme", "-100", "--reason", "x", ok=False)
    assert "below its credit limit" in refused.output
    ledger = json.loads(cli(config, "accounts", "ledger", "acme", "--json").output)
    assert [(e["seq"], e["kind"], e["amount"], e["balance"], e["reason"]) for e in ledger] == [
        (1, "opening", "+10.00", "10.00", "opening balance"),
        (2, "top-up", "+5.25", "15.25", "voucher 9"),
        (3, "adjustment", "-0.25", "15.00", "refund reversal"),
    ]
    listed = json.loads(cli(config, "accounts", "list", "--json").output)
    assert [a["balance"] for a in listed] == ["15.00"]

    cli(config, "accounts", "change", "acme", "--max-calls", "", "--status", "suspended")
    changed = json.loads(cli(config, "accounts", "show", "acme", "--json").output)
    assert (changed["max_calls"], changed["status"], changed["balance"]) == (
        "",
        "suspended",
        "15.00",
    )
    no_balance = cli(config, "accounts", "change", "acme", "--balance", "1", ok=False)
    assert "No such option: --balance" in no_balance.output
    dup = cli(config, "accounts", "add", "acme", "--currency", "EUR", ok=False)
    assert "exists" in dup.output
    busy = cli(config, "accounts", "remove", "acme", ok=False)
    assert "only an empty, idle account can be removed" in busy.output


def test_keys_with_defaults_and_key_prefixes(config: Path) -> None:
    cli(config, "screening", "add", "bob", "reject-anonymous")
    cli(config, "screening", "add", "bob", "block", "33")
    cli(config, "forwarding", "add", "bob", "busy", "--target", "voicemail")
    rows = json.loads(cli(config, "screening", "show", "bob", "--json").output)
    assert [(r["kind"], r["prefix"]) for r in rows] == [("block", "33"), ("reject-anonymous", "")]
    assert "2 removed" in cli(config, "screening", "remove", "bob").output
    assert "no screening bob" in cli(config, "screening", "show", "bob", ok=False).output
    missing = cli(config, "forwarding", "add", "bob", ok=False)
    assert "KIND is missing" in missing.output


def test_quote_a_call_and_release_a_stale_hold(config: Path, tmp_path: Path) -> None:
    cli(config, "rates", "import", str(write(tmp_path, "rates.csv", RATES)))
    sunday = ("--at", "2026-11-29T12:00+01:00", "--credit", "0.0036", "--json")
    quote = json.loads(cli(config, "rates", "quote", "+33145", "75", *sunday).output)
    # A Sunday in Paris: the weekend period (0.002 a minute, 0.01 to connect), billed 30/6.
    assert quote == {
        "prefix": "33",
        "per_minute": "0.002",
        "connect_fee": "0.01",
        "increments": "30/6",
        "billed_seconds": 78,
        "cost": "0.0126",
        "credit": "0.0036",
        "credit_seconds": 0,
    }
    weekday = cli(config, "rates", "quote", "33145", "75", "--at", "2026-11-30T12:00+01:00")
    assert "cost: 0.013" in weekday.output  # peak: 0.01 a minute for 78 s
    dollars = cli(config, "rates", "quote", "1", "60", "--currency", "USD", ok=False)
    assert "no rate" in dollars.output

    from twinline.store import SqliteStore
    from twinline.store import servicedata as sd

    cli(config, "accounts", "import", str(write(tmp_path, "a.csv", ACCOUNTS)))

    async def hold() -> None:
        async with SqliteStore(tmp_path / "twinline.db") as store:
            await store.transaction(
                "hold", lambda tx: sd.reserve(tx, "acme", "lost-call", Decimal(2), at=0)
            )

    asyncio.run(hold())
    listed = json.loads(cli(config, "accounts", "reservations", "--json").output)
    assert [(r["call_id"], r["amount"]) for r in listed] == [("lost-call", "2.00")]
    assert "hold released on acme" in cli(config, "accounts", "release", "lost-call").output
    assert "settled already" in cli(config, "accounts", "release", "lost-call", ok=False).output
    shown = json.loads(cli(config, "accounts", "show", "acme", "--json").output)
    assert (shown["balance"], shown["reserved"], shown["open_calls"]) == ("10.00", "0.00", 0)
