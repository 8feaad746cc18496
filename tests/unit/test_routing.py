"""The routing plan: what a dialled number or user name reaches."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from twinline.config import load_config_text
from twinline.sip.errors import SipParseError
from twinline.switch.registrar import Binding as StoredBinding
from twinline.switch.registrar import LocationService
from twinline.switch.routing import DestinationOptions, NoRoute, RoutingPlan, Target, address_of_uri

CONFIG = """
[[users]]
name = "alice"
password = "a"

[[users]]
name = "9123"
password = "b"

[[routes]]
prefix = "9"
target = "pbx.example:5070"
strip = 1

[[routes]]
prefix = "90"
target = "10.0.0.2:5060"
strip = 2
add = "+44"

[[routes]]
prefix = "901"
target = "[2001:db8::1]:5080"
transport = "tcp"

[[routes]]
prefix = "*"
target = "voicemail.example:5090"
"""


@dataclass(frozen=True)
class FakeBinding:
    contact: str
    source: tuple[str, str, int] = ("udp", "192.0.2.1", 5060)


class FakeLocation:
    def __init__(self, bindings: dict[str, list[FakeBinding]] | None = None) -> None:
        self.bindings = bindings or {}

    def lookup(self, user: str, now: float) -> list[FakeBinding]:
        return list(self.bindings.get(user, []))


def plan(location: object | None = None, config: str = CONFIG) -> RoutingPlan:
    return RoutingPlan(load_config_text(config), location or FakeLocation())  # type: ignore[arg-type]


# --- static routes ----------------------------------------------------------------------------


def test_route_strips_the_prefix() -> None:
    assert plan().resolve("95551234", 0.0) == [
        Target("sip:5551234@pbx.example:5070", ("udp", "pbx.example", 5070), "route:9", "95551234")
    ]


def test_longest_prefix_wins_whatever_the_order_in_the_file() -> None:
    # "90" is longer than "9": it wins for 90..., and strips 2 then adds +44.
    assert plan().resolve("902079460000", 0.0) == [
        Target(
            "sip:+442079460000@10.0.0.2:5060", ("udp", "10.0.0.2", 5060), "route:90", "902079460000"
        )
    ]


def test_tcp_route_gets_the_transport_parameter_and_ipv6_brackets() -> None:
    assert plan().resolve("9012", 0.0) == [
        Target(
            "sip:9012@[2001:db8::1]:5080;transport=tcp",
            ("tcp", "2001:db8::1", 5080),
            "route:901",
            "9012",
        )
    ]


def test_non_digit_prefix() -> None:
    (target,) = plan().resolve("*98", 0.0)
    assert target.uri == "sip:*98@voicemail.example:5090"


def test_empty_prefix_is_a_default_route() -> None:
    config = '[[routes]]\nprefix = ""\ntarget = "trunk:5060"\n'
    (target,) = plan(config=config).resolve("12345", 0.0)
    assert target == Target("sip:12345@trunk:5060", ("udp", "trunk", 5060), "route:", "12345")


def test_unknown_number_is_404() -> None:
    with pytest.raises(NoRoute) as info:
        plan().resolve("12345", 0.0)
    assert (info.value.status, info.value.reason) == (404, "Not Found")
    assert str(info.value) == "404 Not Found"


# --- registered users -------------------------------------------------------------------------


def test_registered_user_contacts_in_the_order_given() -> None:
    location = FakeLocation(
        {
            "alice": [
                FakeBinding("sip:alice@192.0.2.10:5070"),
                FakeBinding("sip:alice@192.0.2.11;transport=tcp", ("udp", "192.0.2.11", 5060)),
                FakeBinding("sip:alice@192.0.2.12:5072"),
            ]
        }
    )
    assert plan(location).resolve("alice", 0.0) == [
        Target("sip:alice@192.0.2.10:5070", ("udp", "192.0.2.10", 5070), "user:alice", "alice"),
        Target(
            "sip:alice@192.0.2.11;transport=tcp", ("tcp", "192.0.2.11", 5060), "user:alice", "alice"
        ),
        Target("sip:alice@192.0.2.12:5072", ("udp", "192.0.2.12", 5072), "user:alice", "alice"),
    ]


def test_phone_on_tcp_is_reached_over_the_connection_it_registered_on() -> None:
    source = ("tcp", "198.51.100.7", 49152)
    location = FakeLocation(
        {"alice": [FakeBinding("sip:alice@10.1.1.1:5060;transport=tcp", source)]}
    )
    (target,) = plan(location).resolve("alice", 0.0)
    assert target.address == source
    assert target.uri == "sip:alice@10.1.1.1:5060;transport=tcp"


def test_contacts_that_cannot_be_reached_are_skipped() -> None:
    location = FakeLocation(
        {
            "alice": [
                FakeBinding("sip:alice@192.0.2.10;transport=sctp"),  # no SCTP transport
                FakeBinding("mailto:alice@example.com"),
                FakeBinding("sip:alice@192.0.2.11"),
            ]
        }
    )
    assert plan(location).resolve("alice", 0.0) == [
        Target("sip:alice@192.0.2.11", ("udp", "192.0.2.11", 5060), "user:alice", "alice")
    ]


@pytest.mark.parametrize(
    "bindings",
    [[], [FakeBinding("sip:alice@192.0.2.10;transport=sctp")]],
    ids=["no-contact", "no-usable-contact"],
)
def test_registered_user_without_contact_is_480(bindings: list[FakeBinding]) -> None:
    with pytest.raises(NoRoute) as info:
        plan(FakeLocation({"alice": bindings})).resolve("alice", 0.0)
    assert (info.value.status, info.value.reason) == (480, "Temporarily Unavailable")


def test_a_user_name_wins_over_a_route_prefix() -> None:
    with pytest.raises(NoRoute) as info:
        plan().resolve("9123", 0.0)  # user 9123 exists but has no contact
    assert info.value.status == 480


def test_with_the_location_service_best_q_first_then_newest() -> None:
    location = LocationService()

    def bind(contact: str, q: float, at: float) -> None:
        location.bind(
            StoredBinding(
                user="alice", contact=contact, key=contact, expires_at=at + 60, call_id="c",
                cseq=1, q=q, source=("udp", "192.0.2.1", 5060), registered_at=at,
            ),
            at,
        )  # fmt: skip

    bind("sip:alice@192.0.2.1:5001", 0.5, 0.0)
    bind("sip:alice@192.0.2.1:5002", 1.0, 1.0)
    bind("sip:alice@192.0.2.1:5003", 0.5, 2.0)
    routing = plan(location)
    assert [t.address[2] for t in routing.resolve("alice", 10.0)] == [5002, 5003, 5001]
    # Once expired they are gone: the user is known but unreachable.
    with pytest.raises(NoRoute) as info:
        routing.resolve("alice", 100.0)
    assert info.value.status == 480


# --- address_of_uri ---------------------------------------------------------------------------


def test_address_of_uri() -> None:
    assert address_of_uri("sip:bob@192.0.2.1") == ("udp", "192.0.2.1", 5060)
    assert address_of_uri("sip:bob@192.0.2.1:5070;transport=TCP") == ("tcp", "192.0.2.1", 5070)
    assert address_of_uri("sip:[2001:db8::2]:5071") == ("udp", "2001:db8::2", 5071)
    # TLS: a SIPS URI, or transport=tls, on 5061 unless a port is given.
    assert address_of_uri("sips:bob@192.0.2.1") == ("tls", "192.0.2.1", 5061)
    assert address_of_uri("sip:bob@example.net:5071;transport=tls") == ("tls", "example.net", 5071)
    with pytest.raises(SipParseError) as info:
        address_of_uri("sip:bob@192.0.2.1;transport=sctp")
    assert (info.value.status, info.value.reason) == (416, "Unsupported transport sctp")


def test_targets_carry_the_options_of_their_destination() -> None:
    options = DestinationOptions(ring_timeout=12.0, diversion="no-answer")
    (target,) = plan().resolve("95551234", 0.0, options)
    assert (target.destination, target.options) == ("95551234", options)
    location = FakeLocation({"alice": [FakeBinding("sip:alice@192.0.2.10")] * 2})
    assert [t.options for t in plan(location).resolve("alice", 0.0, options)] == [options] * 2
