"""`twinline accounts|rates|cards|numbers|holidays|forwarding|screening ...`: the service
data in the deployment's database, for operators.

Each table gets the same commands, built from its columns (`twinline.store.datatables`):
list, show, add, change, remove, import, export; accounts also top-up, adjust, ledger
and reservations. The database is the configuration's (`--config`, [database] url).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import click

from twinline.store import datatables as dt
from twinline.store import servicedata as sd
from twinline.store.base import Store, Tx

T = TypeVar("T")

_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The deployment's TOML configuration file: its [database] url is used.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _with_store(config_path: str | None, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configuration's database, run `fn` on it, close it; errors as the CLI's."""
    from twinline.config import ConfigError, load_config  # noqa: PLC0415
    from twinline.errors import StartupError  # noqa: PLC0415
    from twinline.store import StoreError, open_database  # noqa: PLC0415

    try:
        config = load_config(config_path)
    except ConfigError as e:
        raise click.ClickException(f"configuration error: {e}") from None

    async def main() -> T:
        store = await open_database(config.database)
        try:
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except dt.Invalid as e:
        raise click.ClickException("refused, nothing written:\n" + str(e)) from None
    except (sd.DataError, StartupError, StoreError) as e:
        raise click.ClickException(str(e)) from None


def _option_name(column: dt.Column) -> str:
    return "--" + column.name.replace("_", "-")


def _print_rows(table: dt.Table, rows: Sequence[dt.Text], as_json: bool, *, one: bool) -> None:
    if as_json:
        data: Any = [table.to_json(r) for r in rows]
        click.echo(json.dumps(data[0] if one and len(data) == 1 else data, indent=2))
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table as RichTable  # noqa: PLC0415

    console = Console()
    if one and len(rows) == 1:
        grid = RichTable(show_header=False, title=f"{table.name}")
        grid.add_column("column", style="bold")
        grid.add_column("value")
        for name, value in rows[0].items():
            grid.add_row(name, value)
        console.print(grid)
        return
    names = list(rows[0]) if rows else [c.name for c in table.columns]
    out = RichTable(title=f"{table.title}: {len(rows)}")
    for name in names:
        out.add_column(name)
    for r in rows:
        out.add_row(*(r.get(n, "") for n in names))
    console.print(out)


def _key_cells(table: dt.Table, key: Sequence[str], *, complete: bool) -> dict[str, str]:
    """Key values given on the command line, by column; with `complete`, the missing ones
    take their defaults, or fail naming them."""
    columns = table.keys
    if len(key) > len(columns):
        names = " ".join(c.name.upper() for c in columns)
        raise click.UsageError(f"too many values: the key of {table.name} is {names}")
    cells = {c.name: v for c, v in zip(columns, key, strict=False)}
    if complete:
        for c in columns[len(key) :]:
            if c.default is None:
                raise click.UsageError(f"{c.name.upper()} is missing (the key of {table.name})")
            cells[c.name] = c.default
    return cells


def _table_group(table: dt.Table) -> click.Group:
    key_help = " ".join(c.name.upper() for c in table.keys)

    @click.group(name=table.name, help=f"Manage {table.title}. Key: {key_help}.")
    def group() -> None:
        pass

    @group.command(name="list")
    @_json_option
    @_config_option
    def list_(as_json: bool, config_path: str | None) -> None:
        """Every row."""
        rows = _with_store(config_path, lambda s: s.read(table.rows))
        _print_rows(table, rows, as_json, one=False)

    @group.command()
    @click.argument("key", nargs=-1, required=True)
    @_json_option
    @_config_option
    def show(key: tuple[str, ...], as_json: bool, config_path: str | None) -> None:
        """The rows whose key starts with KEY."""
        _key_cells(table, key, complete=False)
        rows = _with_store(config_path, lambda s: s.read(lambda tx: table.rows(tx, key)))
        if not rows:
            raise click.ClickException(f"no {table.name} {' '.join(key)}")
        _print_rows(table, rows, as_json, one=len(key) == len(table.keys))

    def cell_options(fn: Callable[..., None], *, for_change: bool) -> Callable[..., None]:
        for column in reversed(table.columns):
            if column.key or (for_change and not column.changeable):
                continue
            default = "" if column.default is None else f" [default: {column.default!r}]"
            fn = click.option(
                _option_name(column),
                column.name,
                default=None,
                help=column.help + ("" if for_change else default),
            )(fn)
        return fn

    def add(
        key: tuple[str, ...], config_path: str | None, as_json: bool, **cells: str | None
    ) -> None:
        given = {k: v for k, v in cells.items() if v is not None}
        given.update(_key_cells(table, key, complete=True))
        row = _with_store(
            config_path,
            lambda s: s.transaction(
                f"add {table.name}", lambda tx: dt.add(tx, table, given, at=time.time())
            ),
        )
        _print_rows(table, [row], as_json, one=True)

    add.__doc__ = f"Add a row: KEY is {key_help}."
    group.command(name="add")(
        click.argument("key", nargs=-1, required=True)(
            _json_option(_config_option(cell_options(add, for_change=False)))
        )
    )

    def change(
        key: tuple[str, ...], config_path: str | None, as_json: bool, **cells: str | None
    ) -> None:
        given = {k: v for k, v in cells.items() if v is not None}
        if not given:
            raise click.UsageError("nothing to change: give an option per column to change")
        full = tuple(_key_cells(table, key, complete=True).values())
        row = _with_store(
            config_path,
            lambda s: s.transaction(
                f"change {table.name}",
                lambda tx: dt.change(tx, table, full, given, at=time.time()),
            ),
        )
        _print_rows(table, [row], as_json, one=True)

    change.__doc__ = f"Change some columns of the row with key {key_help}."
    group.command(name="change")(
        click.argument("key", nargs=-1, required=True)(
            _json_option(_config_option(cell_options(change, for_change=True)))
        )
    )

    @group.command()
    @click.argument("key", nargs=-1, required=True)
    @_config_option
    def remove(key: tuple[str, ...], config_path: str | None) -> None:
        """Remove the rows whose key starts with KEY."""
        _key_cells(table, key, complete=False)

        def delete(tx: Tx) -> int:
            return table.delete(tx, key)

        count = _with_store(config_path, lambda s: s.transaction(f"remove {table.name}", delete))
        if not count:
            raise click.ClickException(f"no {table.name} {' '.join(key)}")
        click.echo(f"{table.name}: {count} removed")

    @group.command(name="import")
    @click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
    @click.option("--replace", is_flag=True, help="Also remove the rows that are not in the file.")
    @_config_option
    def import_(file: str, replace: bool, config_path: str | None) -> None:
        """Add or replace rows from a CSV FILE with a header of column names ('-': stdin);
        all or nothing: every bad line is reported and nothing is written."""
        text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8-sig")
        try:
            rows = dt.read_csv(table, text)
        except dt.Invalid as e:
            raise click.ClickException(f"{file}: refused, nothing written:\n{e}") from None

        def write(tx: Tx) -> tuple[int, int]:
            return dt.import_rows(tx, table, rows, at=time.time(), replace=replace)

        try:
            written, removed = _with_store(
                config_path, lambda s: s.transaction(f"import {table.name}", write)
            )
        except click.ClickException as e:
            raise click.ClickException(f"{file}: {e.message}") from None
        click.echo(f"{table.name}: {written} rows written, {removed} removed, from {file}")

    @group.command(name="export")
    @click.argument("file", type=click.Path(dir_okay=False, allow_dash=True), default="-")
    @_config_option
    def export(file: str, config_path: str | None) -> None:
        """Every row as CSV, to FILE (default: stdout)."""
        rows = _with_store(config_path, lambda s: s.read(table.rows))
        text = dt.export_csv(table, rows)
        if file == "-":
            click.echo(text, nl=False)
        else:
            Path(file).write_text(text, encoding="utf-8")

    return group


def _amount(value: str) -> Decimal:
    try:
        return dt.parse_money(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _account_commands(group: click.Group) -> None:
    def ledger_change(kind: str) -> Callable[..., None]:
        def command(
            account_id: str, amount: str, reason: str, key: str | None, config_path: str | None
        ) -> None:
            value = _amount(amount)
            op = sd.top_up if kind == "top-up" else sd.adjust

            def write(tx: Tx) -> sd.LedgerEntry:
                return op(tx, account_id, value, reason, at=time.time(), key=key)

            entry = _with_store(config_path, lambda s: s.transaction(f"{kind} {account_id}", write))
            click.echo(
                f"{account_id}: {kind} {entry.amount:+} ({entry.reason}), balance {entry.balance}"
                f" (ledger entry {entry.seq})"
            )

        return command

    for kind, doc in (
        ("top-up", "Credit ACCOUNT_ID with AMOUNT, recorded in its ledger."),
        ("adjust", "Correct ACCOUNT_ID's balance by AMOUNT (+ or -), recorded in its ledger."),
    ):
        fn = ledger_change(kind)
        fn.__doc__ = doc
        # A negative AMOUNT (-0.25) is an argument, not an unknown option.
        group.command(name=kind, context_settings={"ignore_unknown_options": True})(
            click.argument("account_id")(
                click.argument("amount")(
                    click.option("--reason", required=True, help="Why: kept in the ledger.")(
                        click.option(
                            "--key",
                            default=None,
                            help="An idempotency key (a payment reference): applied once.",
                        )(_config_option(fn))
                    )
                )
            )
        )

    @group.command()
    @click.argument("account_id")
    @click.option("--limit", type=click.IntRange(1), default=None, help="The last N entries.")
    @_json_option
    @_config_option
    def ledger(account_id: str, limit: int | None, as_json: bool, config_path: str | None) -> None:
        """ACCOUNT_ID's balance changes, oldest first."""
        entries = _with_store(
            config_path, lambda s: s.read(lambda tx: sd.ledger(tx, account_id, limit=limit))
        )
        rows = [
            {
                "seq": str(e.seq),
                "at": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.at)),
                "kind": e.kind,
                "amount": f"{e.amount:+}",
                "balance": str(e.balance),
                "reason": e.reason,
                "call_id": e.call_id or "",
            }
            for e in entries
        ]
        if as_json:
            data = [{**r, "seq": e.seq, "at": e.at} for r, e in zip(rows, entries, strict=True)]
            click.echo(json.dumps(data, indent=2))
            return
        from rich.console import Console  # noqa: PLC0415
        from rich.table import Table as RichTable  # noqa: PLC0415

        out = RichTable(title=f"ledger of {account_id} (UTC)")
        for name in ("seq", "at", "kind", "amount", "balance", "reason", "call_id"):
            out.add_column(name)
        for r in rows:
            out.add_row(*r.values())
        Console().print(out)

    @group.command()
    @click.argument("call_id")
    @_config_option
    def release(call_id: str, config_path: str | None) -> None:
        """Release the credit held by CALL_ID, a call that no longer exists (refused while
        the call is in progress); nothing is debited."""

        def write(tx: Tx) -> sd.Settlement:
            return sd.release_stale(tx, call_id, at=time.time())

        settled = _with_store(config_path, lambda s: s.transaction(f"release {call_id}", write))
        click.echo(f"{call_id}: hold released on {settled.account_id}, nothing debited")

    @group.command()
    @click.argument("account_id", required=False)
    @_json_option
    @_config_option
    def reservations(account_id: str | None, as_json: bool, config_path: str | None) -> None:
        """Credit held by calls in progress (of ACCOUNT_ID, or of every account)."""
        held = _with_store(
            config_path, lambda s: s.read(lambda tx: sd.open_reservations(tx, account_id))
        )
        rows = [
            {
                "call_id": r.call_id,
                "account": r.account_id,
                "amount": str(r.amount),
                "since": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(r.created_at)),
            }
            for r in held
        ]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        for r in rows:
            click.echo(f"{r['call_id']}  {r['account']}  {r['amount']}  since {r['since']} UTC")


def _rate_commands(group: click.Group) -> None:
    @group.command()
    @click.argument("destination")
    @click.argument("seconds", type=click.IntRange(0))
    @click.option("--plan", default="default", show_default=True, help="The rate plan.")
    @click.option("--currency", default="EUR", show_default=True, help="The account's currency.")
    @click.option(
        "--at",
        "answered",
        default=None,
        help="When the call is answered, ISO 8601 with its offset (default: now).",
    )
    @click.option("--credit", default=None, help="Also show how long this credit lasts.")
    @_json_option
    @_config_option
    def quote(
        destination: str,
        seconds: int,
        *,
        plan: str,
        currency: str,
        answered: str | None,
        credit: str | None,
        as_json: bool,
        config_path: str | None,
    ) -> None:
        """What SECONDS of talk to DESTINATION cost: the rate, the period, the billed time."""
        from datetime import datetime  # noqa: PLC0415

        from twinline.services import rating  # noqa: PLC0415

        try:
            at = datetime.fromisoformat(answered).timestamp() if answered else time.time()
        except ValueError:
            raise click.BadParameter(f"{answered!r}: write 2026-11-30T09:00+01:00") from None
        rate = _with_store(
            config_path,
            lambda s: s.read(lambda tx: sd.find_rate(tx, plan, destination, currency.upper())),
        )
        if rate is None:
            raise click.ClickException(
                f"no rate for {destination} in plan {plan!r} in {currency.upper()}"
            )
        tariff = rate.tariff_at(at)
        quote: dict[str, Any] = {
            "prefix": rate.prefix,
            "per_minute": str(tariff.per_minute),
            "connect_fee": str(tariff.connect_fee),
            "increments": f"{tariff.initial}/{tariff.increment}",
            "billed_seconds": rating.billed_seconds(seconds, tariff.initial, tariff.increment),
            "cost": str(rating.cost(tariff, seconds)),
        }
        if credit is not None:
            lasts = rating.duration_for(tariff, _amount(credit))
            quote["credit"] = credit
            quote["credit_seconds"] = lasts
        if as_json:
            click.echo(json.dumps(quote, indent=2))
            return
        for name, value in quote.items():
            click.echo(f"{name}: {'no limit' if value is None else value}")


def register(main: click.Group) -> None:
    """Add the service data commands to the `twinline` command."""
    for table in dt.TABLES.values():
        group = _table_group(table)
        if table.name == "accounts":
            _account_commands(group)
        if table.name == "rates":
            _rate_commands(group)
        main.add_command(group)
