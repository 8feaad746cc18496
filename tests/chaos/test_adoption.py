"""The database, the last line: calls that lose both their instances are adopted.

Two servers, established calls on both. as1 is killed: as2 takes its calls over and
runs every call unprotected, its checkpoints in the database. Then as2 is killed too:
no server holds any call, and the switch keeps them up. as1 is started again: it
adopts every call from its database checkpoint and the switch's events, with a new
epoch, and the calls end normally when the callers hang up, each with one CDR written
by as1. SIPp counts no failed call on either side.
"""

from __future__ import annotations

import re
import time

import pytest

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

pytestmark = pytest.mark.integration

CALLS = 100
RATE = 50
HOLD_MS = 14_000  # long enough to lose both servers and restart one, mid-call


@pytest.mark.timeout(120)
def test_calls_that_lost_both_servers_are_adopted_from_the_database(chaos: Chaos) -> None:
    cluster = chaos.cluster(servers=2)
    callee = start_callee(chaos.sipp, cluster)
    caller = start_caller(chaos.sipp, cluster, "caller", calls=CALLS, rate=RATE, hold_ms=HOLD_MS)
    status = wait_answered_up(cluster, CALLS)
    first = cluster.server("as1", status)
    second = cluster.server("as2", status)
    assert first["primary"] > 0 and second["primary"] > 0, status["servers"]

    fault_at = cluster.kill("as1")
    run = cluster.wait_takeover("as1", fault_at, timeout=10)
    context = takeover_report(chaos.m, run, fault_at, "first kill")
    cluster.wait_exited(first["pid"])
    wait_for(
        lambda: cluster.api()["calls"]["unprotected"] == CALLS,
        timeout=5, what="every call unprotected on as2, checkpointed in the database",
    )  # fmt: skip
    # Wait for the database checkpoints of as2's re-protection (a Refresh each).
    wait_for(
        lambda: cluster.query("SELECT count(*) FROM checkpoints")[0][0] == CALLS,
        timeout=5, what=f"{CALLS} database checkpoints",
    )  # fmt: skip

    second_at = cluster.kill("as2")
    cluster.wait_exited(second["pid"])
    wait_for(lambda: cluster.server("as2")["state"] == "down", timeout=5, what="as2 seen down")
    status = cluster.api()
    calls = status["calls"]
    assert calls["live"] == calls["orphaned"] == CALLS, f"calls not all kept: {calls}"
    time.sleep(0.5)  # no server at all for a while: the calls stay up

    restarted_at = time.time()
    proc = cluster.restart("as1")
    cluster.wait_state("as1", "up", timeout=20)

    def adopted() -> list[str]:
        return re.findall(r"(\d+) calls that had lost both instances adopted", cluster.full_log())

    found = wait_for(adopted, timeout=10, what="the adoption logged by the switch")
    chaos.m.note("adoption: restart -> adopted (ms)", round((time.time() - restarted_at) * 1000))
    chaos.m.note("adoption: calls adopted", int(found[-1]))
    assert int(found[-1]) == CALLS, f"{found}\n{context}"
    context += f"\nsecond kill at {second_at:.3f}; as1 restarted as pid {proc.pid}"

    finish_calls(cluster, callee, [caller], context, adoption=True)
    # Every CDR was written by the adopter, after the call passed through both servers.
    rows = dict(cluster.query("SELECT primaries, count(*) FROM cdrs GROUP BY primaries"))
    chaos.m.note("adoption: CDR primaries", rows)
    assert set(rows) <= {"as1,as2,as1", "as2,as1"}, f"{rows}\n{context}"
    lost = cluster.query("SELECT count(*) FROM cdrs WHERE cause LIKE '%instances lost%'")
    assert lost == [(0,)], f"the switch wrote CDRs for lost calls: {lost}\n{context}"
    assert cluster.query("SELECT count(*) FROM checkpoints") == [(0,)], context
    assert "Traceback" not in cluster.full_log(), tail(cluster.full_log())
    check_no_instances_left(cluster, context)
