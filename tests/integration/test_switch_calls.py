"""Calls through the switch, with SIPp playing the phones.

Each test starts its own switch (``python -m twinline switch``) with a route
or a user pointing at a SIPp callee, places calls with a SIPp caller, and
asserts from SIPp's statistics that every call went as its scenario says:
zero failed calls and exactly the expected number of successful ones, on the
caller's side and on the callee's. Every scenario pair used here also runs
SIPp to SIPp in test_sipp_direct.py, so a failure here is the switch's.

What the switch is expected to do beyond plain RFC 3261 (see also each
scenario's comment):
- It answers a CANCEL with 200 before it answers the INVITE with 487.
- It answers the caller's BYE (and relays it) even when the caller's ACK for
  the 200 was lost, and it re-sends its 200 for the INVITE until the ACK comes
  or a BYE ends the dialog.
- It never starts a B leg for a request it answered 400.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import StartSwitch
from .scrape import scrape
from .sipp import Sipp, SippRun, SippStats, malformed_faults, scenario, write_injection_file
from .switchproc import DOMAIN, SwitchProcess, free_port, route

pytestmark = pytest.mark.integration

NUMBER = "1000"  # the dialled number; routes use the prefix "1"


def start_callee(
    sipp: Sipp, scenario_name: str, *, name: str = "callee", **options: Any
) -> tuple[SippRun, int]:
    port = free_port()
    return sipp.start_uas(name, scenario(scenario_name), port=port, **options), port


def call(
    sipp: Sipp,
    switch: SwitchProcess,
    scenario_name: str,
    *,
    calls: int,
    rate: float,
    name: str = "caller",
    service: str = NUMBER,
    timeout_s: int = 60,
    wait: bool = True,
    **options: Any,
) -> SippRun:
    start = sipp.run_uac if wait else sipp.start_uac
    return start(
        name,
        scenario(scenario_name),
        switch.address,
        port=free_port(),
        calls=calls,
        rate=rate,
        service=service,
        timeout_s=timeout_s,
        **options,
    )


def settle_callee(callee: SippRun, *, calls: int, timeout: float = 20) -> SippStats:
    """Wait until the callee has seen ``calls`` calls and all of them ended, stop
    it, and check that every one went as its scenario says."""
    callee.wait_for_calls(total=calls, timeout=timeout)
    callee.stop()
    return callee.check(successful=calls, created=calls)


# --------------------------------------------------------------------------- load


def test_1000_calls_over_udp(start_switch: StartSwitch, sipp: Sipp) -> None:
    callee, callee_port = start_callee(sipp, "uas_answer.xml")
    switch = start_switch(routes=[route("1", callee_port)])
    caller = call(sipp, switch, "uac_call.xml", calls=1000, rate=100, timeout_s=90)
    caller.check(successful=1000, created=1000)
    settle_callee(callee, calls=1000)


def test_1000_calls_over_tcp(start_switch: StartSwitch, sipp: Sipp) -> None:
    callee, callee_port = start_callee(sipp, "uas_answer.xml", transport="t1")
    switch = start_switch(routes=[route("1", callee_port, "tcp")])
    caller = call(sipp, switch, "uac_call.xml", calls=1000, rate=100, timeout_s=90, transport="t1")
    caller.check(successful=1000, created=1000)
    settle_callee(callee, calls=1000)


def test_1000_calls_over_udp_with_10_percent_loss(start_switch: StartSwitch, sipp: Sipp) -> None:
    """Both SIPps drop 10 % of what they send and of what they receive, so each
    message on each leg is lost with about 10 % probability; the switch must
    make up for it with its own retransmissions (RFC 3261 17: INVITE and BYE
    to the callee, 2xx to the caller until the ACK, the responses it owes to
    retransmitted requests). The callee is uas_answer_lossy.xml: why it differs
    from uas_answer.xml is explained in it. The same losses, one leg at a
    time, pass SIPp to SIPp (test_direct_call_survives_10_percent_loss)."""
    callee, callee_port = start_callee(sipp, "uas_answer_lossy.xml", lost=10)
    switch = start_switch(routes=[route("1", callee_port)])
    caller = call(
        sipp,
        switch,
        "uac_call.xml",
        calls=1000,
        rate=100,
        timeout_s=120,
        lost=10,
        # A call waiting for a message that the switch should re-send fails
        # after 30 s instead of hanging until the end.
        recv_timeout_ms=30000,
    )
    stats = caller.check(successful=1000, created=1000)
    assert stats.retransmissions > 0, "-lost had no effect"
    # The callee's calls sit in a 16 s timewait: do not wait for them to end.
    callee.wait_for_calls(total=1000, timeout=20, idle=False)
    callee.stop()
    callee_stats = callee.stats()
    assert callee_stats.created == 1000, callee.report()
    assert callee_stats.failed == 0, callee.report()


# --------------------------------------------------------------------------- call flows


def test_callee_hangs_up(start_switch: StartSwitch, sipp: Sipp) -> None:
    callee, callee_port = start_callee(sipp, "uas_callee_bye.xml")
    switch = start_switch(routes=[route("1", callee_port)])
    caller = call(sipp, switch, "uac_callee_bye.xml", calls=100, rate=50)
    caller.check(successful=100, created=100)
    settle_callee(callee, calls=100)


def test_caller_cancels_while_ringing(start_switch: StartSwitch, sipp: Sipp) -> None:
    callee, callee_port = start_callee(sipp, "uas_ring_cancel.xml")
    switch = start_switch(routes=[route("1", callee_port)], no_answer_timeout=10.0)
    caller = call(sipp, switch, "uac_cancel.xml", calls=100, rate=50)
    caller.check(successful=100, created=100)
    # The callee saw the CANCEL, answered it, and had its 487 acknowledged.
    settle_callee(callee, calls=100)


def test_busy_callee(start_switch: StartSwitch, sipp: Sipp) -> None:
    callee, callee_port = start_callee(sipp, "uas_busy.xml")
    switch = start_switch(routes=[route("1", callee_port)])
    caller = call(sipp, switch, "uac_busy.xml", calls=100, rate=50)
    caller.check(successful=100, created=100)
    settle_callee(callee, calls=100)


def test_no_answer(start_switch: StartSwitch, sipp: Sipp) -> None:
    """All 20 calls ring at once; after switch.no_answer_timeout the switch
    cancels each callee (which answers 200 and 487 and gets its ACK) and
    answers each caller 480."""
    no_answer_timeout = 2.0
    callee, callee_port = start_callee(sipp, "uas_ring_cancel.xml")
    switch = start_switch(routes=[route("1", callee_port)], no_answer_timeout=no_answer_timeout)
    began = time.monotonic()
    caller = call(
        sipp, switch, "uac_no_answer.xml", calls=20, rate=20, limit=20, recv_timeout_ms=8000
    )
    took = time.monotonic() - began
    caller.check(successful=20, created=20)
    settle_callee(callee, calls=20)
    assert took >= no_answer_timeout, f"480s came after {took:.1f} s, before the timeout"


def test_no_answer_from_a_callee_that_answers_too_late(
    start_switch: StartSwitch, sipp: Sipp
) -> None:
    """The callee sends no provisional response and answers after 3 s; with a
    2 s no-answer timer each caller gets 480 at 2 s, and each late 200 is
    acknowledged and hung up (a CANCEL cannot be sent without a provisional
    response, RFC 3261 9.1). Found by the lossy test, where a B leg whose
    first INVITE and 200 were lost answered after the timer had fired."""
    callee, callee_port = start_callee(sipp, "uas_late_answer.xml")
    switch = start_switch(routes=[route("1", callee_port)], no_answer_timeout=2.0)
    caller = call(
        sipp, switch, "uac_no_answer.xml", calls=20, rate=20, limit=20, recv_timeout_ms=8000
    )
    caller.check(successful=20, created=20)
    settle_callee(callee, calls=20)


def test_registered_user_is_reached_by_name(start_switch: StartSwitch, sipp: Sipp) -> None:
    """A SIPp phone registers as alice with digest authentication; its Contact
    names another SIPp, alice's phone, which then takes calls made to 'alice'."""
    phone, phone_port = start_callee(sipp, "uas_answer.xml", name="alices_phone")
    switch = start_switch(users=[{"name": "alice", "password": "secret"}])
    registration = call(
        sipp,
        switch,
        "uac_register.xml",
        name="register",
        calls=1,
        rate=1,
        service="alice",
        trace_msg=True,
        extra=[
            "-ap", "secret",
            "-auth_uri", DOMAIN,
            "-key", "domain", DOMAIN,
            "-key", "contact_port", str(phone_port),
        ],
    )  # fmt: skip
    registration.check(successful=1, created=1)
    # The switch's metrics count the registration (challenged, then authenticated).
    http = re.search(r'^http = "([^"]+)"', switch.config, re.M)
    assert http is not None
    metrics = scrape(f"http://{http[1]}/metrics")
    assert metrics.value("twinline_registrations") == 1
    assert metrics.value("twinline_sip_requests_received_total", method="REGISTER") == 2
    caller = call(sipp, switch, "uac_call.xml", calls=100, rate=50, service="alice")
    caller.check(successful=100, created=100)
    settle_callee(phone, calls=100)


def test_malformed_requests_get_400_while_good_calls_go_through(
    start_switch: StartSwitch, sipp: Sipp, tmp_path: Path
) -> None:
    """200 malformed INVITEs (4 kinds of fault, see sipp.malformed_faults) are
    answered 400 while 500 good calls run at the same time; none of the bad
    ones reaches the callee, and no good one is disturbed."""
    callee, callee_port = start_callee(sipp, "uas_answer.xml")
    switch = start_switch(routes=[route("1", callee_port)])
    faults = malformed_faults(NUMBER, switch.address)
    injection = write_injection_file(tmp_path / "faults.csv", faults)
    good = call(sipp, switch, "uac_call.xml", calls=500, rate=100, wait=False)
    bad = call(
        sipp,
        switch,
        "uac_malformed.xml",
        name="malformed",
        calls=200,
        rate=40,
        wait=False,
        extra=["-inf", str(injection)],
    )
    good.finish()
    bad.finish()
    bad.check(successful=200, created=200, context="faults: " + ", ".join(f.name for f in faults))
    good.check(successful=500, created=500)
    settle_callee(callee, calls=500)
