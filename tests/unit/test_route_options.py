"""Route options in the switch core, driven with bytes and a stepped clock.

A service's route may give each destination a ring timeout, a caller identity to
present and a diversion reason, and the call a maximum duration. The switch (sipfix's
`Switch`, with a `Control` here that lets the test decide) builds the callee's INVITE
from them, moves on when a destination rings too long, tells the caller once that the
call is being forwarded, and hangs up an answered call at its maximum duration.
"""

from __future__ import annotations

from sipfix import CALLEE, CALLER, CONFIG, SDP_ANSWER, Sent, Switch, summaries
from test_b2bua import A_CALL_ID, A_FROM, A_TO, A_VIA, SW_CONTACT, Flow, a_invite, answered

from twinline.switch.b2bua import SwitchCore
from twinline.switch.call import Call, CallState
from twinline.switch.routing import DestinationOptions, Target

PBX2 = ("udp", "127.0.0.1", 5090)


class Control:
    """A `CallControl` that decides nothing: the test routes, and reads what was said."""

    def __init__(self, core: SwitchCore) -> None:
        self.core = core
        self.calls: list[Call] = []
        self.events: list[tuple[str, object]] = []

    def offered(self, call: Call, now: float) -> None:
        self.calls.append(call)

    def route_failed(self, call: Call, status: int, reason: str, now: float) -> None:
        self.events.append(("route_failed", (status, reason, call.outcomes)))

    def progress(self, call: Call, status: int, now: float) -> None:
        self.events.append(("progress", status))

    def answered(self, call: Call, now: float) -> None:
        self.events.append(("answered", call.target.destination if call.target else ""))

    def released(self, call: Call, now: float) -> None:
        self.events.append(("released", call.cause))


def switch(config: str = CONFIG) -> tuple[Switch, Control]:
    sw = Switch(config)
    control = Control(sw.core)
    sw.core.control = control
    return sw, control


def pbx(destination: str = "9555", **options: object) -> Target:
    return Target(
        "sip:555@127.0.0.1:5062", CALLEE, "route:9", destination,
        DestinationOptions(**options),  # type: ignore[arg-type]
    )  # fmt: skip


def pbx2(destination: str = "7000", **options: object) -> Target:
    return Target(
        "sip:7000@127.0.0.1:5090", PBX2, "route:7", destination,
        DestinationOptions(**options),  # type: ignore[arg-type]
    )  # fmt: skip


def offer(
    sw: Switch, control: Control, targets: list[Target], *, invite: bytes | None = None, **kw: float
) -> tuple[Call, list[Sent]]:
    out = sw.receive(invite or a_invite(), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE")]
    (call,) = control.calls
    sw.core.route(call, targets, sw.now, **kw)
    return call, sw.take()


# --- ring timeout ------------------------------------------------------------------------------


def test_a_destinations_ring_timeout_moves_on_to_the_next_one_before_the_global_one() -> None:
    sw, control = switch()  # switch.no_answer_timeout = 60
    call, out = offer(sw, control, [pbx(ring_timeout=5.0), pbx2()])
    assert summaries(out) == [(CALLEE, "INVITE")]
    flow = Flow(sw, a_invite(), out[0])
    assert summaries(flow.callee_responds(180, "Ringing")) == [(CALLER, "180 INVITE")]
    assert sw.advance(4.9) == []
    out = sw.advance(0.1)
    # The first is cancelled, the second called; the caller hears nothing new.
    assert summaries(out) == [(CALLEE, "CANCEL"), (PBX2, "INVITE")]
    assert call.state is CallState.CALLING
    flow.respond_to(out[0], 200, "OK", CALLEE)
    assert summaries(flow.callee_responds(487, "Request Terminated")) == [(CALLEE, "ACK")]
    second = Flow(sw, a_invite(), out[1])
    assert summaries(second.callee_responds(180, "Ringing")) == [(CALLER, "180 INVITE")]
    # The second has the global timeout: 60 s from its own INVITE.
    assert sw.advance(59.9) == []
    assert summaries(sw.advance(0.1)) == [(PBX2, "CANCEL")]
    assert control.events[-1] == (
        "route_failed",
        (480, "No Answer", (("9555", 480, "No Answer"), ("7000", 480, "No Answer"))),
    )


def test_outcomes_say_how_each_destination_ended() -> None:
    sw, control = switch()
    _, out = offer(sw, control, [pbx(), pbx2()])
    flow = Flow(sw, a_invite(), out[0])
    out = flow.callee_responds(486, "Busy Here")
    assert summaries(out) == [(CALLEE, "ACK"), (PBX2, "INVITE")]
    second = Flow(sw, a_invite(), out[1])
    second.callee_responds(404, "Not Found")
    assert control.events == [
        (
            "route_failed",
            (404, "Not Found", (("9555", 486, "Busy Here"), ("7000", 404, "Not Found"))),
        )
    ]


# --- caller identity ---------------------------------------------------------------------------


def test_the_caller_identity_presented_replaces_from_and_p_asserted_identity() -> None:
    sw, control = switch()
    invite = a_invite(extra=("P-Asserted-Identity: <sip:alice@127.0.0.1>",))
    _, out = offer(
        sw, control, [pbx(caller_id="+15550100", caller_name='Help "Desk"')], invite=invite
    )
    b = out[0].req
    assert b.get("From") == f'"Help \\"Desk\\"" <sip:+15550100@127.0.0.1>;tag={b.from_tag}'
    assert b.get_all("P-Asserted-Identity") == ['"Help \\"Desk\\"" <sip:+15550100@127.0.0.1>']


def test_a_number_alone_drops_the_callers_display_name() -> None:
    sw, control = switch()
    _, out = offer(sw, control, [pbx(caller_id="5550100")])
    b = out[0].req
    assert b.get("From") == f"<sip:5550100@127.0.0.1>;tag={b.from_tag}"
    assert b.get("P-Asserted-Identity") == "<sip:5550100@127.0.0.1>"


def test_without_options_the_invite_is_as_before() -> None:
    sw, control = switch()
    invite = a_invite(extra=("P-Asserted-Identity: <sip:alice@127.0.0.1>",))
    _, out = offer(sw, control, [pbx()], invite=invite)
    b = out[0].req
    assert b.get("From") == f'"Alice" <sip:alice@127.0.0.1>;tag={b.from_tag}'
    assert b.get_all("P-Asserted-Identity") == ["<sip:alice@127.0.0.1>"]
    assert b.get("Diversion") is None and b.get("History-Info") is None
    assert summaries(out) == [(CALLEE, "INVITE")]  # no 181


# --- diversion ---------------------------------------------------------------------------------


def test_a_diversion_adds_diversion_and_tells_the_caller_181_once() -> None:
    sw, control = switch()
    earlier = "Diversion: <sip:100@pbx.example>;reason=unconditional;counter=1"
    invite = a_invite(extra=(earlier,))
    _, out = offer(
        sw, control, [pbx(diversion="no-answer"), pbx2(diversion="user-busy")], invite=invite
    )
    assert summaries(out) == [(CALLEE, "INVITE"), (CALLER, "181 INVITE")]
    # Ours on top, naming the number dialled; the earlier diversion kept below it.
    assert out[0].req.get_all("Diversion") == [
        "<sip:9555@127.0.0.1:5060>;reason=no-answer;counter=1",
        "<sip:100@pbx.example>;reason=unconditional;counter=1",
    ]
    forwarded = out[1].resp
    assert (forwarded.status, forwarded.reason) == (181, "Call Is Being Forwarded")
    assert forwarded.get("Via") == A_VIA and forwarded.get("Call-ID") == A_CALL_ID
    assert forwarded.get("From") == A_FROM
    assert forwarded.get("To") == f"{A_TO};tag={forwarded.to_tag}"
    assert forwarded.get("Contact") == SW_CONTACT
    # The next diverted destination: Diversion again, but no second 181.
    flow = Flow(sw, a_invite(), out[0])
    out = flow.callee_responds(486, "Busy Here")
    assert summaries(out) == [(CALLEE, "ACK"), (PBX2, "INVITE")]
    assert out[1].req.get_all("Diversion")[0] == (
        "<sip:9555@127.0.0.1:5060>;reason=user-busy;counter=1"
    )
    # The callee's own 180 still reaches the caller, with the same To tag.
    second = Flow(sw, a_invite(), out[1])
    out = second.callee_responds(180, "Ringing")
    assert summaries(out) == [(CALLER, "180 INVITE")]
    assert out[0].resp.to_tag == forwarded.to_tag


def test_a_diversion_names_the_diverting_party_given() -> None:
    sw, control = switch()
    _, out = offer(sw, control, [pbx(diversion="unconditional", diverted_from="alice")])
    assert (
        out[0].req.get("Diversion") == "<sip:alice@127.0.0.1:5060>;reason=unconditional;counter=1"
    )


def test_history_info_instead_of_diversion() -> None:
    sw, control = switch()
    invite = a_invite(extra=("History-Info: <sip:old@pbx.example>;index=1",))
    _, out = offer(sw, control, [pbx(diversion="no-answer", history_info=True)], invite=invite)
    b = out[0].req
    assert b.get("Diversion") is None
    # The dialled target with the reason it was retargeted (RFC 7044), then the new
    # target with its RFC 4458 cause (408: no reply), retargeted from index 1.
    assert b.get_all("History-Info") == [
        "<sip:9555@127.0.0.1:5060?Reason=SIP%3Bcause%3D408>;index=1",
        "<sip:555@127.0.0.1:5062;cause=408>;index=1.1;mp=1",
    ]
    assert summaries(out) == [(CALLEE, "INVITE"), (CALLER, "181 INVITE")]


# --- maximum duration --------------------------------------------------------------------------


def answer(sw: Switch, out: list[Sent]) -> Flow:
    flow = Flow(sw, a_invite(), out[0])
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "200 INVITE")]
    flow.a_tag = out[1].resp.to_tag
    assert flow.caller_ack() == []
    return flow


def test_the_switch_hangs_up_an_answered_call_at_its_maximum_duration() -> None:
    sw, control = switch()
    call, out = offer(sw, control, [pbx()], max_duration=30.0)
    sw.advance(3.0)  # ringing time does not count
    flow = answer(sw, out)
    assert sw.advance(29.9) == []
    out = sw.advance(0.1)
    assert summaries(out) == [(CALLER, "BYE"), (CALLEE, "BYE")]
    assert call.state is CallState.RELEASING
    flow.respond_to(out[0], 200, "OK", CALLER)
    flow.respond_to(out[1], 200, "OK", CALLEE)
    assert flow.gone()
    assert control.events[-1] == ("released", "max-duration")
    assert sw.core.stats.calls_cut_at_max_duration == 1
    assert call.answered_at is not None and call.ended_at == call.answered_at + 30.0


def test_the_global_maximum_applies_and_the_shorter_one_wins() -> None:
    config = CONFIG.replace(
        "no_answer_timeout = 60.0", "no_answer_timeout = 60.0\nmax_call_duration = 20.0"
    )
    for given, cut_at in ((0.0, 20.0), (50.0, 20.0), (10.0, 10.0)):
        sw, control = switch(config)
        _, out = offer(sw, control, [pbx()], max_duration=given)
        answer(sw, out)
        assert sw.advance(cut_at - 0.1) == []
        assert summaries(sw.advance(0.1)) == [(CALLER, "BYE"), (CALLEE, "BYE")], given


def test_a_call_that_ends_first_leaves_no_timer_behind() -> None:
    sw, control = switch()
    call, out = offer(sw, control, [pbx()], max_duration=30.0)
    flow = answer(sw, out)
    out = flow.caller_request("BYE", 2)
    assert summaries(out) == [(CALLER, "200 BYE"), (CALLEE, "BYE")]
    flow.respond_to(out[1], 200, "OK", CALLEE)
    assert flow.gone() and call.deadline is None
    assert sw.advance(60.0) == []


def test_plan_control_routes_with_the_global_maximum() -> None:
    config = CONFIG.replace(
        "no_answer_timeout = 60.0", "no_answer_timeout = 60.0\nmax_call_duration = 5.0"
    )
    sw = Switch(config)
    flow = answered(sw)
    out = sw.advance(5.0)
    assert summaries(out) == [(CALLER, "BYE"), (CALLEE, "BYE")]
    flow.respond_to(out[0], 200, "OK", CALLER)
    flow.respond_to(out[1], 200, "OK", CALLEE)
    assert flow.gone()
