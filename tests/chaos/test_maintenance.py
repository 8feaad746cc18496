"""Planned maintenance under load: drain, handover, and a server stopped with SIGTERM.

Three servers (with two, a drained server would leave new calls without a
standby). With calls flowing, an operator runs:

1. ``twinline drain as1``: no new call is placed on as1, as primary or standby;
   its live calls stay where they are.
2. ``twinline handover as1``: its primaries move to their standbys (a takeover
   run with reason "handover"), its standbys to other servers: as1 is empty.
3. ``twinline drain as1 --off``: as1 takes new calls again.
4. SIGTERM to as2: it asks the switch to hand its calls over and waits until it
   has (its log: "handed over N instances") before it exits.

No call fails at any step, and each has exactly one CDR.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from .conftest import Chaos
from .harness import (
    ChaosCluster,
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

CALLS = 900
RATE = 30  # 30 s of calls
HOLD_MS = 10_000  # ~300 up at once: as1 still holds ~100 when it is handed over


def placements_since(cluster: ChaosCluster, since: float) -> dict[str, int]:
    rows = cluster.query(
        "SELECT server, count(*) FROM call_placements WHERE epoch = 1 AND at > ? GROUP BY server",
        (since,),
    )
    return dict(rows)


def operator(cluster: ChaosCluster, *args: str) -> str:
    result = cluster.cli(*args)
    assert result.returncode == 0, (
        f"`twinline {' '.join(args)}` failed with {result.returncode}:\n"
        f"{result.stdout}{result.stderr}"
    )
    return result.stdout.strip()


@pytest.mark.timeout(150)
def test_drain_handover_and_sigterm_under_load(chaos: Chaos) -> None:
    cluster = chaos.cluster(servers=3)
    callee = start_callee(chaos.sipp, cluster)
    caller = start_caller(chaos.sipp, cluster, "caller", calls=CALLS, rate=RATE, hold_ms=HOLD_MS)
    wait_answered_up(cluster, 120)
    # A mistyped name is refused, saying which servers there are.
    typo = cluster.cli("handover", "as9")
    assert typo.returncode != 0, typo
    assert "no application server named 'as9' (known: as1, as2, as3)" in typo.stderr, typo

    # 1. drain
    out = operator(cluster, "drain", "as1")
    drained_at = time.time()
    assert out == "as1: draining", out
    held = cluster.server("as1")
    assert held["state"] == "draining" and held["primary"] > 0, held
    # New calls keep coming (30/s): none of them may land on as1.

    def sixty_placed() -> dict[str, int] | None:
        placed = placements_since(cluster, drained_at)
        return placed if sum(placed.values()) >= 60 else None

    placed = wait_for(sixty_placed, timeout=15, what="60 calls placed after the drain")
    chaos.m.note("drain: placements after it, by server", placed)
    assert "as1" not in placed, f"calls placed on the drained as1: {placed}"
    still = cluster.server("as1")
    assert still["primary"] > 0, f"as1 lost its live calls on drain: {still}"

    # 2. handover
    handover_at = time.time()
    out = operator(cluster, "handover", "as1")
    assert out.startswith("handover of as1: "), out
    run = cluster.wait_takeover("as1", handover_at, reason="handover", timeout=10)
    summary = takeover_report(chaos.m, run, handover_at, "handover (CLI)")
    context = f"{summary}\n`twinline handover as1` said: {out}\nas1 before: {still}"
    assert run["calls"] >= still["primary"] - 30, context  # some ended meanwhile
    assert run["calls"] > 0 and run["orphaned"] == 0 and run["unprotected"] == 0, context
    empty = cluster.server("as1")
    assert empty["primary"] == 0 and empty["standby"] == 0, f"{empty}\n{context}"
    assert cluster.api()["calls"]["unprotected"] == 0, context

    # 3. undrain
    out = operator(cluster, "drain", "as1", "--off")
    undrained_at = time.time()
    assert out == "as1: up", out
    wait_for(
        lambda: placements_since(cluster, undrained_at).get("as1", 0) >= 5,
        timeout=10,
        what="new calls on as1 after `drain --off`",
    )

    # 4. SIGTERM to a server with live calls: it hands them over before it exits.
    as2 = cluster.server("as2")
    assert as2["primary"] > 0, as2
    log_before = len(cluster.full_log())
    term_at = cluster.signal("as2", signal.SIGTERM)
    run2 = cluster.wait_takeover("as2", term_at, reason="handover", timeout=15)
    sigterm_summary = takeover_report(chaos.m, run2, term_at, "SIGTERM")
    cluster.wait_exited(as2["pid"], timeout=15)
    chaos.m.note("SIGTERM: exit after (ms)", round((time.time() - term_at) * 1000))
    context += f"\n{sigterm_summary}\nas2 before SIGTERM: {as2}"
    # A call released just before (its CDR not yet confirmed) whose standby had already
    # let go of it is adopted by a live server to finish it: not lost.
    assert run2["calls"] > 0 and run2["orphaned"] == run2["adopted"], context
    log = cluster.full_log()[log_before:]
    handed = re.findall(r"handed over (\d+) instances; stopping", log)
    assert handed and int(handed[0]) > 0, f"as2 did not say it handed over:\n{tail(log)}"
    assert "not handed over" not in log, tail(log)
    chaos.m.note("SIGTERM: instances as2 handed over", int(handed[0]))
    # `twinline up` reports how its child ended (it looks every 0.2 s).
    wait_for(
        lambda: "as2 exited with code 0" in cluster.full_log()[log_before:],
        timeout=5,
        what="`twinline up` to report that as2 exited with code 0",
        last=lambda: tail(cluster.full_log()[log_before:], 2000),
    )
    status = cluster.api()
    assert cluster.server("as2", status)["state"] == "down", context

    total = finish_calls(cluster, callee, [caller], context)
    check_nothing_finished_by(cluster, "as1", run["started_at"], context)
    check_nothing_finished_by(cluster, "as2", run2["started_at"], context)
    commands = cluster.api()["commands"]
    assert commands["commands_executed"] == total, f"{commands}\n{context}"
    # Nothing was placed on as2 once it said it was leaving.
    after_leaving = placements_since(cluster, run2["started_at"])
    assert "as2" not in after_leaving, f"{after_leaving}\n{context}"
    assert "Traceback" not in cluster.full_log(), tail(cluster.full_log())
    check_no_instances_left(cluster, context)
