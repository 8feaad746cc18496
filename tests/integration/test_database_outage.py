"""PostgreSQL stopped for 10 s under SIPp load, then started: the calls go on, and every
CDR written during the outage reaches the database once it is back, none lost, none twice.

`twinline up` runs as real processes on a real PostgreSQL (the test session's server,
stopped and started by this test), SIPp plays the caller and the callee; the assertions
come from SIPp's statistics, the processes' log and the database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import PgDatabase

from .cluster import Cluster, free_port
from .sipp import Sipp, sipp_binary

pytestmark = pytest.mark.integration

CALLS = 600
RATE = 30  # calls per second: 20 s of load
HOLD_MS = 6000  # ~180 calls established when the database goes
OUTAGE_S = 10.0


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    binary = sipp_binary()
    if binary is None:
        pytest.skip("SIPp is not installed (Debian package sip-tester)")
    runner = Sipp(binary, tmp_path / "sipp")
    yield runner
    runner.close()


def test_calls_go_on_through_a_database_outage_and_no_cdr_is_lost(
    tmp_path: Path, sipp: Sipp, pg_database: PgDatabase
) -> None:
    callee_port = free_port()
    cluster = Cluster(
        tmp_path / "cluster",
        servers=2,
        callee_port=callee_port,
        database_url=pg_database.url,
        database_password=pg_database.password,
    )
    cluster.start()
    server = pg_database.server
    try:
        sipp.start_uas("callee", "uas", port=callee_port)
        uac = sipp.start_uac(
            "caller", "uac", cluster.sip_address, port=free_port(), calls=CALLS, rate=RATE,
            limit=1000, service="1000", duration_ms=HOLD_MS, timeout_s=120,
        )  # fmt: skip
        time.sleep(5.0)
        assert uac.running
        server.stop("fast")
        try:
            time.sleep(OUTAGE_S)
        finally:
            server.start()
        deadline = time.monotonic() + 90
        while uac.running and time.monotonic() < deadline:
            time.sleep(0.5)
        uac.finish()
        uac.check(successful=CALLS, created=CALLS, context=cluster.log()[-4000:])
        # The CDRs of the last calls are held or queued at most a retry delay more.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if cluster.query("SELECT count(*) FROM cdrs") == [(CALLS,)]:
                break
            time.sleep(0.5)
    finally:
        code = cluster.stop()
    log = cluster.log()
    assert code == 0, log[-4000:]
    assert "Traceback" not in log, log[-6000:]
    assert "the database is unreachable" in log
    assert "the database is back after" in log
    assert "store: dropped" not in log, log[-6000:]  # no held write was given up
    # Every call the switch ended has its CDR, once. (Calls the switch still held at
    # the stop, after SIPp's BYE, are not the database's doing: they have no CDR yet.)
    stopped = re.search(r"switch stopped: .*calls_offered=(\d+) .*active=(\d+)", log)
    assert stopped is not None, log[-2000:]
    ended = int(stopped[1]) - int(stopped[2])
    assert int(stopped[1]) == CALLS
    cdrs = cluster.query("SELECT call_id, disposition FROM cdrs")
    assert len({c[0] for c in cdrs}) == len(cdrs) == ended, "every ended call has one CDR"
    assert {c[1] for c in cdrs} == {"answered"}
    active = cluster.query("SELECT count(*) FROM active_calls")
    assert active == [(CALLS - ended,)]
