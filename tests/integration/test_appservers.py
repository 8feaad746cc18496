"""Application servers sharing the load and backing each other up, call by call.

`twinline up` runs as real processes (a switch and N application servers), SIPp plays
the caller and the callee, and the assertions come from SIPp's statistics, from
`twinline status --json` while calls are live, and from the database afterwards.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, free_port
from .sipp import Sipp, scenario, sipp_binary

pytestmark = pytest.mark.integration

CALLS = 2000
RATE = 200  # calls per second: 10 s of load
HOLD_MS = 1500  # each call stays up this long, so ~300 are live at once


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    binary = sipp_binary()
    if binary is None:
        pytest.skip("SIPp is not installed (Debian package sip-tester)")
    runner = Sipp(binary, tmp_path / "sipp")
    yield runner
    runner.close()


def run_cluster(tmp_path: Path, sipp: Sipp, servers: int) -> tuple[Cluster, list[dict]]:  # type: ignore[type-arg]
    callee_port = free_port()
    cluster = Cluster(tmp_path / "cluster", servers=servers, callee_port=callee_port)
    cluster.start()
    snapshots = []
    try:
        sipp.start_uas("callee", scenario("uas_answer.xml"), port=callee_port)
        uac = sipp.start_uac(
            "caller", "uac", cluster.sip_address, port=free_port(), calls=CALLS, rate=RATE,
            limit=1000, service="1000", duration_ms=HOLD_MS, timeout_s=120,
        )  # fmt: skip
        # While calls are live, ask the switch as an operator would.
        deadline = time.monotonic() + 120
        while uac.running and time.monotonic() < deadline:
            snapshots.append(cluster.status())
            time.sleep(1.0)
        uac.finish()
        uac.check(successful=CALLS, created=CALLS, context=cluster.log()[-4000:])
    finally:
        code = cluster.stop()
    assert code == 0, cluster.log()[-4000:]
    assert "Traceback" not in cluster.log(), cluster.log()[-6000:]
    return cluster, snapshots


def check_live_snapshots(snapshots: list[dict], servers: int) -> None:  # type: ignore[type-arg]
    busy = [s for s in snapshots if s["calls"]["live"] >= 100]
    assert busy, f"no status taken while calls were live: {snapshots}"
    for snap in busy:
        live = snap["calls"]["live"]
        rows = snap["servers"]
        assert len(rows) == servers
        for row in rows:
            assert {"name", "pid", "state", "capacity", "primary", "standby"} <= row.keys()
            assert row["state"] == "up" and row["pid"] > 0
            # Every server works all the time: primary for some calls, standby for others.
            assert row["primary"] > 0 and row["standby"] > 0, snap
        # Every live call has exactly one primary and one standby somewhere.
        assert sum(r["primary"] for r in rows) == live
        assert sum(r["standby"] for r in rows) == live


def check_database(cluster: Cluster, servers: int) -> Counter[tuple[str, str]]:
    # The processes have exited, but read until the count settles: on a loaded machine
    # a query can come before the last commit of a process that was still closing.
    deadline = time.monotonic() + 10
    while True:
        cdrs = cluster.query("SELECT call_id, disposition, primaries FROM cdrs")
        if len(cdrs) >= CALLS or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(cdrs) == CALLS, "every call has exactly one CDR"
    assert len({c[0] for c in cdrs}) == CALLS
    assert {c[1] for c in cdrs} == {"answered"}
    assert cluster.query("SELECT count(*) FROM active_calls") == [(0,)]
    placements = cluster.query("SELECT call_id, server, role FROM call_placements")
    by_call: dict[str, dict[str, str]] = {}
    for call_id, server, role in placements:
        assert role not in by_call.setdefault(call_id, {}), f"{call_id} placed twice as {role}"
        by_call[call_id][role] = server
    assert len(by_call) == CALLS
    pairs: Counter[tuple[str, str]] = Counter()
    for call_id, roles in by_call.items():
        assert roles.keys() == {"primary", "standby"}, (call_id, roles)
        assert roles["primary"] != roles["standby"], f"{call_id}: standby on its primary's server"
        pairs[(roles["primary"], roles["standby"])] += 1
    primaries = Counter(p for p, _ in pairs.elements())
    assert len(primaries) == servers
    share = 1 / servers
    for server, count in primaries.items():
        assert abs(count / CALLS - share) <= 0.05, f"{server} was primary for {count} of {CALLS}"
    return pairs


def test_two_servers_share_2000_calls_and_back_each_other_up(tmp_path: Path, sipp: Sipp) -> None:
    cluster, snapshots = run_cluster(tmp_path, sipp, servers=2)
    check_live_snapshots(snapshots, servers=2)
    pairs = check_database(cluster, servers=2)
    # Server 1 is primary for calls whose standby is server 2, and the reverse.
    assert set(pairs) == {("as1", "as2"), ("as2", "as1")}


def test_three_servers_spread_each_servers_standbys_over_both_others(
    tmp_path: Path, sipp: Sipp
) -> None:
    cluster, snapshots = run_cluster(tmp_path, sipp, servers=3)
    check_live_snapshots(snapshots, servers=3)
    pairs = check_database(cluster, servers=3)
    for primary in ("as1", "as2", "as3"):
        others = {s: n for (p, s), n in pairs.items() if p == primary}
        assert len(others) == 2, f"{primary}'s standbys are not on both others: {others}"
        total = sum(others.values())
        for standby, count in others.items():
            assert 0.4 <= count / total <= 0.6, f"{primary} -> {standby}: {count} of {total}"
