"""A call tracking link is cut while its server stays alive and linked to its peers.

as1 reaches the switch's CTL through a TCP proxy (``[[appservers]] ctl``). Under
load, the proxy aborts both sides of the link and refuses as1's reconnects for
about a second, then lets it through. The switch must treat this as a failure:
as1 goes down, its standbys (on as2) take its calls over with a new epoch; when
as1 is back it comes up again, drops the instances it held (all stale now) and
executes nothing stale. No call fails; each call has exactly one CDR.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from integration.switchproc import free_port

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

CALLS = 600
RATE = 50
HOLD_MS = 4_000  # ~200 calls up at once
REFUSE_S = 1.0


@pytest.mark.timeout(120)
def test_cut_call_tracking_link_of_a_live_server(chaos: Chaos) -> None:
    link_port = free_port()
    proxy = chaos.proxy(("127.0.0.1", link_port))
    cluster = chaos.cluster(servers=2, link_port=link_port, ctl={"as1": proxy.address})
    assert proxy.connections == 1, "as1's call tracking link does not go through the proxy"
    callee = start_callee(chaos.sipp, cluster)
    caller = start_caller(chaos.sipp, cluster, "caller", calls=CALLS, rate=RATE, hold_ms=HOLD_MS)
    wait_answered_up(cluster, 150)
    before = cluster.api()
    victim = cluster.server("as1", before)
    refused_before = before["commands"]["commands_refused_stale"]
    log_before = len(cluster.full_log())

    cut_at = proxy.sever()
    run = cluster.wait_takeover("as1", cut_at, timeout=10)
    summary = takeover_report(chaos.m, run, cut_at, "CTL cut")
    context = f"{summary}\nas1 before the cut: {victim}"
    assert run["orphaned"] == 0 and run["pending"] == 0, context
    assert cluster.server("as1")["state"] == "down", context
    # as1 itself is fine: alive, and its peer link to as2 was never touched.
    assert cluster.restarted == {} and victim["pid"] in cluster.pids
    wait_for(lambda: proxy.refused > 0, timeout=5, what="as1 trying to reconnect")
    time.sleep(max(0.0, cut_at + REFUSE_S - time.time()))
    assert cluster.server("as1")["state"] == "down", "as1 came back through a refusing proxy"
    proxy.allow()
    allowed_at = time.time()
    rejoined = cluster.wait_state("as1", "up", timeout=10)
    chaos.m.note(
        "CTL cut reconnect_ms (allowed -> state up)", round((time.time() - allowed_at) * 1000)
    )
    chaos.m.note("CTL cut reconnects refused", proxy.refused)

    # On reconnecting, as1 learns from the switch's Welcome which instances are live
    # for it (none: all were taken over) and drops every other one.
    pattern = re.compile(
        r"call tracking link to the switch is up: (\d+) instances kept, (\d+) stale ones dropped"
    )
    found = wait_for(
        lambda: pattern.findall(cluster.full_log()[log_before:]),
        timeout=10,
        what="as1's log line on reconnecting",
    )
    kept, dropped = (int(n) for n in found[0])
    chaos.m.note("CTL cut stale instances dropped by as1", dropped)
    assert kept == 0 and dropped > 0, f"as1 kept {kept}, dropped {dropped}\n{context}"
    peers_cut = re.findall(r"peer link to as\d closed", cluster.full_log()[log_before:])
    assert not peers_cut, f"the peer link was cut too: {peers_cut}\n{tail(cluster.full_log())}"
    # It takes calls and standbys again.
    since = time.time()
    wait_for(
        lambda: cluster.query(
            "SELECT count(*) FROM call_placements WHERE server = 'as1' AND at > ?", (since,)
        )[0][0],
        timeout=10,
        what="a call placed on as1 after it came back",
    )

    context += f"\nas1 after the reconnect: {rejoined}"
    total = finish_calls(cluster, callee, [caller], context)
    check_nothing_finished_by(cluster, "as1", cut_at, context)
    commands: dict[str, Any] = cluster.api()["commands"]
    refused = commands["commands_refused_stale"] - refused_before
    chaos.m.note("CTL cut commands_refused_stale", refused)
    # One Route per call executed: nothing stale from as1 on top, nothing twice.
    assert commands["commands_executed"] == total, f"{commands}\n{context}"
    assert "Traceback" not in cluster.full_log(), tail(cluster.full_log())
    check_no_instances_left(cluster, context)
