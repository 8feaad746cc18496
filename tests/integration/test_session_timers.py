"""RFC 4028 session timers end to end: a caller that vanishes without a BYE is
released on both legs at its session timer's expiry, with its CDR.

`twinline up` (a switch and two application servers) with a 6 s session interval
(Min-SE 2 s). The SIPp callee does not support session timers, so the switch
refreshes that leg itself (an UPDATE 3 s after the answer, which the callee's
scenario requires). Two ways for the caller to vanish:

- it asked to be the refresher and never refreshes: at 6 - min(32, 6/3) = 4 s
  after the answer the switch gives up on it (RFC 4028 10);
- it knows nothing of session timers, so the switch refreshes it too, and it
  stops answering: its UPDATE at 3 s gets no answer, and at the interval's end
  (6 s) the switch gives up (before the UPDATE's own Timer F, 64 * T1 = 6.4 s).

Either way: BYE to both (both scenarios end on it), the application server sees
`released` with cause `session-expired` and writes the CDR.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, free_port
from .sipp import Sipp, scenario, sipp_binary

pytestmark = pytest.mark.integration

CALLS = 5
INTERVAL = 6


class SessionCluster(Cluster):
    def write_config(self) -> None:
        super().write_config()
        text = self.config_path.read_text()
        text = text.replace(
            "[switch]\n",
            f"[switch]\nsession_expires = {INTERVAL}\nmin_se = 2\n",
            1,
        )
        # A short T1: the unanswered refresh's retransmissions (to Timer F, 64*T1)
        # are over soon after the call is.
        text += "\n[switch.timers]\nt1 = 0.1\n"
        self.config_path.write_text(text)


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    binary = sipp_binary()
    if binary is None:
        pytest.skip("SIPp is not installed (Debian package sip-tester)")
    runner = Sipp(binary, tmp_path / "sipp")
    yield runner
    runner.close()


@pytest.mark.parametrize(
    ("caller_scenario", "expiry"),
    [
        ("uac_vanish_session_timer.xml", INTERVAL - min(32, INTERVAL / 3)),
        ("uac_ignore_session_refresh.xml", INTERVAL),
    ],
    ids=["caller-stops-refreshing", "caller-stops-answering-refreshes"],
)
def test_a_caller_that_vanishes_is_released_on_both_legs_at_session_expiry(
    tmp_path: Path, sipp: Sipp, caller_scenario: str, expiry: float
) -> None:
    callee_port = free_port()
    cluster = SessionCluster(tmp_path / "cluster", servers=2, callee_port=callee_port)
    cluster.start()
    try:
        callee = sipp.start_uas("callee", scenario("uas_session_refreshed.xml"), port=callee_port)
        caller = sipp.run_uac(
            "caller", scenario(caller_scenario), cluster.sip_address,
            port=free_port(), calls=CALLS, rate=10, service="1000", timeout_s=40,
        )  # fmt: skip
        caller.check(successful=CALLS, created=CALLS, context=cluster.log()[-4000:])
        callee.wait_for_calls(total=CALLS, timeout=20)
        callee.stop()
        callee.check(successful=CALLS, created=CALLS)
        status = cluster.status()
    finally:
        code = cluster.stop()
    assert code == 0, cluster.log()[-4000:]
    assert "Traceback" not in cluster.log(), cluster.log()[-6000:]
    assert status["calls"]["session_expired"] == CALLS, status["calls"]
    cdrs = cluster.query("SELECT disposition, cause, answered_at, ended_at FROM cdrs")
    assert len(cdrs) == CALLS, cdrs
    for disposition, cause, answered_at, ended_at in cdrs:
        assert (disposition, cause) == ("answered", "session-expired")
        # Released at the expiry, not before it and not much after.
        assert expiry - 0.1 <= ended_at - answered_at <= expiry + 1.5, cdrs
