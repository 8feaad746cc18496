"""The arbiter between a service's route and the switch core, sans-IO.

The real `SwitchCore` (sipfix) with the `Arbiter` as its control and one application
server whose link is a list: commands go in as the server would send them, SIP bytes
play the phones, and the test reads the events the server is sent.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sipfix import CALLEE, CALLER, SDP_ANSWER, Switch, summaries
from test_b2bua import Flow, a_invite

from twinline.config import AppServer
from twinline.link.messages import Command, Event, Offered, Outcome, Route, RouteOption
from twinline.services.destination import Destination, route_action
from twinline.switch.arbiter import Arbiter, ServicePlan
from twinline.switch.routing import RoutingPlan

CONFIG = """
[switch]
listen = ["udp:127.0.0.1:5060"]
no_answer_timeout = 60.0

[[users]]
name = "bob"
password = "hunter2"

[[routes]]
prefix = "9"
target = "127.0.0.1:5062"
strip = 1

[[routes]]
prefix = "7"
target = "127.0.0.1:5090"
"""
PBX2 = ("udp", "127.0.0.1", 5090)


class Harness:
    def __init__(self) -> None:
        self.sw = Switch(CONFIG)
        self.sent: list[tuple[str, Any]] = []
        self.arbiter = Arbiter(
            switch=self.sw.core,
            routing=RoutingPlan(self.sw.config, self.sw.location),
            services=ServicePlan([]),
            servers=[AppServer(name="as1", peer="127.0.0.1:6001")],
            send=lambda server, msg: self.sent.append((server, msg)),
            wall=lambda: 1000.0 + self.sw.now,
            redundancy=False,
        )
        self.sw.core.control = self.arbiter
        self.arbiter.server_up("as1", incarnation=1, pid=1)
        self.seq = 0

    def offer(self, extra: tuple[str, ...] = ()) -> str:
        out = self.sw.receive(a_invite(extra=extra), CALLER)
        assert summaries(out) == [(CALLER, "100 INVITE")]
        (offered,) = [m for _, m in self.sent if isinstance(m, Offered)]
        return offered.call

    def command(self, call: str, action: Any) -> list[Any]:
        self.seq += 1
        # Through the wire format, as the server's link would carry it.
        cmd = msgspec.msgpack.decode(
            msgspec.msgpack.encode(Command(call=call, epoch=1, seq=self.seq, action=action)),
            type=Command,
        )
        self.arbiter.command("as1", cmd, self.sw.now)
        return self.sw.take()

    def events(self) -> list[Event]:
        return [m for _, m in self.sent if isinstance(m, Event)]


def test_route_options_reach_the_callees_invite() -> None:
    h = Harness()
    call = h.offer()
    route = route_action(
        [Destination("9555", caller_id="5550100", diversion="no-answer")], ring_timeout=5.0
    )
    out = h.command(call, route)
    assert summaries(out) == [(CALLEE, "INVITE"), (CALLER, "181 INVITE")]
    b = out[0].req
    assert b.get("Diversion") == "<sip:9555@127.0.0.1:5060>;reason=no-answer;counter=1"
    assert b.get("P-Asserted-Identity") == "<sip:5550100@127.0.0.1>"
    (target,) = [c.target for c in h.sw.core.calls.values()]
    assert target is not None and target.options.ring_timeout == 5.0


def test_the_offer_carries_the_headers_a_service_decides_on() -> None:
    h = Harness()
    h.offer(
        extra=(
            "Privacy: id",
            "P-Asserted-Identity: <sip:+33123456@carrier.example>",
            "Diversion: <sip:5001@a.example>;reason=unconditional;counter=1",
            "Diversion: <sip:5000@a.example>;reason=user-busy;counter=1",
        )
    )
    (offered,) = [m for _, m in h.sent if isinstance(m, Offered)]
    assert offered.info.headers == {
        "P-Asserted-Identity": "<sip:+33123456@carrier.example>",
        "Privacy": "id",
        "Diversion": "<sip:5001@a.example>;reason=unconditional;counter=1,"
        " <sip:5000@a.example>;reason=user-busy;counter=1",
        "Max-Forwards": "70",
    }


def test_events_name_the_destination_and_route_failed_every_outcome() -> None:
    h = Harness()
    call = h.offer()
    # bob is a user with no phone registered (480), 0123 reaches no route (404),
    # 9555 is busy and 7000 rings until its ring timeout.
    route = route_action(
        ["bob", "9555", "0123", Destination("7000", ring_timeout=10.0)], max_duration=60.0
    )
    out = h.command(call, route)
    assert summaries(out) == [(CALLEE, "INVITE")]
    first = Flow(h.sw, a_invite(), out[0])
    out = first.callee_responds(486, "Busy Here")
    assert summaries(out) == [(CALLEE, "ACK"), (PBX2, "INVITE")]
    second = Flow(h.sw, a_invite(), out[1])
    second.callee_responds(180, "Ringing")
    h.sw.advance(10.0)
    progress, failed = h.events()
    assert (progress.kind, progress.status, progress.destination) == ("progress", 180, "7000")
    assert (failed.kind, failed.status, failed.reason) == ("route_failed", 480, "No Answer")
    assert failed.destination == "7000"
    assert failed.outcomes == [
        Outcome("bob", 480, "Temporarily Unavailable"),
        Outcome("9555", 486, "Busy Here"),
        Outcome("0123", 404, "Not Found"),
        Outcome("7000", 480, "No Answer"),
    ]


def test_a_route_nothing_resolves_fails_at_once_with_its_outcomes() -> None:
    h = Harness()
    call = h.offer()
    assert h.command(call, Route(["0123", "bob"])) == []
    (failed,) = h.events()
    assert (failed.status, failed.destination) == (404, "0123")
    assert failed.outcomes == [
        Outcome("0123", 404, "Not Found"),
        Outcome("bob", 480, "Temporarily Unavailable"),
    ]


def test_answered_names_the_destination_and_released_the_switchs_duration() -> None:
    h = Harness()
    call = h.offer()
    out = h.command(call, Route(["0123", "7000"], [RouteOption(), RouteOption(caller_id="1")]))
    flow = Flow(h.sw, a_invite(), out[0])
    h.sw.advance(2.0)
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    flow.a_tag = out[-1].resp.to_tag
    assert flow.caller_ack() == []
    h.sw.advance(42.25)
    out = flow.caller_request("BYE", 2)
    flow.respond_to(out[1], 200, "OK", PBX2)
    answered, released = h.events()
    assert (answered.kind, answered.destination) == ("answered", "7000")
    assert (released.kind, released.cause, released.duration) == ("released", "caller-bye", 42.25)


def test_the_switch_ends_a_call_at_its_maximum_duration_with_no_server_left() -> None:
    h = Harness()
    call = h.offer()
    out = h.command(call, route_action(["9555"], max_duration=30.0))
    flow = Flow(h.sw, a_invite(), out[0])
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    flow.a_tag = out[-1].resp.to_tag
    flow.caller_ack()
    # Every application server is gone: the call is orphaned and the switch holds it.
    h.arbiter.server_down("as1", "test", h.sw.now)
    assert h.arbiter.owned[call].primary is None
    assert h.sw.advance(29.9) == []
    out = h.sw.advance(0.1)
    assert summaries(out) == [(CALLER, "BYE"), (CALLEE, "BYE")]
    flow.respond_to(out[0], 200, "OK", CALLER)
    flow.respond_to(out[1], 200, "OK", CALLEE)
    assert flow.gone()
    assert call not in h.arbiter.owned


def test_events_carry_only_what_is_set() -> None:
    h = Harness()
    call = h.offer()
    out = h.command(call, Route(["9555"]))
    flow = Flow(h.sw, a_invite(), out[0])
    flow.callee_responds(180, "Ringing")
    flow.callee_responds(486, "Busy Here")
    on_wire = [set(msgspec.msgpack.decode(msgspec.msgpack.encode(e))) for e in h.events()]
    base = {"type", "call", "seq", "kind", "at", "status"}
    assert on_wire == [base | {"destination"}, base | {"reason", "destination", "outcomes"}]


def test_a_destination_that_would_break_the_invite_is_not_routed() -> None:
    h = Harness()
    call = h.offer()
    # As a faulty or hostile server could send it: the API would have refused it.
    assert h.command(call, Route(["9555 SIP/2.0\r\nX-Evil: 1", "9<555>"])) == []
    (failed,) = h.events()
    assert failed.outcomes == [
        Outcome("9555 SIP/2.0\r\nX-Evil: 1", 404, "Not Found"),
        Outcome("9<555>", 404, "Not Found"),
    ]
