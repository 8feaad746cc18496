"""Screening through the public service harness (block and allow lists by longest
prefix, anonymous callers, the operator's allow list), and the header readings it and
forwarding rely on (twinline.services.parties)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from twinline.link.messages import CallInfo, Reject, Route
from twinline.services.parties import (
    caller_identity,
    diversion_history,
    hides_identity,
    hops_left,
    split_list,
)
from twinline.services.screening import ScreeningService
from twinline.services.testing import ServiceHarness
from twinline.store import Tx
from twinline.store import datatables as dt


def lists(*rows: tuple[str, str, str]) -> Callable[[Tx], None]:
    def setup(tx: Tx) -> None:
        for subscriber, kind, prefix in rows:
            values = {"subscriber": subscriber, "kind": kind, "prefix": prefix}
            dt.add(tx, dt.TABLES["screening"], values, at=0.0)

    return setup


LISTS = lists(
    ("bob", "block", "33"),
    ("bob", "allow", "3314"),
    ("bob", "block", "331456"),
    ("bob", "reject-anonymous", ""),
    ("carol", "block", ""),  # a white list: only what carol allows, and the operator's
    ("carol", "allow", "44"),
    ("*", "allow", "112"),
    ("*", "allow", "3315"),
)


@pytest.mark.parametrize(
    ("callee", "caller", "headers", "answer"),
    [
        ("bob", "3312", {}, Reject(603, "Decline")),
        ("bob", "3314", {}, Route(["bob"])),  # a longer allow beats the block
        ("bob", "3314567", {}, Reject(603, "Decline")),  # a longer block beats the allow
        ("bob", "+3312", {}, Reject(603, "Decline")),  # a leading + is not a digit
        ("bob", "4420", {}, Route(["bob"])),  # no match: allowed
        ("bob", "3315000", {}, Route(["bob"])),  # the operator's list: never blocked
        ("carol", "4420", {}, Route(["carol"])),
        ("carol", "4920", {}, Reject(603, "Decline")),
        ("carol", "112", {}, Route(["carol"])),
        ("dave", "3312", {}, Route(["dave"])),  # no lists at all
        # The network's asserted identity is the caller's number.
        ("bob", "4420", {"P-Asserted-Identity": "<sip:3312@trunk>"}, Reject(603, "Decline")),
        # Anonymous callers, to a callee who rejects them and to one who does not.
        ("bob", "anonymous", {}, Reject(433, "Anonymity Disallowed")),
        ("bob", "4420", {"Privacy": "id"}, Reject(433, "Anonymity Disallowed")),
        ("bob", "4420", {"Privacy": "header;id"}, Reject(433, "Anonymity Disallowed")),
        ("bob", "4420", {"Privacy": "none"}, Route(["bob"])),
        ("carol", "anonymous", {}, Route(["carol"])),  # carol does not ask
        # Hidden, but known to the network as an operator-allowed number.
        ("bob", "anonymous", {"Privacy": "id", "P-Asserted-Identity": "<sip:112@x>"},
         Route(["bob"])),
    ],
)  # fmt: skip
def test_screening_decides_at_the_offer(
    callee: str, caller: str, headers: dict[str, str], answer: Route | Reject
) -> None:
    with ServiceHarness(ScreeningService, data=LISTS) as h:
        call = h.offer(caller=caller, callee=callee, headers=headers)
        assert call.commands == [answer]
        if isinstance(answer, Reject):
            assert call.cdr is not None and call.cdr.status == answer.status


def test_a_screened_call_that_fails_tells_the_caller() -> None:
    with ServiceHarness(ScreeningService, data=LISTS) as h:
        call = h.offer(caller="4420", callee="bob")
        h.fail(call, 486, "Busy Here")
        assert call.commands == [Route(["bob"]), Reject(486, "Busy Here")]


def info(caller: str = "alice", **headers: str) -> CallInfo:
    return CallInfo(caller=caller, callee="bob", headers=headers)


def test_header_lists_split_outside_brackets_and_quotes() -> None:
    value = '"Smith, J" <sip:1@a;x=1,2>;counter=2, <sip:2@b>,<sip:3@c>'
    assert split_list(value) == ['"Smith, J" <sip:1@a;x=1,2>;counter=2', "<sip:2@b>", "<sip:3@c>"]


def test_the_caller_and_its_privacy() -> None:
    assert caller_identity(info()) == "alice"
    assert caller_identity(info("anonymous")) is None
    assert caller_identity(info("anonymous", **{"P-Asserted-Identity": "<sip:+331@t>"})) == "+331"
    assert caller_identity(info(**{"P-Asserted-Identity": "garbage"})) == "alice"
    assert hides_identity(info("Anonymous"))
    assert hides_identity(info(Privacy="id"))
    assert hides_identity(info(Privacy="user"))
    assert not hides_identity(info(Privacy="none"))
    assert not hides_identity(info())


def test_the_diversions_a_call_arrived_with() -> None:
    diversion = "<sip:5002@a>;reason=user-busy;counter=2, <sip:5001@a>;reason=unconditional"
    history_info = "<sip:4000@b?Reason=SIP%3Bcause%3D486>;index=1, <sip:5001@a>;index=1.1"
    history = diversion_history(info(Diversion=diversion, **{"History-Info": history_info}))
    assert history.diverted_from == ("5002", "5001", "4000")
    assert history.count == 4
    assert diversion_history(info()).count == 0
    assert hops_left(info(**{"Max-Forwards": "7"})) == 7
    assert hops_left(info()) is None
