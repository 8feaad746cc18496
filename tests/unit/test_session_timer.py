"""RFC 4028 session timers: the negotiation (pure) and the switch refreshing,
honouring refreshes and releasing expired calls, with bytes and a stepped clock.

The switch here asks for 60 s intervals and accepts no less than 10 s. The
caller's side gives up `min(32, interval / 3)` before the interval ends when it
does not refresh (section 10): 40 s into a 60 s interval.
"""

from __future__ import annotations

import pytest
from sipfix import (
    CALLEE,
    CALLER,
    SDP_ANSWER,
    SDP_OFFER,
    Sent,
    Switch,
    request_bytes,
    response_bytes,
    summaries,
)
from test_b2bua import (
    A_CALL_ID,
    A_CONTACT,
    A_FROM,
    A_TO,
    B_CONTACT,
    SW_URI,
    Flow,
    a_invite,
    answered,
    reply,
)

from twinline.sip.errors import SipParseError
from twinline.sip.message import Request, Response
from twinline.switch.call import CallState
from twinline.switch.session_timer import (
    IntervalTooSmall,
    SessionConfig,
    negotiate_as_uac,
    negotiate_as_uas,
    parse_session_expires,
    request_headers,
)

CONFIG = SessionConfig(session_expires=60, min_se=10)
TIMER = ("Supported: timer",)


def request(*headers: tuple[str, str]) -> Request:
    return Request("INVITE", "sip:x@127.0.0.1", list(headers))


def response(*headers: tuple[str, str]) -> Response:
    return Response(200, "OK", list(headers))


# --- negotiation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "interval", "we_refresh", "supports"),
    [
        # A phone that knows nothing of RFC 4028: the switch refreshes it.
        ([], 60, True, False),
        # It supports timers but asks nothing: it refreshes, at our interval.
        ([("Supported", "timer")], 60, False, True),
        # It asks: honoured, shortened to ours at most.
        ([("Supported", "timer"), ("Session-Expires", "30;refresher=uac")], 30, False, True),
        ([("Supported", "timer"), ("Session-Expires", "3600;refresher=uas")], 60, True, True),
        ([("Supported", "100rel, timer"), ("Session-Expires", "45")], 45, False, True),
        # Its Min-SE is a floor for us too.
        ([("Supported", "timer"), ("Min-SE", "90")], 90, False, True),
        # Too short, from a UA that cannot retry (a proxy asked): raised to Min-SE.
        ([("Session-Expires", "5")], 10, True, False),
        # refresher=uac from a UA without the extension cannot be: we refresh.
        ([("Session-Expires", "30;refresher=uac")], 30, True, False),
    ],
)
def test_negotiation_as_the_callers_uas(
    headers: list[tuple[str, str]], interval: int, we_refresh: bool, supports: bool
) -> None:
    session = negotiate_as_uas(request(*headers), CONFIG)
    assert session is not None
    assert (session.interval, session.we_refresh, session.peer_supports) == (
        interval,
        we_refresh,
        supports,
    )


def test_too_short_an_interval_from_a_ua_that_supports_timers_is_422() -> None:
    with pytest.raises(IntervalTooSmall) as info:
        negotiate_as_uas(request(("Supported", "timer"), ("Session-Expires", "5")), CONFIG)
    assert info.value.min_se == 10


@pytest.mark.parametrize("value", ["", "abc", "-5", "30;refresher=both", "30;;"])
def test_a_malformed_session_expires_is_400(value: str) -> None:
    with pytest.raises(SipParseError) as info:
        parse_session_expires(value)
    assert info.value.status == 400


def test_negotiation_as_the_callees_uac() -> None:
    # No Session-Expires in the 2xx: the callee does not support it, we refresh.
    session = negotiate_as_uac(response(), CONFIG, 60)
    assert session is not None and (session.interval, session.we_refresh) == (60, True)
    session = negotiate_as_uac(response(("Session-Expires", "90;refresher=uas")), CONFIG, 60)
    assert session is not None and (session.interval, session.we_refresh) == (90, False)
    session = negotiate_as_uac(response(("Session-Expires", "90;refresher=uac")), CONFIG, 60)
    assert session is not None and session.we_refresh
    assert request_headers(CONFIG) == [
        ("Supported", "timer"),
        ("Session-Expires", "60"),
        ("Min-SE", "10"),
    ]


def test_off_means_no_headers_and_no_session() -> None:
    off = SessionConfig(session_expires=0)
    assert request_headers(off) == []
    assert negotiate_as_uas(request(("Supported", "timer")), off) is None
    assert negotiate_as_uac(response(), off, 60) is None


# --- the switch -------------------------------------------------------------------------


def switch() -> Switch:
    return Switch(session=CONFIG)


def test_the_callee_is_offered_timers_and_the_caller_told_its_terms() -> None:
    sw = switch()
    flow = answered_with(sw, a_invite(extra=(*TIMER, "Session-Expires: 30;refresher=uac")))
    b = flow.b_invite.req
    assert b.get("Supported") == "timer"
    assert b.get("Session-Expires") == "60"
    assert b.get("Min-SE") == "10"
    ok = flow.answer
    assert ok.get("Session-Expires") == "30;refresher=uac"
    assert ok.get("Require") == "timer"  # the caller must refresh (RFC 4028 9)


def answered_with(sw: Switch, invite: bytes, *, extra: tuple[str, ...] = ()) -> Answered:
    out = sw.receive(invite, CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    flow = Answered(sw, invite, out[1])
    data = response_bytes(
        flow.b_invite.data, 200, "OK", to_tag="b1", contact=B_CONTACT, body=SDP_ANSWER,
        content_type="application/sdp", extra=extra,
    )  # fmt: skip
    out = sw.receive(data, CALLEE)
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "200 INVITE")]
    flow.a_tag = out[1].resp.to_tag
    flow.answer = out[1].resp
    assert flow.caller_ack() == []
    return flow


class Answered(Flow):
    answer: Response


def test_a_caller_that_stops_refreshing_is_released_on_both_legs() -> None:
    sw = switch()
    flow = answered_with(sw, a_invite(extra=(*TIMER, "Session-Expires: 60;refresher=uac")))
    # The callee's 200 had no Session-Expires: the switch refreshes it, half way.
    out = sw.advance(30)
    assert summaries(out) == [(CALLEE, "INVITE")]  # no UPDATE in its Allow: a re-INVITE
    refresh = out[0].req
    assert refresh.body == SDP_OFFER  # the offer it had from us, unchanged
    assert refresh.get("Session-Expires") == "60;refresher=uac"
    out = sw.receive(reply(out[0], 200, "OK", contact=B_CONTACT, body=SDP_ANSWER), CALLEE)
    assert summaries(out) == [(CALLEE, "ACK")]
    # The caller never refreshes: 40 s in (60 - min(32, 60/3)), BYE both ways.
    assert sw.advance(9.9) == []
    out = sw.advance(0.2)
    assert sorted(summaries(out)) == sorted([(CALLER, "BYE"), (CALLEE, "BYE")])
    call = next(iter(sw.core.calls.values()))
    assert call.cause == "session-expired"
    assert sw.core.stats.calls_session_expired == 1
    for sent in out:
        sw.receive(response_bytes(sent.data, 200, "OK"), sent.address)
    assert call.state is CallState.ENDED and flow.gone()


def test_a_caller_that_refreshes_keeps_its_call() -> None:
    sw = switch()
    flow = answered_with(
        sw,
        a_invite(extra=(*TIMER, "Session-Expires: 60;refresher=uac")),
        extra=("Session-Expires: 60;refresher=uas", "Require: timer"),
    )
    for n in range(2, 6):  # four refreshes, 30 s apart: two and a half minutes
        assert sw.advance(30) == []
        out = caller_refresh(flow, n)
        assert summaries(out) == [(CALLEE, "UPDATE")]
        assert out[0].req.get("Session-Expires") == "60;refresher=uas"  # the callee's terms
        out = sw.receive(
            response_bytes(out[0].data, 200, "OK", extra=["Session-Expires: 60;refresher=uas"]),
            CALLEE,
        )
        assert summaries(out) == [(CALLER, "200 UPDATE")]
        assert out[0].resp.get("Session-Expires") == "60;refresher=uac"
    assert sw.core.calls and sw.core.stats.calls_session_expired == 0
    # Then it vanishes: gone 40 s after its last refresh.
    assert sw.advance(39.9) == []
    assert sorted(summaries(sw.advance(0.2))) == sorted([(CALLER, "BYE"), (CALLEE, "BYE")])


def caller_refresh(flow: Flow, cseq: int) -> list[Sent]:
    """An UPDATE from a timer-aware caller, refreshing its session (RFC 4028 7.4)."""
    data = request_bytes(
        "UPDATE", SW_URI, branch=f"z9hG4bKaupdate{cseq}", call_id=A_CALL_ID, cseq=cseq,
        from_=A_FROM, to=f"{A_TO};tag={flow.a_tag}", contact=A_CONTACT,
        extra=("Supported: timer", "Session-Expires: 60;refresher=uac"),
    )  # fmt: skip
    return flow.sw.receive(data, CALLER)


def test_the_switch_refreshes_a_caller_without_timer_support_and_ends_a_silent_one() -> None:
    sw = switch()
    # (The callee asks a long interval and refreshes it itself: it stays out of the way.)
    answered_with(
        sw,
        a_invite(extra=("Allow: INVITE, ACK, BYE, CANCEL, UPDATE",)),
        extra=("Session-Expires: 600;refresher=uas", "Require: timer"),
    )
    out = sw.advance(30)
    assert summaries(out) == [(CALLER, "UPDATE")]  # it allows UPDATE: no SDP needed
    update = out[0].req
    assert update.body == b""
    assert update.get("Session-Expires") == "60;refresher=uac"
    out = sw.receive(response_bytes(out[0].data, 200, "OK"), CALLER)
    assert out == []
    # The next one, 30 s after that answer, gets no answer at all: at the end of
    # the interval the call is released (before the UPDATE's own Timer F).
    out = sw.advance(30)
    assert summaries(out) == [(CALLER, "UPDATE")]
    out = [s for s in sw.advance(30) if s.summary()[1] != "UPDATE"]  # retransmissions
    assert sorted(summaries(out)) == sorted([(CALLER, "BYE"), (CALLEE, "BYE")])
    assert next(iter(sw.core.calls.values())).cause == "session-expired"


def test_a_refresh_answered_481_ends_the_call_at_once() -> None:
    sw = switch()
    answered_with(
        sw,
        a_invite(extra=("Allow: INVITE, ACK, BYE, UPDATE",)),
        extra=("Session-Expires: 600;refresher=uas", "Require: timer"),
    )
    out = sw.advance(30)
    assert summaries(out) == [(CALLER, "UPDATE")]
    out = sw.receive(response_bytes(out[0].data, 481, "Call Does Not Exist"), CALLER)
    assert sorted(summaries(out)) == sorted([(CALLER, "BYE"), (CALLEE, "BYE")])


def test_an_interval_below_min_se_from_a_timer_aware_caller_gets_422() -> None:
    sw = switch()
    out = sw.receive(a_invite(extra=(*TIMER, "Session-Expires: 5")), CALLER)
    assert summaries(out) == [(CALLER, "422 INVITE")]
    assert out[0].resp.get("Min-SE") == "10"
    assert not sw.core.calls


def test_a_422_from_the_callee_is_retried_with_its_min_se() -> None:
    sw = switch()
    out = sw.receive(a_invite(), CALLER)
    first = out[1]
    out = sw.receive(
        response_bytes(first.data, 422, "Session Interval Too Small", to_tag="x",
                       extra=["Min-SE: 120"]),
        CALLEE,
    )  # fmt: skip
    retry = [s for s in out if s.summary() == (CALLEE, "INVITE")]
    assert len(retry) == 1, summaries(out)
    assert retry[0].req.get("Session-Expires") == "120"
    assert (CALLER, "422 INVITE") not in summaries(out)


def test_off_the_switch_adds_nothing() -> None:
    sw = Switch()
    flow = answered(sw)
    assert flow.b_invite.req.get("Session-Expires") is None
    assert sw.advance(3600) == []


def test_a_refresh_due_while_a_reinvite_is_under_way_waits_for_it() -> None:
    sw = switch()
    flow = answered_with(sw, a_invite(extra=(*TIMER, "Session-Expires: 60;refresher=uac")))
    # The caller re-INVITEs 29 s in; the callee is slow to answer it.
    assert sw.advance(29) == []
    out = flow.caller_request("INVITE", 2, body=SDP_OFFER + b"a=sendonly\r\n")
    assert summaries(out) == [(CALLEE, "INVITE")]
    relayed = out[0]
    # At 30 s the callee's refresh is due, but an offer is in flight: it waits.
    out = sw.advance(1.5)
    assert out and all(sent.data == relayed.data for sent in out)  # Timer A: the relayed one
    out = sw.receive(reply(relayed, 200, "OK", contact=B_CONTACT, body=SDP_ANSWER), CALLEE)
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "200 INVITE")]
    # That 2xx refreshed both legs (30.5 s): the next refresh of the callee is at 60.5.
    # (The caller's re-INVITE said nothing of timers: from now on the switch refreshes
    # it too, RFC 4028 9.)
    assert flow.caller_ack(2) == []
    assert sw.advance(29.9) == []
    # Both legs are due at once; one re-INVITE at a time on a call, so the callee's
    # waits for the caller's to be answered.
    out = sw.advance(0.2)
    assert summaries(out) == [(CALLER, "INVITE")]
    assert out[0].req.get("Session-Expires") == "60;refresher=uac"
    assert out[0].req.body == SDP_ANSWER  # what the caller last had from us
    out = sw.receive(reply(out[0], 200, "OK", contact="<sip:alice@127.0.0.1:5061>",
                           body=SDP_OFFER), CALLER)  # fmt: skip
    assert summaries(out) == [(CALLER, "ACK")]
    out = sw.advance(1.0)
    assert summaries(out) == [(CALLEE, "INVITE")]
    assert out[0].req.get("Session-Expires") == "60;refresher=uac"


def test_a_callee_with_a_malformed_session_expires_is_refreshed_by_the_switch() -> None:
    sw = switch()
    answered_with(sw, a_invite(extra=TIMER), extra=("Session-Expires: soon",))
    out = sw.advance(30)
    # Both legs: the caller refreshes its own (it said timer), the switch the callee's.
    assert summaries(out) == [(CALLEE, "INVITE")]
    assert out[0].req.get("Session-Expires") == "60;refresher=uac"


def test_require_timer_is_accepted_while_session_timers_are_on_and_refused_when_off() -> None:
    on = switch()
    out = on.receive(a_invite(extra=("Require: timer", "Session-Expires: 90")), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    off = Switch()
    out = off.receive(a_invite(extra=("Require: timer", "Session-Expires: 90")), CALLER)
    assert summaries(out) == [(CALLER, "420 INVITE")]
    assert out[0].resp.get("Unsupported") == "timer"
