"""Fixtures every test directory may use: a real PostgreSQL server, started once per test
session the first time a test asks for it, and a fresh database per test.

If the server cannot start, the tests that need it fail (that is what CI must see). On a
machine without PostgreSQL a developer may set TWINLINE_PG_TESTS=skip to skip them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pgserver import PgServer


@dataclass(frozen=True)
class PgDatabase:
    """A fresh database on the tests' server: its URL (no password in it) and password."""

    server: PgServer
    name: str
    url: str
    password: str


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    server: PgServer | None = None
    try:
        server = PgServer()
        server.start()
    except (OSError, RuntimeError) as e:
        if server is not None:
            server.destroy()
        if os.environ.get("TWINLINE_PG_TESTS") == "skip" and not os.environ.get("CI"):
            pytest.skip(f"PostgreSQL could not start (TWINLINE_PG_TESTS=skip): {e}")
        pytest.fail(f"PostgreSQL could not start: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_database(pg_server: PgServer) -> PgDatabase:
    name = pg_server.create_database()
    return PgDatabase(pg_server, name, pg_server.url(name), pg_server.password)


@pytest.fixture
def pg_replicated(pg_server: PgServer) -> Iterator[tuple[PgServer, PgServer]]:
    """A primary and its synchronous streaming replica (every commit the primary
    acknowledges is on the replica), apart from the session's server, not yet failed."""
    del pg_server  # started first: whether PostgreSQL can run here at all
    primary = PgServer(settings={"synchronous_standby_names": "*"})
    standby: PgServer | None = None
    try:
        primary.start()
        standby = primary.standby()
        standby.start()
        yield primary, standby
    finally:
        if standby is not None:
            standby.destroy()
        primary.destroy()
