"""A server dies or freezes under load: its standbys take its calls over, no call fails.

Real processes (``twinline up``: a switch and two application servers), SIPp as
the phones. 1,000 calls are established (ramped at 200 calls/s, each held 20 s)
and new calls keep arriving at 50 calls/s when one server is killed with
SIGKILL, or frozen with SIGSTOP (the switch notices by missed heartbeats) and
thawed once its calls were taken over. What must hold, from SIPp's statistics,
the switch's status and the database:

- no call fails, on either side: the caller's SIPp sends every BYE and gets
  its 200, the callee's SIPp receives every BYE (its scenario ends with it),
  and the callee sees exactly one INVITE per call;
- every call has exactly one CDR, and no call is left in active_calls;
- the switch executed exactly one command (the basic service's Route) per
  call: nothing was executed twice, and nothing stale on top;
- every call as1 had at the fault was finished by another server (its CDR
  names as1 and the server that took over), calls that hung up while as1 was
  frozen and not yet declared dead included (their standby finishes them);
- every placement in the database follows "the standby takes over" and
  "standby elsewhere";
- the frozen server, once thawed, drops its stale instances (its log says so),
  rejoins and is given new calls again; whatever it still commanded for its
  old calls was refused by epoch (``commands_refused_stale``, reported).

And a third case: calls still in setup or ringing (the callee rings 2 s before
answering) when their primary is killed complete normally.

Each test prints the takeover time: from the fault (the test's clock) to the
moment the switch saw the last call re-owned (its ``completed_at``).
Reproduce: ``.venv/bin/pytest tests/chaos -s``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from integration.certs import Certs, make_certs

from .conftest import Chaos
from .harness import (
    ChaosCluster,
    check_no_instances_left,
    check_nothing_finished_by,
    finish_calls,
    setup_times,
    start_callee,
    start_caller,
    tail,
    takeover_report,
    wait_answered_up,
    wait_for,
)

pytestmark = pytest.mark.integration

ESTABLISHED = 1000  # calls up when the fault strikes (the figure)
RAMP_RATE = 200  # calls/s while they are set up
HOLD_MS = 20_000  # each of them stays up this long
ARRIVAL_RATE = 50  # new calls/s through the fault (the figure)
ARRIVALS = 750  # 15 s of them: from before the fault to well after the takeover
ARRIVAL_HOLD_MS = 1_000  # short: arrivals also end (BYE) while their primary is failing


def commands_per_call(cluster: ChaosCluster, calls: int, context: str) -> dict[str, Any]:
    """The basic service commands one Route per call: the switch must have executed
    exactly that many commands, none twice (a re-sent one is counted as duplicate)
    and none from a deposed primary (counted as refused)."""
    commands: dict[str, Any] = cluster.api()["commands"]
    assert commands["commands_executed"] == calls, f"{commands}\n{context}"
    return commands


def load_with_fault(
    chaos: Chaos, transport: str, fault: str, link_tls: Certs | None = None
) -> None:
    cluster = chaos.cluster(servers=2, transport=transport, link_tls=link_tls)
    callee = start_callee(chaos.sipp, cluster, longest_wait_ms=HOLD_MS + 40_000)
    established = start_caller(
        chaos.sipp, cluster, "established", calls=ESTABLISHED, rate=RAMP_RATE, limit=1200,
        hold_ms=HOLD_MS,
    )  # fmt: skip
    # The ramp first: 1,000 calls answered and up (held 20 s, none ends before the
    # end of the test's fault), then 50 new calls/s on top for a second or so.
    wait_answered_up(cluster, ESTABLISHED)
    arrivals = start_caller(
        chaos.sipp, cluster, "arrivals", calls=ARRIVALS, rate=ARRIVAL_RATE, limit=400,
        hold_ms=ARRIVAL_HOLD_MS, service="2000",
    )  # fmt: skip
    wait_for(
        lambda: (s := cluster.try_api()) and s["calls"]["completed"] >= ARRIVAL_RATE // 2,
        timeout=15,
        what="arrivals flowing (calls set up and hung up every second)",
    )
    before = cluster.api()
    victim = cluster.server("as1", before)
    assert victim["primary"] > ESTABLISHED * 0.4, f"as1 carries too few calls to matter: {victim}"
    label = f"{fault} ({transport})"
    chaos.m.note(f"{label} live calls at the fault", before["calls"]["live"])

    fault_at = cluster.kill("as1") if fault == "SIGKILL" else cluster.freeze("as1")
    run = cluster.wait_takeover("as1", fault_at, timeout=20)
    summary = takeover_report(chaos.m, run, fault_at, label)
    context = f"{summary}\nas1 just before the fault: {victim}"
    assert run["orphaned"] == 0 and run["pending"] == 0, context
    status = cluster.api()
    assert cluster.server("as1", status)["state"] == "down", context
    assert cluster.server("as2", status)["state"] == "up", context
    if fault == "SIGSTOP":
        assert "heartbeat" in run["reason"], f"not noticed by heartbeats: {context}"
        context += "\n" + thaw_and_rejoin(chaos, cluster)

    total = finish_calls(cluster, callee, [established, arrivals], context)
    moved = check_nothing_finished_by(cluster, "as1", fault_at, context)
    chaos.m.note(f"{label} as1's calls finished elsewhere", moved)
    # Calls hung up while as1 was failing, before the switch noticed: as1 had the
    # release to handle (and their CDR to write) but never did; the switch keeps such
    # calls until a CDR is confirmed, and has their standby take over to finish them.
    # The switch records no placement for these finishing takeovers.
    finished_for_as1 = cluster.query(
        "SELECT count(*) FROM cdrs c WHERE c.primaries LIKE 'as1,%' AND NOT EXISTS"
        " (SELECT 1 FROM call_placements p WHERE p.call_id = c.call_id AND p.epoch = c.epoch)"
    )[0][0]
    chaos.m.note(
        f"{label} calls hung up before the switch noticed, finished by as2", finished_for_as1
    )
    if fault == "SIGSTOP":
        # 300 ms of heartbeats at 50 hang-ups/s: several of as1's calls end meanwhile.
        assert finished_for_as1 > 0, f"no call ended while as1 was frozen: not tested\n{context}"
    chaos.m.note(f"{label} arrivals' setup times (ms bucket: calls)", setup_times(arrivals.run))
    commands = commands_per_call(cluster, total, context)
    chaos.m.note(f"{label} commands_refused_stale", commands["commands_refused_stale"])
    chaos.m.note(f"{label} commands_duplicate", commands["commands_duplicate"])
    assert "Traceback" not in cluster.full_log(), tail(cluster.full_log())
    check_no_instances_left(cluster, context)


def thaw_and_rejoin(chaos: Chaos, cluster: ChaosCluster) -> str:
    """SIGCONT to the deposed as1: it must drop its stale instances, rejoin, get calls."""
    instances_line = re.compile(
        r"call tracking link to the switch is up: (\d+) instances kept, (\d+) stale ones dropped"
    )
    lines_before = len(instances_line.findall(cluster.full_log()))
    thawed_at = cluster.thaw("as1")
    rejoined = cluster.wait_state("as1", "up", timeout=15)
    chaos.m.note("SIGSTOP rejoin_ms (SIGCONT -> state up)", round((time.time() - thawed_at) * 1000))
    # The line does not name its server, but only as1 (re)connects after the start.
    found = wait_for(
        lambda: instances_line.findall(cluster.full_log())[lines_before:],
        timeout=10,
        what="as1's log line on reconnecting",
    )
    kept, dropped = (int(n) for n in found[0])
    chaos.m.note("SIGSTOP stale instances dropped by as1", dropped)
    assert kept == 0 and dropped > 0, (
        f"as1 on reconnecting kept {kept} and dropped {dropped} instances: every one of its "
        f"instances was stale\n{cluster.log_tail()}"
    )
    # Its calls were left without a standby on as2: it is their standby again.
    wait_for(
        lambda: (s := cluster.try_api()) and s["calls"]["unprotected"] == 0,
        timeout=5,
        what="every call protected again once as1 is back",
    )
    # It is given new calls again (arrivals still flow at 50/s).
    since = time.time()
    placed = wait_for(
        lambda: cluster.query(
            "SELECT count(*) FROM call_placements WHERE server = 'as1' AND epoch = 1 AND at > ?",
            (since,),
        )[0][0],
        timeout=10,
        what="a new call placed on the thawed as1",
    )
    return f"as1 rejoined: {rejoined}; {placed} placements on it soon after"


# --------------------------------------------------------------------------- 1. kill -9


@pytest.mark.timeout(150)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_kill_one_of_two_servers_with_1000_calls_up_and_50_new_per_second(
    chaos: Chaos, transport: str
) -> None:
    load_with_fault(chaos, transport, "SIGKILL")


@pytest.mark.timeout(150)
def test_kill_one_of_two_servers_with_the_links_over_tls(chaos: Chaos, tmp_path: Path) -> None:
    """The same load and kill -9, with every call tracking and peer link on mutual TLS."""
    certs = make_certs(tmp_path / "certs")
    load_with_fault(chaos, "udp", "SIGKILL", link_tls=certs)
    cluster = chaos.clusters[0]
    assert "call tracking links on" in cluster.full_log()
    assert "(TLS)" in cluster.full_log(), tail(cluster.full_log())


# --------------------------------------------------------------------------- 2. SIGSTOP


@pytest.mark.timeout(150)
def test_freeze_one_of_two_servers_then_thaw_it(chaos: Chaos) -> None:
    load_with_fault(chaos, "udp", "SIGSTOP")


# --------------------------------------------------------------------------- 3. in setup

SETUP_CALLS = 600
SETUP_RATE = 100  # calls/s: with 2 s of ringing, ~200 calls ring at any time
SETUP_HOLD_MS = 1_000
HANG_S = 0.15  # as1 hangs this long before it is killed: calls offered meanwhile are undecided


@pytest.mark.timeout(120)
def test_kill_a_server_while_calls_are_in_setup_and_ringing(chaos: Chaos) -> None:
    cluster = chaos.cluster(servers=2)
    callee = start_callee(chaos.sipp, cluster, "uas_ring_answer.xml", longest_wait_ms=30_000)
    caller = start_caller(
        chaos.sipp, cluster, "caller", calls=SETUP_CALLS, rate=SETUP_RATE, limit=SETUP_CALLS,
        hold_ms=SETUP_HOLD_MS,
    )  # fmt: skip
    seen: list[Any] = [None]

    def ringing() -> dict[str, Any] | None:
        status = cluster.try_api()
        if status is None:
            return None
        calls = status["calls"]
        seen[0] = calls
        # Live calls not answered: in setup or ringing (the callee waits 2 s to answer).
        setup = calls["live"] - (calls["answered"] - calls["completed"])
        return status if setup >= 150 and calls["answered"] > 0 else None

    status = wait_for(
        ringing, timeout=30, what="150 calls in setup or ringing", last=lambda: seen[0]
    )
    victim = cluster.server("as1", status)
    # A server decides in a millisecond: to have calls waiting for its decision when
    # it dies, it hangs first (SIGSTOP, shorter than the 300 ms the heartbeats allow),
    # so that the calls offered to it meanwhile are still undecided when it is killed.
    offered = status["calls"]["offered"]
    frozen_at = cluster.freeze("as1")
    time.sleep(HANG_S)
    fault_at = cluster.kill("as1")
    status = cluster.api()
    undecided = status["calls"]["offered"] - offered
    calls = status["calls"]
    in_setup = calls["live"] - (calls["answered"] - calls["completed"])
    run = cluster.wait_takeover("as1", frozen_at, timeout=20)
    summary = takeover_report(chaos.m, run, fault_at, "SIGKILL in setup")
    # Noticed by the closed link, or (on a loaded machine) by the heartbeats if the
    # hang outlasted them: either way the calls waited on a dead server.
    chaos.m.note("SIGKILL in setup: noticed by", run["reason"])
    chaos.m.note("SIGKILL in setup: calls not yet answered at the kill", in_setup)
    chaos.m.note("SIGKILL in setup: calls offered while as1 hung before the kill", undecided)
    context = (
        f"{summary}\n{in_setup} calls in setup or ringing at the kill, {undecided} of them "
        f"offered while as1 hung (SIGSTOP {fault_at - frozen_at:.3f} s before the kill); "
        f"as1 before: {victim}"
    )
    assert undecided > 0, context
    assert run["orphaned"] == 0 and run["pending"] == 0, context

    total = finish_calls(cluster, callee, [caller], context)
    check_nothing_finished_by(cluster, "as1", fault_at, context)
    chaos.m.note("SIGKILL in setup: setup times (ms bucket: calls)", setup_times(caller.run))
    commands_per_call(cluster, total, context)
    assert "Traceback" not in cluster.full_log(), tail(cluster.full_log())
    check_no_instances_left(cluster, context)
