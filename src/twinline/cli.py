"""The `twinline` command."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

import click

from twinline.config import Config, ConfigError, load_config


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(path: str | None) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise click.ClickException(f"configuration error: {e}") from None


def _run(coro: Coroutine[Any, Any, None]) -> None:
    from twinline.switch.server import StartupError  # noqa: PLC0415

    runner: Any = asyncio.run
    try:
        import uvloop  # noqa: PLC0415 - optional: the standard loop is the fallback

        runner = uvloop.run
    except ImportError:
        pass
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


@click.group()
@click.version_option(package_name="twinline")
def main() -> None:
    """twinline: enhanced telephone services that never drop a call."""


@main.command()
@config_option
@log_option
def switch(config_path: str | None, log_level: str) -> None:
    """Run the switching platform (SIP B2BUA and registrar)."""
    config = _load(config_path)
    _setup_logging(log_level)
    from twinline.switch.server import SwitchServer  # noqa: PLC0415 - keep `--help` fast

    _run(SwitchServer(config).run())


@main.command()
@config_option
@log_option
def up(config_path: str | None, log_level: str) -> None:
    """Run twinline on this host; Ctrl-C stops it."""
    config = _load(config_path)
    _setup_logging(log_level)
    from twinline.switch.server import SwitchServer  # noqa: PLC0415

    listen = ", ".join(config.switch.listen)
    click.echo(f"twinline: switch on {listen}, domain {config.switch.domain}; Ctrl-C stops it")
    _run(SwitchServer(config).run())


if __name__ == "__main__":
    main()
