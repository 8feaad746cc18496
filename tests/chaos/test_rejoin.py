"""After a failure: the load spreads over every survivor, and a restarted server rejoins.

- Three servers, one killed under load: the standbys of its calls were spread
  over both others, so both take over (each 35-65 % of its calls), and every
  call has a standby again within 2 s of the kill.
- Two servers, one killed, then started again by hand (``twinline appserver``,
  as an operator would on its host): it rejoins with a new incarnation, the
  calls left unprotected get it as their standby, and it is primary for about
  half of the calls placed after it rejoined (new calls even the load out).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any

import pytest

from .conftest import Chaos
from .harness import (
    check_no_instances_left,
    check_nothing_finished_by,
    finish_calls,
    start_callee,
    start_caller,
    tail,
    takeover_report,
    wait_answered_up,
    wait_for,
)

pytestmark = pytest.mark.integration


# --------------------------------------------------------------------------- 5. three servers

SPREAD_CALLS = 1000
SPREAD_RATE = 100
SPREAD_HOLD_MS = 6_000  # ~600 calls up, ~200 per server as primary


@pytest.mark.timeout(120)
def test_three_servers_one_killed_its_calls_spread_over_both_survivors(chaos: Chaos) -> None:
    cluster = chaos.cluster(servers=3)
    callee = start_callee(chaos.sipp, cluster)
    caller = start_caller(
        chaos.sipp, cluster, "caller", calls=SPREAD_CALLS, rate=SPREAD_RATE, limit=1000,
        hold_ms=SPREAD_HOLD_MS,
    )  # fmt: skip
    wait_answered_up(cluster, 450)
    victim = cluster.server("as1")

    fault_at = cluster.kill("as1")
    # Every call must have a standby again within 2 s: poll the status until the
    # switch has noticed and no call is unprotected.
    seen: list[Any] = [None]

    def protected_again() -> dict[str, Any] | None:
        status = cluster.try_api()
        if status is None:
            return None
        seen[0] = (status["calls"], [(s["name"], s["state"]) for s in status["servers"]])
        if cluster.takeover("as1", fault_at, status=status) is None:
            return None  # not noticed yet
        return status if status["calls"]["unprotected"] == 0 else None

    status = wait_for(
        protected_again, timeout=2.0 - (time.time() - fault_at), interval=0.02,
        what="every call protected again (calls.unprotected == 0) within 2 s of the kill",
        last=lambda: seen[0],
    )  # fmt: skip
    protected_ms = round((time.time() - fault_at) * 1000)
    chaos.m.note("3 servers: all calls protected again within (ms, polled)", protected_ms)
    run = cluster.wait_takeover("as1", fault_at, timeout=10)
    summary = takeover_report(chaos.m, run, fault_at, "3 servers SIGKILL")
    context = f"{summary}\nas1 before the kill: {victim}\nstatus after: {status['servers']}"
    assert run["orphaned"] == 0 and run["unprotected"] == 0, context
    assert run["reprotected"] > 0, context
    assert status["calls"]["unprotected"] == 0, context

    total = finish_calls(cluster, callee, [caller], context)
    check_nothing_finished_by(cluster, "as1", fault_at, context)
    # Who took as1's calls over: the epoch-2 primaries of calls as1 was primary for.
    rows = cluster.query(
        "SELECT p2.server, count(*) FROM call_placements p1 JOIN call_placements p2"
        " ON p1.call_id = p2.call_id"
        " WHERE p1.server = 'as1' AND p1.role = 'primary' AND p1.epoch = 1"
        " AND p2.role = 'primary' AND p2.epoch = 2 GROUP BY p2.server"
    )
    takers = Counter(dict(rows))
    moved = sum(takers.values())
    shares = {server: round(n / moved, 3) for server, n in sorted(takers.items())} if moved else {}
    chaos.m.note("3 servers: share of as1's calls taken over", shares)
    context += f"\nas1's calls taken over by: {dict(takers)}"
    assert moved == run["calls"], context
    assert set(takers) == {"as2", "as3"}, context
    for server, share in shares.items():
        assert 0.35 <= share <= 0.65, f"{server} took {share:.0%} of as1's calls\n{context}"

    # Cross-check with the CDRs: the calls that as1 started and another finished.
    cdr_takers = Counter(
        dict(
            cluster.query(
                "SELECT primaries, count(*) FROM cdrs WHERE primaries LIKE 'as1,%'"
                " GROUP BY primaries"
            )
        )
    )
    chaos.m.note("3 servers: CDR primaries of as1's calls", dict(cdr_takers))
    assert set(cdr_takers) == {"as1,as2", "as1,as3"}, f"{cdr_takers}\n{context}"
    assert cluster.api()["commands"]["commands_executed"] == total
    assert "Traceback" not in cluster.full_log(), tail(cluster.full_log())
    check_no_instances_left(cluster, context)


# --------------------------------------------------------------------------- 6. restart

RESTART_RATE = 50
RESTART_HOLD_MS = 2_000  # ~100 calls up
RESTART_CALLS = 1000  # 20 s of calls: ~5 before the kill, ~12 after the rejoin


@pytest.mark.timeout(120)
def test_killed_server_restarted_rejoins_and_takes_half_the_new_calls(chaos: Chaos) -> None:
    cluster = chaos.cluster(servers=2)
    callee = start_callee(chaos.sipp, cluster)
    caller = start_caller(
        chaos.sipp, cluster, "caller", calls=RESTART_CALLS, rate=RESTART_RATE,
        hold_ms=RESTART_HOLD_MS,
    )  # fmt: skip
    wait_answered_up(cluster, 80)
    old = cluster.server("as1")
    fault_at = cluster.kill("as1")
    run = cluster.wait_takeover("as1", fault_at, timeout=10)
    summary = takeover_report(chaos.m, run, fault_at, "before restart SIGKILL")
    context = summary
    assert run["orphaned"] == 0, context
    cluster.wait_exited(old["pid"])
    # With as1 gone, every call runs unprotected on as2.
    unprotected = cluster.api()["calls"]["unprotected"]
    assert unprotected > 0, context
    # Down for a while: as2 carries every call alone, and new calls pile up on it.
    time.sleep(2.0)

    restarted_at = time.time()
    proc = cluster.restart("as1")
    row = cluster.wait_state("as1", "up", timeout=20)
    rejoined_at = time.time()
    chaos.m.note("restart: start -> state up (ms)", round((rejoined_at - restarted_at) * 1000))
    context += f"\nas1 before the kill: {old}\nas1 after the restart: {row}"
    assert row["pid"] == proc.pid and row["incarnation"] != old["incarnation"], context

    # The calls left unprotected get the rejoined server as their standby.
    seen: list[Any] = [None]

    def protected() -> bool:
        status = cluster.try_api()
        if status is None:
            return False
        seen[0] = status["calls"]
        return bool(status["calls"]["unprotected"] == 0)

    wait_for(
        protected, timeout=5, what="no call unprotected after the rejoin", last=lambda: seen[0]
    )
    chaos.m.note("restart: rejoin -> all protected (ms)", round((time.time() - rejoined_at) * 1000))
    joined = re.findall(
        r"application server as1 joined \(pid (\d+), incarnation \w+\): keeps (\d+) instances, "
        r"(\d+) unprotected calls given a standby",
        cluster.full_log(),
    )
    assert joined and int(joined[-1][0]) == proc.pid, f"{joined}\n{context}"
    assert int(joined[-1][1]) == 0 and int(joined[-1][2]) > 0, f"{joined}\n{context}"
    chaos.m.note("restart: unprotected calls given as1 as standby on its join", int(joined[-1][2]))

    total = finish_calls(cluster, callee, [caller], context)
    check_nothing_finished_by(cluster, "as1", fault_at, context)
    # Primaries of the calls placed after the rejoin (first placement, epoch 1).
    rows = cluster.query(
        "SELECT server, count(*) FROM call_placements WHERE role = 'primary' AND epoch = 1"
        " AND at >= ? GROUP BY server",
        (rejoined_at,),
    )
    after = Counter(dict(rows))
    placed = sum(after.values())
    share = after["as1"] / placed if placed else 0.0
    chaos.m.note("restart: calls placed after the rejoin", placed)
    chaos.m.note("restart: as1's share of them as primary", round(share, 3))
    context += f"\nprimaries of the {placed} calls placed after the rejoin: {dict(after)}"
    assert placed >= 300, context
    assert 0.4 <= share <= 0.6, f"as1 was primary for {share:.0%} of the new calls\n{context}"
    assert cluster.api()["commands"]["commands_executed"] == total
    assert "Traceback" not in cluster.full_log(), tail(cluster.full_log())
    check_no_instances_left(cluster, context)
