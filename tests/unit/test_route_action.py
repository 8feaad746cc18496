"""`ServiceCall.route`'s options: checked where the service gives them, carried on the
link in a form the switches of before still decode."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from twinline.appserver.runtime import AppServerRuntime
from twinline.link.messages import CallInfo, Command, Event, Offered, Outcome, Route, RouteOption
from twinline.services import Destination
from twinline.services.api import ServiceCall
from twinline.services.basic import BasicCall
from twinline.services.destination import route_action


def service_call() -> ServiceCall[msgspec.Struct]:
    return ServiceCall(
        "c1", CallInfo(caller="alice", callee="100"), msgspec.Struct(), now=0.0,
        run="offer", timers={}, store=None,
    )  # fmt: skip


def test_a_plain_route_is_what_it_always_was() -> None:
    call = service_call()
    call.route("alice", "bob")
    assert call.actions == [Route(["alice", "bob"])]
    # Defaults are left off the wire: the same bytes as before route options.
    assert msgspec.msgpack.encode(call.actions[0]) == msgspec.msgpack.encode(
        {"type": "route", "destinations": ["alice", "bob"]}
    )


def test_keywords_apply_to_every_destination_that_sets_no_option_of_its_own() -> None:
    call = service_call()
    call.route(
        "alice",
        Destination("bob", ring_timeout=30, diversion="no-answer"),
        ring_timeout=15,
        caller_id="5550100",
        max_duration=120,
    )
    assert call.actions == [
        Route(
            ["alice", "bob"],
            [
                RouteOption(ring_timeout=15.0, caller_id="5550100"),
                RouteOption(ring_timeout=30.0, caller_id="5550100", diversion="no-answer"),
            ],
            120.0,
        )
    ]


def test_trailing_destinations_without_options_take_no_room() -> None:
    assert route_action([Destination("a", ring_timeout=5), "b"]) == Route(
        ["a", "b"], [RouteOption(ring_timeout=5.0)]
    )


@pytest.mark.parametrize(
    ("destinations", "options", "message"),
    [
        ((), {}, "route() needs at least one destination"),
        (("",), {}, "route(): '' is not a destination"),
        (("1000\r\nX-Evil: 1",), {}, "route(): '1000\\r\\nX-Evil: 1' is not a destination"),
        (("bob@evil.example",), {}, "route(): 'bob@evil.example' is not a destination"),
        (("a",), {"ring_timeout": 0}, "route(): ring_timeout must be greater than 0, not 0"),
        (("a",), {"max_duration": -1}, "route(): max_duration must be greater than 0, not -1"),
        (
            ("a",),
            {"diversion": "busy"},
            "route(): diversion: 'busy' is not a reason (one of unknown, user-busy,",
        ),
        (("a",), {"caller_id": "12 34"}, "route(): caller_id: Expected `str` matching regex"),
        (("a",), {"caller_name": "x\r\nVia: evil"}, "route(): caller_name: Expected `str`"),
        ((Destination("a", ring_timeout=-2),), {}, "route(): ring_timeout must be greater than"),
    ],
)
def test_bad_options_raise_naming_the_option(
    destinations: tuple[str | Destination, ...], options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as info:
        service_call().route(*destinations, **options)  # type: ignore[arg-type]
    assert str(info.value).startswith(message), str(info.value)


class OldRoute(msgspec.Struct, tag="route", frozen=True):
    destinations: list[str]


class OldEvent(msgspec.Struct, tag="event", frozen=True, kw_only=True):
    call: str
    seq: int
    kind: str
    at: float
    status: int = 0
    reason: str = ""
    cause: str = ""


def test_the_new_fields_decode_both_ways_with_the_messages_of_before() -> None:
    new = Route(["a", "b"], [RouteOption(ring_timeout=5.0)], 60.0)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(new), type=OldRoute) == OldRoute(
        ["a", "b"]
    )
    old = msgspec.msgpack.encode(Command(call="c1", epoch=1, seq=1, action=OldRoute(["a"])))  # type: ignore[arg-type]
    assert msgspec.msgpack.decode(old, type=Command).action == Route(["a"])
    event = Event(call="c1", seq=1, kind="released", at=1.0, cause="max-duration", duration=9.5)
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(event), type=OldEvent).cause == (
        "max-duration"
    )
    before = OldEvent(call="c1", seq=1, kind="answered", at=1.0, status=200)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(before), type=Event)
    assert (decoded.destination, decoded.outcomes, decoded.duration) == ("", [], 0.0)


def test_a_handler_reads_the_event_it_handles() -> None:
    seen: list[tuple[str, Event | None]] = []

    class Recorder(BasicCall):
        async def offered(self, call: Any) -> None:
            seen.append(("offered", call.event))
            call.route("bob", "carol")

        async def route_failed(self, call: Any, status: int, reason: str) -> None:
            seen.append(("route_failed", call.event))
            call.route("dave")

        async def answered(self, call: Any) -> None:
            seen.append(("answered", call.event))

        async def released(self, call: Any, cause: str) -> None:
            seen.append(("released", call.event))

    sent: list[msgspec.Struct] = []
    runtime = AppServerRuntime(
        "as1", {"basic": Recorder(None)}, None,
        to_switch=sent.append, to_peer=lambda p, m: False, wall=lambda: 1.0,
    )  # fmt: skip
    failed = Event(
        call="c1", seq=1, kind="route_failed", at=2.0, status=486, reason="Busy Here",
        destination="carol",
        outcomes=[Outcome("bob", 480, "No Answer"), Outcome("carol", 486, "Busy Here")],
    )  # fmt: skip
    answered = Event(call="c1", seq=2, kind="answered", at=3.0, status=200, destination="dave")
    released = Event(call="c1", seq=3, kind="released", at=45.5, cause="callee-bye", duration=42.5)

    async def scenario() -> None:
        runtime.offered(
            Offered(
                call="c1",
                epoch=1,
                role="primary",
                primary="as1",
                standby=None,
                service="basic",
                info=CallInfo(caller="alice", callee="bob"),
            )
        )
        for event in (failed, answered, released):
            for _ in range(5):
                await asyncio.sleep(0)
            runtime.event(event)
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert seen == [
        ("offered", None),
        ("route_failed", failed),
        ("answered", answered),
        ("released", released),
    ]
