"""Many hosts: the switch, two application servers and PostgreSQL each on a host of its
own (network namespaces on a bridge, tests/chaos/hosts.py), SIPp as the phones on
another; one server is killed and comes back, then the other is cut off from the
database while calls go on.

What must hold, from SIPp's statistics and PostgreSQL:

- no call fails on either side, the callee sees one INVITE per call;
- every call has exactly one CDR in PostgreSQL, and every placement follows the
  invariants (``finish_calls``);
- as1's calls were taken over by as2 when as1 was killed (``kill -9``), and as1,
  restarted on its host, joined again and took new calls;
- while as2 could not reach the database (its packets to the database host dropped:
  no reset, no error), its calls went on; its log shows the database lost and back,
  and what it held meanwhile reached the database once.

Needs root (network namespaces) and iproute2; skipped without them.
Reproduce: ``.venv/bin/pytest tests/chaos/test_many_hosts.py -s``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.sipp import Sipp
from integration.switchproc import free_port
from pgserver import PgServer

from .conftest import Chaos
from .harness import (
    check_no_instances_left,
    finish_calls,
    start_callee,
    start_caller,
    tail,
    takeover_report,
    wait_answered_up,
    wait_for,
)
from .hosts import Hosts, HostsCluster, database_on

pytestmark = pytest.mark.integration

CALLS = 600
RATE = 20  # calls/s: 30 s of arrivals, across both faults
HOLD_MS = 6000  # about 120 calls up at any moment
CUT_S = 14.0  # longer than the writer's TCP user timeout (10 s): the connection is lost


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2")
    made = Hosts()
    try:
        made.start()
        for host, octet in (("switch", 10), ("as1", 21), ("as2", 22), ("db", 30)):
            made.add(host, octet)
        yield made
    finally:
        made.remove()


@pytest.fixture
def database(hosts: Hosts, pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    del pg_server  # started first: whether PostgreSQL can run here at all
    server, url = database_on(hosts, "db")
    try:
        yield server, url
    finally:
        server.destroy()


def test_a_server_killed_and_another_cut_off_the_database_lose_no_call(
    chaos: Chaos, hosts: Hosts, database: tuple[PgServer, str], sipp_path: str, tmp_path: Path
) -> None:
    server, url = database
    chaos.sipp = Sipp(sipp_path, tmp_path / "sipp", local_ip=hosts.own_address)
    cluster = HostsCluster(
        directory=tmp_path / "hosts",
        servers=2,
        callee_port=free_port(),
        hosts=hosts,
        database=server,
        database_url=url,
        database_password=server.password,
    )
    chaos.clusters.append(cluster)
    cluster.start()
    callee = start_callee(chaos.sipp, cluster, longest_wait_ms=HOLD_MS + 40_000)
    caller = start_caller(
        chaos.sipp, cluster, "caller", calls=CALLS, rate=RATE, hold_ms=HOLD_MS, timeout_s=120
    )
    wait_answered_up(cluster, 60)

    # A host lost: as1 killed; its calls go to their standbys on as2.
    victim = cluster.server("as1")
    assert victim["primary"] > 10, f"as1 carries too few calls to matter: {victim}"
    killed_at = cluster.kill("as1")
    run = cluster.wait_takeover("as1", killed_at, timeout=20)
    context = takeover_report(chaos.m, run, killed_at, "as1 killed")
    assert run["orphaned"] == 0 and run["pending"] == 0, context
    cluster.wait_exited(victim["pid"])
    cluster.restart("as1")
    cluster.wait_state("as1", "up")
    rejoined = wait_for(
        lambda: (row := cluster.server("as1"))["primary"] > 0 and row,
        timeout=10,
        what="the restarted as1 given new calls",
    )
    chaos.m.note("as1 rejoined, primary for", rejoined["primary"])

    # A network path lost: as2 cut off from the database host, everything else works.
    hosts.cut("as2", "db")
    cut_at = time.monotonic()
    try:
        time.sleep(CUT_S)
    finally:
        hosts.heal("as2", "db")
    chaos.m.note("as2 cut off the database for s", round(time.monotonic() - cut_at, 1))

    finish_calls(cluster, callee, [caller], context)
    check_no_instances_left(cluster, context)
    log = cluster.log()
    as2_log = log[log.index("--- as2 ---") :]
    assert "the database is unreachable" in as2_log, tail(as2_log)
    assert "the database is back after" in as2_log, tail(as2_log)
    assert "Traceback" not in log, tail(log)
    lost = cluster.query("SELECT count(*) FROM cdrs WHERE cause LIKE '%instances lost%'")
    assert lost == [(0,)], f"the switch wrote CDRs for lost calls: {lost}\n{context}"
