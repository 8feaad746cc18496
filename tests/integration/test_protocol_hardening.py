"""Protocol hardening against the real switch process, with SIPp as the phones.

- Two callers on different addresses (SIPp bound to 127.0.0.2 and 127.0.0.3; loopback
  holds all of 127.0.0.0/8) send INVITEs with the same Via branch: both get their
  calls, since RFC 3261 17.2.3 matches server transactions on branch *and* sent-by.
  (Before, the second INVITE was absorbed as a retransmission of the first.)
- A CANCEL with a ringing call's branch, from another address, gets 481 and the call
  is answered and hung up normally. (Before, it ended the call with 487.)
- An INVITE with ``Max-Forwards: 00`` gets 483 and nothing reaches the callee.
  (Before, it was forwarded with Max-Forwards -1.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .conftest import StartSwitch
from .sipp import Sipp, SippRun, scenario
from .switchproc import SwitchProcess, free_port, route

pytestmark = pytest.mark.integration

NUMBER = "1000"  # routes use the prefix "1"


def trunk(*addresses: str) -> dict[str, Any]:
    """SIPp's callers at these addresses are a trusted trunk: their calls reach the
    route without a challenge, as the other SIPp tests' calls from 127.0.0.1 do."""
    return {"name": "sipp", "sources": ["127.0.0.1", *addresses]}


@contextmanager
def phone_at(sipp_path: str, tmp_path: Path, address: str) -> Iterator[Sipp]:
    """A SIPp runner whose processes bind `address` (a loopback address of its own)."""
    runner = Sipp(binary=sipp_path, directory=tmp_path / f"sipp-{address}", local_ip=address)
    try:
        yield runner
    finally:
        runner.close()


def start_call(
    sipp: Sipp, switch: SwitchProcess, scenario_name: str, name: str, **options: Any
) -> SippRun:
    return sipp.start_uac(
        name,
        scenario(scenario_name),
        switch.address,
        port=free_port(),
        calls=1,
        rate=1,
        service=NUMBER,
        timeout_s=40,
        **options,
    )


def test_two_callers_with_the_same_branch_both_get_their_calls(
    start_switch: StartSwitch, sipp: Sipp, sipp_path: str, tmp_path: Path
) -> None:
    callee = sipp.start_uas("callee", scenario("uas_answer.xml"), port=(callee_port := free_port()))
    switch = start_switch(
        routes=[route("1", callee_port)], trunks=[trunk("127.0.0.2", "127.0.0.3")]
    )
    with (
        phone_at(sipp_path, tmp_path, "127.0.0.2") as a,
        phone_at(sipp_path, tmp_path, "127.0.0.3") as b,
    ):
        first = start_call(a, switch, "uac_call_fixed_branch.xml", "caller_a", trace_msg=True)
        second = start_call(b, switch, "uac_call_fixed_branch.xml", "caller_b", trace_msg=True)
        first.finish()
        second.finish()
        first.check(successful=1, created=1)
        second.check(successful=1, created=1)
        # Both INVITEs really carried the same branch, from different sent-by values.
        for run, address in ((first, "127.0.0.2"), (second, "127.0.0.3")):
            sent = run.message_file.read_text(errors="replace")
            assert f"Via: SIP/2.0/UDP {address}:" in sent
            assert "branch=z9hG4bK-fixed" in sent
    callee.wait_for_calls(total=2, timeout=20)
    callee.stop()
    callee.check(successful=2, created=2)


def test_a_cancel_from_another_sent_by_does_not_end_the_call(
    start_switch: StartSwitch, sipp: Sipp, sipp_path: str, tmp_path: Path
) -> None:
    callee = sipp.start_uas(
        "callee", scenario("uas_ring_then_answer.xml"), port=(callee_port := free_port())
    )
    # The victim's address is trusted, the stranger's is not (a CANCEL is never
    # challenged, RFC 3261 22.1: it must be refused for what it is, not for who sent it).
    switch = start_switch(routes=[route("1", callee_port)], trunks=[trunk("127.0.0.2")])
    with (
        phone_at(sipp_path, tmp_path, "127.0.0.2") as a,
        phone_at(sipp_path, tmp_path, "127.0.0.3") as stranger,
    ):
        victim = start_call(a, switch, "uac_call_fixed_branch.xml", "victim")
        # The callee rings for 4 s: send the CANCEL once its INVITE is there.
        seen = callee.wait_for_calls(total=1, timeout=10, idle=False)
        assert seen is not None and seen.created == 1, callee.report()
        cancel = start_call(stranger, switch, "uac_stray_cancel.xml", "stranger")
        cancel.finish()
        cancel.check(successful=1, created=1, context="the stranger's CANCEL must get 481")
        victim.finish()
        victim.check(successful=1, created=1, context="the call must survive the CANCEL")
    callee.wait_for_calls(total=1, timeout=20)
    callee.stop()
    callee.check(successful=1, created=1)


def test_max_forwards_00_gets_483_and_nothing_reaches_the_callee(
    start_switch: StartSwitch, sipp: Sipp
) -> None:
    callee = sipp.start_uas("callee", scenario("uas_answer.xml"), port=(callee_port := free_port()))
    switch = start_switch(routes=[route("1", callee_port)])
    caller = start_call(sipp, switch, "uac_max_forwards_zero.xml", "caller")
    caller.finish()
    caller.check(successful=1, created=1)
    callee.stop()
    assert callee.stats().created == 0, callee.report()
