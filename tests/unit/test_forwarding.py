"""Forwarding and follow-me through the public service harness: unconditional, busy,
no answer after N seconds, unavailable, hunting, chains of plans, loops stopped with
482 and 483, and the same decisions after a takeover at any step."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from twinline.link.messages import Reject, Route
from twinline.services.destination import Destination, route_action
from twinline.services.forwarding import Forwarding, ForwardingSettings
from twinline.services.testing import HarnessCall, ServiceHarness
from twinline.store import Tx
from twinline.store import datatables as dt


def plans(*rows: tuple[str, str, str, str]) -> Callable[[Tx], None]:
    """Rows of (subscriber, kind, target, ring_seconds); hunt steps in their order."""

    def setup(tx: Tx) -> None:
        steps: dict[str, int] = {}
        for subscriber, kind, target, seconds in rows:
            step = steps[subscriber] = steps.get(subscriber, 0) + 1 if kind == "hunt" else 1
            values = {"subscriber": subscriber, "kind": kind, "target": target,
                      "ring_seconds": seconds, "step": str(step)}  # fmt: skip
            dt.add(tx, dt.TABLES["forwarding"], values, at=0.0)

    return setup


PLANS = plans(
    ("5001", "always", "5002", ""),
    ("5002", "busy", "5003", ""),
    ("5003", "no-answer", "5004", "8"),
    ("5003", "unavailable", "5009", ""),
    ("5005", "hunt", "5005", "5"),
    ("5005", "hunt", "5006", "10"),
    ("5005", "hunt", "5007", "15"),
    ("5005", "no-answer", "5008", "20"),  # after the list rang out: voicemail
    ("5010", "always", "5011", ""),
    ("5011", "always", "5010", ""),  # a loop
)


def route(*destinations: str | Destination, **options: object) -> Route:
    return route_action(destinations, **options)  # type: ignore[arg-type]


def test_a_subscriber_without_a_plan_is_rung_as_dialled() -> None:
    with ServiceHarness(Forwarding, data=PLANS) as h:
        call = h.offer(callee="5099")
        assert call.commands == [Route(["5099"])]
        h.fail(call, 486, "Busy Here")
        assert call.commands[-1] == Reject(486, "Busy Here")


def test_unconditional_then_busy_follows_each_partys_plan() -> None:
    with ServiceHarness(Forwarding, data=PLANS) as h:
        call = h.offer(callee="5001")
        # 5001 is not rung; 5002 is, diverted from 5001 (the caller hears 181).
        assert call.commands == [route("5002", diversion="unconditional", diverted_from="5001")]
        h.fail(call, 486, "Busy Here")
        assert call.commands[-1] == route(
            Destination("5003", ring_timeout=8.0), diversion="user-busy", diverted_from="5002"
        )
        h.fail(call, 480, "No Answer")  # rang 8 s
        assert call.commands[-1] == route("5004", diversion="no-answer", diverted_from="5003")
        assert h.state(call).diverted == ["5001", "5002", "5003"]
        h.fail(call, 486, "Busy Here")  # 5004 has no plan: the caller hears it
        assert call.commands[-1] == Reject(486, "Busy Here")


def test_no_answer_after_its_seconds_and_unavailable_are_told_apart() -> None:
    with ServiceHarness(Forwarding, data=PLANS) as h:
        call = h.offer(callee="5003")
        assert call.commands == [route(Destination("5003", ring_timeout=8.0))]
        h.fail(call, 480, "Temporarily Unavailable")  # not registered: not a no-answer
        assert call.commands[-1] == route("5009", diversion="unavailable", diverted_from="5003")
        other = h.offer(callee="5003")
        h.fail(other, 408, "Request Timeout")
        assert other.commands[-1] == route("5009", diversion="unavailable", diverted_from="5003")
        refused = h.offer(callee="5003")
        h.fail(refused, 603, "Decline")  # the subscriber refused: no forwarding
        assert refused.commands[-1] == Reject(603, "Decline")


def test_hunting_rings_the_list_in_order_each_step_for_its_time() -> None:
    with ServiceHarness(Forwarding, data=PLANS) as h:
        call = h.offer(callee="5005")
        follow = {"diversion": "follow-me", "diverted_from": "5005"}
        assert call.commands == [
            route(
                Destination("5005", ring_timeout=5.0),
                Destination("5006", ring_timeout=10.0, **follow),  # type: ignore[arg-type]
                Destination("5007", ring_timeout=15.0, **follow),  # type: ignore[arg-type]
            )
        ]
        h.fail(call, 480, "No Answer")  # the whole list rang out: its no-answer rule
        assert call.commands[-1] == route("5008", diversion="no-answer", diverted_from="5005")
        other = h.offer(callee="5005")
        h.fail(other, 486, "Busy Here")  # the last step was busy: 5005 has no busy rule
        assert other.commands[-1] == Reject(486, "Busy Here")


def test_a_loop_of_plans_is_stopped_with_482() -> None:
    with ServiceHarness(Forwarding, data=PLANS) as h:
        call = h.offer(callee="5010")
        assert call.commands == [Reject(482, "Loop Detected")]


def test_a_call_diverted_here_before_is_a_loop() -> None:
    with ServiceHarness(Forwarding, data=PLANS) as h:
        diverted = {"Diversion": "<sip:5001@switch.example>;reason=unconditional;counter=1"}
        call = h.offer(callee="5001", headers=diverted)
        assert call.commands == [Reject(482, "Loop Detected")]
        # History-Info: the entry with a Reason is where the call was retargeted from.
        history = {
            "History-Info": "<sip:5002@switch.example?Reason=SIP%3Bcause%3D302>;index=1,"
            " <sip:5001@switch.example;cause=302>;index=1.1;mp=1"
        }
        call = h.offer(callee="5002", headers=history)
        assert call.commands == [Reject(482, "Loop Detected")]
        # Diverted from elsewhere: forwarded on as usual.
        call = h.offer(callee="5001", headers={"Diversion": "<sip:4000@x.example>;counter=1"})
        assert call.commands == [route("5002", diversion="unconditional", diverted_from="5001")]


def test_too_many_diversions_or_hops_is_483() -> None:
    with ServiceHarness(Forwarding, data=PLANS) as h:
        earlier = {"Diversion": "<sip:4000@x.example>;reason=user-busy;counter=4"}
        call = h.offer(callee="5001", headers=earlier)  # the fifth: allowed
        assert call.commands == [route("5002", diversion="unconditional", diverted_from="5001")]
        h.fail(call, 486, "Busy Here")  # the sixth: too many
        assert call.commands[-1] == Reject(483, "Too Many Hops")
        last_hop = h.offer(callee="5001", headers={"Max-Forwards": "1"})
        assert last_hop.commands == [Reject(483, "Too Many Hops")]
        ok = h.offer(callee="5001", headers={"Max-Forwards": "2"})
        assert ok.commands == [route("5002", diversion="unconditional", diverted_from="5001")]


def test_history_info_rather_than_diversion_when_configured() -> None:
    def factory(store: object) -> Forwarding:
        return Forwarding(store, ForwardingSettings(history_info=True))

    with ServiceHarness(factory, data=PLANS) as h:
        call = h.offer(callee="5001")
        assert call.commands == [
            route("5002", diversion="unconditional", diverted_from="5001", history_info=True)
        ]


# --- a takeover or an adoption at every step of a forwarding on no answer ------------------

NO_ANSWER: list[Callable[[ServiceHarness, HarnessCall], None]] = [
    lambda h, c: h.progress(c),
    lambda h, c: h.advance(8),
    lambda h, c: h.fail(c, 480, "No Answer"),
    lambda h, c: h.progress(c),
    lambda h, c: h.answer(c),
    lambda h, c: h.advance(30),
    lambda h, c: h.release(c),
]


def play(fail_at: int | None, how: str) -> HarnessCall:
    with ServiceHarness(Forwarding, data=PLANS) as h:
        call: HarnessCall | None = None
        for i, step in enumerate([None, *NO_ANSWER]):
            if i == fail_at:
                h.hold_peer()  # this step's checkpoints never reach the standby
            if step is None:
                call = h.offer(callee="5003")
            else:
                assert call is not None
                step(h, call)
            assert call is not None
            if i == fail_at:
                h.fail_primary(call) if how == "takeover" else h.lose_both(call)
                h.release_peer()
        assert call is not None
        return call


@pytest.mark.parametrize("how", ["takeover", "adoption"])
def test_a_failure_at_any_step_of_a_no_answer_forwards_the_same(how: str) -> None:
    clean = play(None, how)
    assert clean.commands == [
        route(Destination("5003", ring_timeout=8.0)),
        route("5004", diversion="no-answer", diverted_from="5003"),
    ]
    assert clean.cdr is not None and clean.cdr.disposition == "answered"
    for fail_at in range(len(NO_ANSWER) + 1):
        call = play(fail_at, how)
        assert call.commands == clean.commands, f"{how} at step {fail_at}"
        assert call.cdr is not None and call.cdr.disposition == "answered"
