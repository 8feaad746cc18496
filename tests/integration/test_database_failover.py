"""The PostgreSQL primary lost under SIPp load: its synchronous replica is promoted, the
processes' multi-host URL (target_session_attrs=read-write) finds it, and every call's
CDR is there once: none lost, none twice.

`twinline up` runs as real processes on a real primary and streaming replica (made by
the test with initdb and pg_basebackup); the assertions come from SIPp's statistics,
the processes' log and the promoted database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgserver import USER, PgServer

from .cluster import Cluster, free_port
from .sipp import Sipp, sipp_binary

pytestmark = pytest.mark.integration

CALLS = 400
RATE = 40  # calls per second: 10 s of load
HOLD_MS = 4000


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    binary = sipp_binary()
    if binary is None:
        pytest.skip("SIPp is not installed (Debian package sip-tester)")
    runner = Sipp(binary, tmp_path / "sipp")
    yield runner
    runner.close()


def test_the_promoted_replica_is_found_and_no_cdr_is_lost(
    tmp_path: Path, sipp: Sipp, pg_replicated: tuple[PgServer, PgServer]
) -> None:
    primary, standby = pg_replicated
    hosts = f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"
    url = f"postgresql://{USER}@{hosts}/postgres?target_session_attrs=read-write"
    callee_port = free_port()
    cluster = Cluster(
        tmp_path / "cluster",
        servers=2,
        callee_port=callee_port,
        database_url=url,
        database_password=primary.password,
    )
    cluster.start()
    try:
        sipp.start_uas("callee", "uas", port=callee_port)
        uac = sipp.start_uac(
            "caller", "uac", cluster.sip_address, port=free_port(), calls=CALLS, rate=RATE,
            limit=1000, service="1000", duration_ms=HOLD_MS, timeout_s=120,
        )  # fmt: skip
        time.sleep(4.0)
        assert uac.running
        primary.stop("immediate")  # the primary's host is lost
        time.sleep(1.0)
        standby.promote()
        deadline = time.monotonic() + 90
        while uac.running and time.monotonic() < deadline:
            time.sleep(0.5)
        uac.finish()
        uac.check(successful=CALLS, created=CALLS, context=cluster.log()[-4000:])
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
    assert "the database is back after" in log
    assert "store: dropped" not in log, log[-6000:]
    stopped = re.search(r"switch stopped: .*calls_offered=(\d+) .*active=(\d+)", log)
    assert stopped is not None, log[-2000:]
    assert int(stopped[1]) == CALLS
    ended = CALLS - int(stopped[2])
    # Read from the promoted replica (the URL finds it): every ended call's CDR, once.
    cdrs = cluster.query("SELECT call_id, disposition FROM cdrs")
    assert len({c[0] for c in cdrs}) == len(cdrs) == ended, "every ended call has one CDR"
    assert {c[1] for c in cdrs} == {"answered"}
