"""The `twinline` command."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

import click

from twinline import cli_data, gcpolicy
from twinline.config import Config, ConfigError, load_config


def _setup_logging(level: str, fmt: str = "text", process: str = "twinline") -> None:
    from twinline.ops.logs import setup_logging  # noqa: PLC0415

    setup_logging(level, "json" if fmt == "json" else "text", process=process)


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise click.ClickException(f"configuration error: {e}") from None


def _preflight(config: Config, role: str) -> None:
    """What this host must give the processes of `role` (free ports, TLS files, ...)."""
    from twinline.ops.preflight import preflight  # noqa: PLC0415

    try:
        preflight(config, role)
    except ConfigError as e:
        raise click.ClickException(f"configuration error: {e}") from None


def _run(coro: Coroutine[Any, Any, None]) -> None:
    from twinline.errors import StartupError  # noqa: PLC0415

    runner: Any = asyncio.run
    try:
        import uvloop  # noqa: PLC0415 - optional: the standard loop is the fallback

        runner = uvloop.run
    except ImportError:
        pass
    gcpolicy.apply()
    try:
        runner(coro)
    except StartupError as e:
        raise click.ClickException(str(e)) from None


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="The deployment's TOML configuration file (default: built-in defaults).",
)
log_option = click.option("--log-level", default="info", show_default=True)
log_format_option = click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one JSON object per line, with the call id when a line is about a call.",
)


@click.group()
@click.version_option(package_name="twinline")
def main() -> None:
    """twinline: enhanced telephone services that never drop a call."""


@main.command()
@config_option
@log_option
@log_format_option
def switch(config_path: str | None, log_level: str, log_format: str) -> None:
    """Run the switching platform (SIP B2BUA and registrar)."""
    config = _load(config_path)
    _preflight(config, "switch")
    _setup_logging(log_level, log_format, "switch")
    from twinline.switch.server import SwitchServer  # noqa: PLC0415 - keep `--help` fast

    _run(SwitchServer(config).run())


@main.command()
@click.argument("name")
@config_option
@log_option
@log_format_option
def appserver(name: str, config_path: str | None, log_level: str, log_format: str) -> None:
    """Run application server NAME (one of the configuration's [[appservers]])."""
    config = _load(config_path)
    try:
        config.appserver(name)
    except ConfigError as e:
        raise click.ClickException(f"configuration error: {e}") from None
    _preflight(config, name)
    _setup_logging(log_level, log_format, name)
    from twinline.appserver.server import AppServerProcess  # noqa: PLC0415

    _run(AppServerProcess(config, name).run())


@main.command()
@config_option
@click.option(
    "--servers",
    type=click.IntRange(1, 32),
    default=None,
    help="How many application servers (default: all configured, or 2).",
)
@log_option
@log_format_option
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where the processes' logs go (appended). Default: RUN_DIR/twinline.log with "
    "the live view, standard error without it.",
)
@click.option(
    "--view/--no-view",
    default=None,
    help="The live view of the cluster in the terminal (default: when it is a terminal).",
)
def up(
    *,
    config_path: str | None,
    servers: int | None,
    log_level: str,
    log_format: str,
    log_file: str | None,
    view: bool | None,
) -> None:
    """Run a switch and N application servers on this host; Ctrl-C stops them all."""
    from pathlib import Path  # noqa: PLC0415

    from twinline.supervisor import Supervisor, default_run_dir, effective_config  # noqa: PLC0415

    config = _load(config_path)
    try:
        config, generated = effective_config(config, servers, default_run_dir())
    except ConfigError as e:
        raise click.ClickException(f"configuration error: {e}") from None
    path = str(generated) if generated is not None else config_path
    assert path is not None
    _preflight(config, "all")
    if view is None:
        view = sys.stderr.isatty()
    logs = Path(log_file) if log_file else (default_run_dir() / "twinline.log" if view else None)
    names = ", ".join(s.name for s in config.appservers)
    click.echo(
        f"twinline: switch on {', '.join(config.switch.listen)} (domain {config.switch.domain}), "
        f"application servers {names}; status: twinline status --config {path}; "
        f"dashboard: http://{config.switch.http}/"
        + (f"; logs: {logs}" if logs is not None else "")
        + "; Ctrl-C stops",
        err=True,
    )
    supervisor = Supervisor(
        config, path, log_level=log_level, log_format=log_format, log_file=logs, view=view
    )
    sys.exit(supervisor.run())


@main.command()
@click.option("--calls", type=click.IntRange(10, 100_000), default=600, show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(1, 500),
    default=30.0,
    show_default=True,
    help="Calls placed per second.",
)
@click.option(
    "--hold",
    type=click.FloatRange(0.5, 600),
    default=4.0,
    show_default=True,
    help="Seconds each answered call stays up.",
)
@click.option(
    "--view/--no-view",
    default=None,
    help="The live view (default: when standard error is a terminal).",
)
def demo(calls: int, rate: float, hold: float, view: bool | None) -> None:
    """Show twinline at work in a minute: start a switch and two application servers,
    place calls, kill -9 a server in the middle of them, restart it, and report: calls
    placed, completed, dropped (zero), takeover time. Needs nothing but this package."""
    from twinline.demo.run import Plan, run_demo  # noqa: PLC0415

    if view is None:
        view = sys.stderr.isatty()
    sys.exit(run_demo(Plan(calls=calls, rate=rate, hold=hold), view=view))


@main.group(name="config")
def config_group() -> None:
    """Work with configuration files."""


@config_group.command(name="check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--for",
    "role",
    default="all",
    show_default=True,
    help="Whose addresses to check on this host: all, switch, or a server's NAME.",
)
def config_check(file: str, role: str) -> None:
    """Validate FILE without starting anything: its keys, types and values, then what
    this host must give the processes (free ports, its own addresses, TLS files)."""
    config = _load(file)
    if role not in ("all", "switch"):
        try:
            config.appserver(role)
        except ConfigError as e:
            raise click.ClickException(f"configuration error: {e}") from None
    _preflight(config, role)
    servers = ", ".join(s.name for s in config.appservers) or (
        "none listed (`twinline up` adds them on the ports after switch.link)"
    )
    click.echo(
        f"{file}: valid. Switch on {', '.join(config.switch.listen)}, HTTP {config.switch.http}; "
        f"application servers: {servers}"
    )


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON object.")
def status(config_path: str | None, as_json: bool) -> None:
    """Show what the running switch knows: servers, their load, live calls."""
    import json as json_  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415

    from twinline.supervisor import default_run_dir, fetch_status  # noqa: PLC0415

    if config_path is None and (default_run_dir() / "twinline-up.toml").exists():
        config_path = str(default_run_dir() / "twinline-up.toml")
    config = _load(config_path)
    try:
        data = fetch_status(config)
    except (OSError, urllib.error.URLError) as e:
        raise click.ClickException(
            f"cannot reach the switch's status API at {config.switch.http} ({e}); "
            "is it running? Start it with `twinline up`, or pass the --config it runs with."
        ) from None
    if as_json:
        click.echo(json_.dumps(data, indent=2))
        return
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=f"twinline: {data['calls']['live']} live calls")
    for column in ("server", "pid", "state", "capacity", "primary", "standby"):
        table.add_column(column)
    for s in data["servers"]:
        table.add_row(
            s["name"], str(s["pid"]), s["state"], str(s["capacity"]),
            str(s["primary"]), str(s["standby"]),
        )  # fmt: skip
    Console().print(table)


def _post_server_action(config_path: str | None, server: str, action: str, query: str = "") -> Any:
    """POST /api/servers/SERVER/ACTION on the running switch; its JSON answer."""
    import json as json_  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.parse  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    from twinline.config import api_token, parse_hostport  # noqa: PLC0415
    from twinline.supervisor import default_run_dir  # noqa: PLC0415

    if config_path is None and (default_run_dir() / "twinline-up.toml").exists():
        config_path = str(default_run_dir() / "twinline-up.toml")
    config = _load(config_path)
    host, port = parse_hostport(config.switch.http)
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}/api/servers/{urllib.parse.quote(server, safe='')}/{action}"
    request = urllib.request.Request(url + query, data=b"", method="POST")  # noqa: S310
    token = api_token(config)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310 - our own API
            return json_.loads(resp.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace").strip() or e.reason
        raise click.ClickException(f"the switch refused {action} of {server}: {detail}") from None
    except (OSError, urllib.error.URLError, ValueError) as e:
        raise click.ClickException(
            f"cannot reach the switch's API at {config.switch.http} ({e}); "
            "is it running? Pass the --config it runs with."
        ) from None


@main.command()
@click.argument("server")
@click.option("--off", is_flag=True, help="Undo: let the server take new calls again.")
@config_option
def drain(server: str, off: bool, config_path: str | None) -> None:
    """Stop placing new calls on application server SERVER; its live calls stay."""
    result = _post_server_action(config_path, server, "drain", "?off=1" if off else "")
    click.echo(f"{result.get('server', server)}: {result.get('state', '?')}")


@main.command()
@click.argument("server")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON object.")
@config_option
def handover(server: str, as_json: bool, config_path: str | None) -> None:
    """Move SERVER's calls away on purpose: its primaries to their standbys, its
    standbys to other servers. SERVER is drained first (undo with `drain --off`)."""
    import json as json_  # noqa: PLC0415

    result = _post_server_action(config_path, server, "handover")
    if as_json:
        click.echo(json_.dumps(result, indent=2))
        return
    state = "complete" if result.get("completed_at") is not None else "in progress"
    click.echo(
        f"handover of {result.get('server', server)}: {result.get('calls', 0)} calls moved to "
        f"their standbys ({state}), {result.get('reprotected', 0)} re-protected, "
        f"{result.get('unprotected', 0)} unprotected, {result.get('orphaned', 0)} orphaned"
    )


@main.group()
def db() -> None:
    """The database: its schema version and migrations."""


@db.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def db_status(config_path: str | None, as_json: bool) -> None:
    """Show the database's schema version and the migrations it lacks."""
    import json as json_  # noqa: PLC0415

    from twinline.store import StoreError, display_url  # noqa: PLC0415
    from twinline.store.admin import schema_status  # noqa: PLC0415

    database = _load(config_path).database
    where = display_url(database.url)
    try:
        found = schema_status(database)
    except StoreError as e:
        raise click.ClickException(f"database {where}: {e}") from None
    if as_json:
        click.echo(json_.dumps({
            "database": where, "version": found.version, "known": found.known,
            "applied": [{"version": v, "description": d, "applied_at": at}
                        for v, d, at in found.applied],
            "pending": [{"version": m.version, "description": m.description}
                        for m in found.pending],
        }, indent=2))  # fmt: skip
        return
    click.echo(f"database {where}: schema version {found.version} (this twinline: {found.known})")
    for version, description, _ in found.applied:
        click.echo(f"  applied  {version}: {description}")
    for m in found.pending:
        click.echo(f"  pending  {m.version}: {m.description}")
    if found.too_new:
        raise click.ClickException("the database is newer than this twinline: upgrade twinline")
    if found.pending:
        click.echo("run `twinline db migrate` to apply them (every process also does at start)")


@db.command("migrate")
@config_option
def db_migrate(config_path: str | None) -> None:
    """Apply the migrations the database lacks, in one transaction; safe while twinline
    runs and beside other migrators."""
    from twinline.store import StoreError, display_url  # noqa: PLC0415
    from twinline.store.admin import migrate_database  # noqa: PLC0415

    database = _load(config_path).database
    where = display_url(database.url)
    try:
        done = migrate_database(database)
    except StoreError as e:
        raise click.ClickException(f"database {where}: {e}") from None
    if done.found == done.now:
        click.echo(f"database {where}: at schema version {done.now}, nothing to apply")
    else:
        click.echo(f"database {where}: schema migrated from version {done.found} to {done.now}")


cli_data.register(main)  # accounts, rates, cards, numbers, holidays, forwarding, screening

if __name__ == "__main__":
    main()
