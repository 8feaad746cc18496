"""A peer link partitioned while both servers and their call tracking links stay up.

Not one of the faults the switch sees: as1 and as2 both keep their CTL, so no
call is taken over. The link between them goes silent (nothing crosses, nothing
is closed) for a second: both ends notice by heartbeats and close it, as1 dials
again and gets through once the partition heals. Meanwhile every primary must
keep its calls going: a checkpoint its standby can no longer acknowledge must not
hold the call's commands back for good (invariant 3 allows the database instead).

as1 sees as2's peer address through a proxy: ``twinline up`` starts as1 with the
cluster's file, so the test replaces it (before any call) by an as1 started with
its own view of the configuration, where as2's ``peer`` is the proxy.
"""

from __future__ import annotations

import time

import pytest

from .conftest import Chaos
from .harness import (
    check_no_instances_left,
    finish_calls,
    start_callee,
    start_caller,
    tail,
    wait_answered_up,
    wait_for,
)

pytestmark = pytest.mark.integration

CALLS = 500
RATE = 50
HOLD_MS = 3_000
PARTITION_S = 1.0


@pytest.mark.timeout(120)
def test_peer_link_partition_between_two_live_servers(chaos: Chaos) -> None:
    cluster = chaos.cluster(servers=2)
    as2_peer = f'peer = "127.0.0.1:{cluster.peer_ports["as2"]}"'
    proxy = chaos.proxy(("127.0.0.1", cluster.peer_ports["as2"]))
    view = cluster.directory / "as1-view.toml"
    text = cluster.config_path.read_text()
    assert text.count(as2_peer) == 1
    view.write_text(text.replace(as2_peer, f'peer = "{proxy.address}"'))
    old = cluster.server("as1")
    cluster.kill("as1")
    cluster.wait_exited(old["pid"])
    cluster.restart("as1", view)
    wait_for(
        lambda: (
            (s := cluster.try_api())
            and cluster.server("as1", s)["pid"] != old["pid"]
            and cluster.server("as1", s)["state"] == "up"
        ),
        timeout=20,
        what="as1 up again with its own view",
    )
    wait_for(lambda: proxy.connections == 1, timeout=10, what="as1's peer link through the proxy")

    callee = start_callee(chaos.sipp, cluster)
    caller = start_caller(chaos.sipp, cluster, "caller", calls=CALLS, rate=RATE, hold_ms=HOLD_MS)
    wait_answered_up(cluster, 100)
    as1_before, as2_before = len(cluster.restarted_log("as1")), len(cluster.log())
    cut_at = proxy.partition()
    time.sleep(PARTITION_S)
    proxy.heal()
    chaos.m.note("peer partition: bytes lost in it", proxy.dropped_bytes)
    wait_for(
        lambda: "peer link to as2 is up" in cluster.restarted_log("as1")[as1_before:],
        timeout=10,
        what="as1's peer link to as2 back after healing",
    )
    as1_log = cluster.restarted_log("as1")[as1_before:]
    as2_log = cluster.log()[as2_before:]
    # Both ends noticed by heartbeats (nothing was closed), and as1 dialled again.
    assert "peer link to as2 closed: no heartbeat" in as1_log, tail(as1_log)
    assert "peer link to as1 closed: no heartbeat" in as2_log, tail(as2_log)
    assert "peer link to as2 is up" in as1_log, tail(as1_log)
    status = cluster.api()
    # The switch saw nothing: no takeover, both servers up.
    assert cluster.takeover("as1", cut_at, status=status) is None, status["takeovers"]
    assert cluster.takeover("as2", cut_at, status=status) is None, status["takeovers"]

    context = f"peer link partitioned for {PARTITION_S} s at {cut_at:.3f}"
    problems: list[str] = []
    try:
        total = finish_calls(cluster, callee, [caller], context)
        assert cluster.api()["commands"]["commands_executed"] == total
    except AssertionError as e:
        problems.append(f"calls: {e}")
        caller.run.stop()
    try:
        took = check_no_instances_left(cluster, context)
        chaos.m.note("peer partition: servers stopped after SIGTERM (ms)", took)
    except AssertionError as e:
        problems.append(str(e))
    assert not problems, "\n".join(problems)
    assert "Traceback" not in cluster.full_log(), tail(cluster.full_log())
