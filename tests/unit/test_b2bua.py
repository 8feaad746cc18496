"""The switch core (B2BUA) driven with bytes and a stepped clock.

A `Switch` (sipfix) holds a `SwitchCore` with `PlanControl` and a `RoutingPlan` built
from sipfix.CONFIG: numbers starting with 9 go to the PBX at 127.0.0.1:5062 with the 9
stripped. The caller is a phone at 127.0.0.1:5061 and dials 9555, so the callee is
sip:555@127.0.0.1:5062. Every test asserts the exact sequence of messages the switch
sends, and the exact bytes where the switch builds a message itself; random values
(tags, branches, Call-IDs) are read from what was sent and checked for their form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sipfix import (
    CALLEE,
    CALLER,
    CONFIG,
    SDP_ANSWER,
    SDP_OFFER,
    Sent,
    Switch,
    param,
    request_bytes,
    response_bytes,
    summaries,
    wire,
)

from twinline.switch.call import CallState
from twinline.switch.routing import Target

A_CALL_ID = "a-call-1@127.0.0.1"
A_FROM = '"Alice" <sip:alice@127.0.0.1>;tag=a1'
A_TO = "<sip:9555@127.0.0.1>"
A_CONTACT = "<sip:alice@127.0.0.1:5061>"
A_URI = "sip:9555@127.0.0.1:5060"
A_VIA = "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa1"
SW_CONTACT = "<sip:127.0.0.1:5060>"
SW_URI = "sip:127.0.0.1:5060"
B_URI = "sip:555@127.0.0.1:5062"
# The callee's Contact differs from the URI it was called at: in-dialog requests (ACK
# of a 2xx, BYE, re-INVITE) must go to the Contact (RFC 3261 12.2.1.1).
B_CONTACT = "<sip:pbx-555@127.0.0.1:5062;line=3>"
B_TARGET = "sip:pbx-555@127.0.0.1:5062;line=3"
B_TAG = "b1"
SDP = "application/sdp"
T1 = 0.5

TAG = re.compile(r"[0-9a-f]{12}")
BRANCH = re.compile(r"z9hG4bK[0-9a-f]{16}")
CALL_ID = re.compile(r"[0-9a-f]{24}@127\.0\.0\.1")

# The headers a response to the caller's INVITE copies (RFC 3261 8.2.6.2).
A_RESPONSE_HEAD = [("Via", A_VIA), ("From", A_FROM)]


def a_invite(
    *,
    body: bytes = SDP_OFFER,
    call_id: str = A_CALL_ID,
    branch: str = "z9hG4bKa1",
    uri: str = A_URI,
    to: str = A_TO,
    extra: tuple[str, ...] = (),
) -> bytes:
    return request_bytes(
        "INVITE",
        uri,
        branch=branch,
        call_id=call_id,
        cseq=1,
        from_=A_FROM,
        to=to,
        contact=A_CONTACT,
        body=body,
        content_type=SDP if body else None,
        extra=("User-Agent: test-phone", "X-Private: not passed on", *extra),
    )


@dataclass
class Flow:
    """One call through the switch, seen from the caller's and the callee's side."""

    sw: Switch
    invite: bytes  # the caller's INVITE
    b_invite: Sent  # the INVITE the switch sent the callee
    a_tag: str = ""  # the switch's To tag towards the caller
    b_ack_cseq: int = 1

    @property
    def b(self) -> Sent:
        return self.b_invite

    @property
    def b_from(self) -> str:
        return self.b_invite.req.get("From") or ""

    # the callee ------------------------------------------------------------------------
    def callee_responds(
        self,
        status: int,
        reason: str,
        *,
        body: bytes = b"",
        to_tag: str | None = B_TAG,
        contact: str | None = B_CONTACT,
    ) -> list[Sent]:
        data = response_bytes(
            self.b_invite.data,
            status,
            reason,
            to_tag=to_tag if status > 100 else None,
            contact=contact if 100 < status < 300 else None,
            body=body,
            content_type=SDP if body else None,
        )
        return self.sw.receive(data, CALLEE)

    def callee_request(self, method: str, cseq: int, *, body: bytes = b"") -> list[Sent]:
        data = request_bytes(
            method,
            SW_URI,
            branch=f"z9hG4bKb{method.lower()}{cseq}",
            call_id=self.b_invite.req.call_id,
            cseq=cseq,
            from_=f"{B_CONTACT};tag={B_TAG}",
            to=self.b_from,
            via_host="127.0.0.1:5062",
            contact=B_CONTACT if method in ("INVITE", "UPDATE") else None,
            body=body,
            content_type=SDP if body else None,
        )
        return self.sw.receive(data, CALLEE)

    # the caller ------------------------------------------------------------------------
    def caller_request(
        self, method: str, cseq: int, *, body: bytes = b"", branch: str | None = None
    ) -> list[Sent]:
        data = request_bytes(
            method,
            SW_URI,
            branch=branch or f"z9hG4bKa{method.lower()}{cseq}",
            call_id=A_CALL_ID,
            cseq=cseq,
            from_=A_FROM,
            to=f"{A_TO};tag={self.a_tag}",
            contact=A_CONTACT if method in ("INVITE", "UPDATE") else None,
            body=body,
            content_type=SDP if body else None,
        )
        return self.sw.receive(data, CALLER)

    def caller_ack(self, cseq: int = 1, *, body: bytes = b"") -> list[Sent]:
        return self.caller_request("ACK", cseq, body=body, branch=f"z9hG4bKaack{cseq}")

    def caller_cancel(self) -> list[Sent]:
        data = request_bytes(
            "CANCEL", A_URI, branch="z9hG4bKa1", call_id=A_CALL_ID, cseq=1, from_=A_FROM, to=A_TO
        )
        return self.sw.receive(data, CALLER)

    def respond_to(self, sent: Sent, status: int, reason: str, source: tuple[str, str, int]):  # type: ignore[no-untyped-def]
        return self.sw.receive(response_bytes(sent.data, status, reason), source)

    # what the switch holds ------------------------------------------------------------
    def gone(self) -> bool:
        return not self.sw.core.calls and not self.sw.core.dialogs


def start(sw: Switch, invite: bytes | None = None) -> Flow:
    invite = invite or a_invite()
    out = sw.receive(invite, CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    return Flow(sw, invite, out[1])


def ringing(sw: Switch, invite: bytes | None = None) -> Flow:
    flow = start(sw, invite)
    out = flow.callee_responds(180, "Ringing")
    assert summaries(out) == [(CALLER, "180 INVITE")]
    flow.a_tag = out[0].resp.to_tag
    return flow


def answered(sw: Switch, invite: bytes | None = None) -> Flow:
    flow = ringing(sw, invite)
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "200 INVITE")]
    assert flow.caller_ack() == []
    return flow


def reply(
    sent: Sent, status: int, reason: str, *, contact: str | None = None, body: bytes = b""
) -> bytes:
    """A peer's response to a request the switch sent (SDP typed when there is a body)."""
    return response_bytes(
        sent.data, status, reason, contact=contact, body=body, content_type=SDP if body else None
    )


def b_ack_bytes(flow: Flow, ack: Sent, cseq: int = 1) -> bytes:
    branch = param(ack.req.get("Via") or "", "branch")
    assert BRANCH.fullmatch(branch)
    return wire(
        f"ACK {B_TARGET} SIP/2.0",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", flow.b_from),
            ("To", f"<{B_URI}>;tag={B_TAG}"),
            ("Call-ID", flow.b.req.call_id),
            ("CSeq", f"{cseq} ACK"),
        ],
    )


# --- a basic call, message by message --------------------------------------------------------


def test_basic_call_exact_messages_and_caller_hangs_up() -> None:
    sw = Switch()
    out = sw.receive(a_invite(), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    # 100 Trying: the INVITE's Via, From, To (no tag), Call-ID and CSeq.
    assert out[0].data == wire(
        "SIP/2.0 100 Trying",
        [*A_RESPONSE_HEAD, ("To", A_TO), ("Call-ID", A_CALL_ID), ("CSeq", "1 INVITE")],
    )
    # The callee's INVITE: a dialog of its own (new Call-ID, new From tag), To the
    # target, one hop less, our Via and Contact, passed-on headers, the SDP untouched.
    b = out[1].req
    branch = param(b.get("Via") or "", "branch")
    assert BRANCH.fullmatch(branch)
    assert CALL_ID.fullmatch(b.call_id)
    assert TAG.fullmatch(b.from_tag)
    assert b.call_id != A_CALL_ID and b.from_tag != "a1"
    assert out[1].data == wire(
        f"INVITE {B_URI} SIP/2.0",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport"),
            ("Max-Forwards", "69"),
            ("From", f'"Alice" <sip:alice@127.0.0.1>;tag={b.from_tag}'),
            ("To", f"<{B_URI}>"),
            ("Call-ID", b.call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", SW_CONTACT),
            ("User-Agent", "test-phone"),
            ("Content-Type", SDP),
        ],
        SDP_OFFER,
    )
    flow = Flow(sw, a_invite(), out[1])
    assert [c.state for c in sw.core.calls.values()] == [CallState.CALLING]

    # 180: relayed with the A-leg's own To tag and our Contact.
    out = flow.callee_responds(180, "Ringing")
    assert summaries(out) == [(CALLER, "180 INVITE")]
    a_tag = out[0].resp.to_tag
    assert TAG.fullmatch(a_tag) and a_tag != B_TAG
    flow.a_tag = a_tag
    a_to = f"{A_TO};tag={a_tag}"
    assert out[0].data == wire(
        "SIP/2.0 180 Ringing",
        [
            *A_RESPONSE_HEAD,
            ("To", a_to),
            ("Call-ID", A_CALL_ID),
            ("CSeq", "1 INVITE"),
            ("Contact", SW_CONTACT),
        ],
    )

    # 200: the callee is ACKed at once, the caller gets the 200 with the same body.
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "200 INVITE")]
    assert out[0].data == b_ack_bytes(flow, out[0])
    assert out[1].data == wire(
        "SIP/2.0 200 OK",
        [
            *A_RESPONSE_HEAD,
            ("To", a_to),
            ("Call-ID", A_CALL_ID),
            ("CSeq", "1 INVITE"),
            ("Contact", SW_CONTACT),
            ("Content-Type", SDP),
        ],
        SDP_ANSWER,
    )
    assert flow.caller_ack() == []
    (call,) = sw.core.calls.values()
    assert call.state is CallState.ANSWERED
    assert sw.core.stats.calls_answered == 1

    # BYE from the caller: 200 to it, BYE to the callee's Contact in the B dialog.
    out = flow.caller_request("BYE", 2)
    assert summaries(out) == [(CALLER, "200 BYE"), (CALLEE, "BYE")]
    assert out[0].data == wire(
        "SIP/2.0 200 OK",
        [
            ("Via", "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKabye2"),
            ("From", A_FROM),
            ("To", a_to),
            ("Call-ID", A_CALL_ID),
            ("CSeq", "2 BYE"),
        ],
    )
    bye = out[1]
    bye_branch = param(bye.req.get("Via") or "", "branch")
    assert BRANCH.fullmatch(bye_branch) and bye_branch != branch
    assert bye.data == wire(
        f"BYE {B_TARGET} SIP/2.0",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={bye_branch};rport"),
            ("Max-Forwards", "70"),
            ("From", flow.b_from),
            ("To", f"<{B_URI}>;tag={B_TAG}"),
            ("Call-ID", b.call_id),
            ("CSeq", "2 BYE"),
        ],
    )
    assert call.state is CallState.RELEASING
    assert flow.respond_to(bye, 200, "OK", CALLEE) == []
    assert flow.gone()
    assert call.state is CallState.ENDED
    assert call.cause == "caller-bye"
    assert sw.core.stats.calls_completed == 1
    # Every transaction ends by its own timers, quietly.
    assert sw.advance(40.0) == []
    assert len(sw.core.layer) == 0


def test_an_established_call_lets_go_of_its_setup_transactions() -> None:
    # Tens of thousands of calls stay up for minutes: once the INVITE transactions
    # end (Timer L and Timer M, 64*T1 after the 2xx), the call keeps no setup message.
    sw = Switch()
    flow = answered(sw)
    (call,) = sw.core.calls.values()
    assert call.a_invite is not None and call.b_invite is not None
    assert flow.sw.advance(64 * T1) == []
    assert call.a_invite is None and call.b_invite is None
    assert len(sw.core.layer) == 0
    # A late 2xx retransmission (our ACK lost) is still acknowledged, from the dialog.
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK")]
    out = flow.caller_request("BYE", 2)
    assert summaries(out) == [(CALLER, "200 BYE"), (CALLEE, "BYE")]


def test_an_ended_call_is_not_held_by_the_transactions_that_outlive_it() -> None:
    # The transactions of a call stay for up to 64*T1 after it ends, absorbing
    # retransmissions; the call itself (legs, SDP, strings) must be freed at once.
    sw = Switch()
    flow = answered(sw)
    out = flow.caller_request("BYE", 2)
    bye = next(s for s in out if s.address == CALLEE)
    assert flow.respond_to(bye, 200, "OK", CALLEE) == []
    assert flow.gone()
    layer = sw.core.layer
    remaining = [*layer.server.values(), *layer.client.values()]
    assert remaining  # the INVITE and BYE transactions, for their retransmissions
    assert all(txn.owner is None for txn in remaining)


def test_callee_hangs_up() -> None:
    sw = Switch()
    flow = answered(sw)
    out = flow.callee_request("BYE", 1)
    assert summaries(out) == [(CALLEE, "200 BYE"), (CALLER, "BYE")]
    bye = out[1]
    branch = param(bye.req.get("Via") or "", "branch")
    # Towards the caller: its Contact, From our A tag, To the caller's From.
    assert bye.data == wire(
        "BYE sip:alice@127.0.0.1:5061 SIP/2.0",
        [
            ("Via", f"SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{A_TO};tag={flow.a_tag}"),
            ("To", A_FROM),
            ("Call-ID", A_CALL_ID),
            ("CSeq", "2 BYE"),
        ],
    )
    assert not flow.gone()
    assert flow.respond_to(bye, 200, "OK", CALLER) == []
    assert flow.gone()
    assert sw.core.stats.calls_completed == 1


def test_bye_that_gets_no_answer_still_ends_the_call_at_timer_f() -> None:
    sw = Switch()
    flow = answered(sw)
    flow.caller_request("BYE", 2)
    out = sw.advance(31.9)
    assert {s.summary() for s in out} == {(CALLEE, "BYE")}  # retransmissions only
    assert not flow.gone()
    sw.advance(0.1)
    assert flow.gone()


# --- CANCEL -----------------------------------------------------------------------------------


def test_cancel_while_ringing() -> None:
    sw = Switch()
    flow = ringing(sw)
    out = flow.caller_cancel()
    assert summaries(out) == [(CALLER, "200 CANCEL"), (CALLER, "487 INVITE"), (CALLEE, "CANCEL")]
    assert out[1].resp.to_tag == flow.a_tag
    # The CANCEL repeats the INVITE's Request-URI, Via (same branch), From, To, Call-ID
    # and CSeq number (RFC 3261 9.1).
    b = flow.b.req
    assert out[2].data == wire(
        f"CANCEL {B_URI} SIP/2.0",
        [
            ("Via", b.get("Via") or ""),
            ("Max-Forwards", "69"),
            ("From", flow.b_from),
            ("To", f"<{B_URI}>"),
            ("Call-ID", b.call_id),
            ("CSeq", "1 CANCEL"),
        ],
    )
    assert flow.respond_to(out[2], 200, "OK", CALLEE) == []
    out = flow.callee_responds(487, "Request Terminated")
    assert summaries(out) == [(CALLEE, "ACK")]
    # The ACK of a non-2xx: the INVITE's branch, the 487's To tag.
    assert out[0].req.branch == b.branch
    assert out[0].req.get("To") == f"<{B_URI}>;tag={B_TAG}"
    assert out[0].req.get("CSeq") == "1 ACK"
    assert flow.gone()
    assert sw.core.stats.calls_cancelled == 1
    # The caller's ACK of the 487 is absorbed by its transaction.
    ack = request_bytes(
        "ACK",
        A_URI,
        branch="z9hG4bKa1",
        call_id=A_CALL_ID,
        cseq=1,
        from_=A_FROM,
        to=f"{A_TO};tag={flow.a_tag}",
    )
    assert sw.receive(ack, CALLER) == []


def test_200_to_cancel_carries_the_same_to_tag_as_the_487() -> None:
    sw = Switch()
    flow = ringing(sw)
    out = flow.caller_cancel()
    assert out[0].resp.to_tag == out[1].resp.to_tag == flow.a_tag


def test_cancel_before_any_provisional_is_held_until_the_first_one() -> None:
    sw = Switch()
    flow = start(sw)
    out = flow.caller_cancel()
    # The caller is answered at once; the callee may not be cancelled yet (RFC 3261 9.1).
    assert summaries(out) == [(CALLER, "200 CANCEL"), (CALLER, "487 INVITE")]
    out = flow.callee_responds(180, "Ringing")
    assert summaries(out) == [(CALLEE, "CANCEL")]
    assert out[0].req.branch == flow.b.req.branch
    flow.respond_to(out[0], 200, "OK", CALLEE)
    assert summaries(flow.callee_responds(487, "Request Terminated")) == [(CALLEE, "ACK")]
    assert flow.gone()


def test_held_cancel_goes_on_100_trying() -> None:
    sw = Switch()
    flow = start(sw)
    flow.caller_cancel()
    out = flow.callee_responds(100, "Trying")
    assert summaries(out) == [(CALLEE, "CANCEL")]


def test_callee_answers_while_the_cancel_is_held_gets_ack_and_bye() -> None:
    sw = Switch()
    flow = start(sw)
    flow.caller_cancel()
    # The call is over for the switch at once (the caller has its 487); the attempt
    # lives on in its transaction until the callee is dealt with.
    assert flow.gone()
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    # Too late for the caller: the callee's dialog is taken only to end it.
    assert summaries(out) == [(CALLEE, "ACK"), (CALLEE, "BYE")]
    assert out[1].req.get("To") == f"<{B_URI}>;tag={B_TAG}"
    assert flow.respond_to(out[1], 200, "OK", CALLEE) == []
    assert flow.gone()


# --- failures ---------------------------------------------------------------------------------


def test_busy_callee_is_acked_and_486_relayed() -> None:
    sw = Switch()
    flow = start(sw)
    out = flow.callee_responds(486, "Busy Here")
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "486 INVITE")]
    assert out[0].req.branch == flow.b.req.branch
    busy = out[1].resp
    assert busy.reason == "Busy Here"
    assert TAG.fullmatch(busy.to_tag)
    assert flow.gone()
    assert sw.core.stats.calls_rejected == 1
    # The caller's ACK is absorbed; the 486 is retransmitted until then.
    assert summaries(sw.advance(0.5)) == [(CALLER, "486 INVITE")]
    flow.a_tag = busy.to_tag
    ack = request_bytes(
        "ACK", A_URI, branch="z9hG4bKa1", call_id=A_CALL_ID, cseq=1, from_=A_FROM,
        to=f"{A_TO};tag={busy.to_tag}",
    )  # fmt: skip
    assert sw.receive(ack, CALLER) == []
    assert sw.advance(40.0) == []
    assert len(sw.core.layer) == 0


def test_no_answer_cancels_the_callee_and_tells_the_caller_480() -> None:
    sw = Switch(CONFIG.replace("no_answer_timeout = 60.0", "no_answer_timeout = 20.0"))
    flow = ringing(sw)
    assert sw.advance(19.9) == []
    out = sw.advance(0.1)
    # The caller hears 480 at once; the callee is cancelled beside it.
    assert summaries(out) == [(CALLEE, "CANCEL"), (CALLER, "480 INVITE")]
    assert out[1].resp.reason == "No Answer"
    assert out[1].resp.to_tag == flow.a_tag
    assert flow.gone()
    flow.respond_to(out[0], 200, "OK", CALLEE)
    out = flow.callee_responds(487, "Request Terminated")
    assert summaries(out) == [(CALLEE, "ACK")]


def test_no_answer_before_any_provisional_still_answers_the_caller_at_once() -> None:
    sw = Switch(CONFIG.replace("no_answer_timeout = 60.0", "no_answer_timeout = 2.0"))
    flow = start(sw)  # the callee has not even sent 100 Trying
    out = [s for s in sw.advance(2.0) if s.summary()[1] != "INVITE"]
    # No CANCEL may go before a provisional (RFC 3261 9.1), but the caller need not wait.
    assert summaries(out) == [(CALLER, "480 INVITE")]
    assert flow.gone()
    out = flow.callee_responds(180, "Ringing")
    assert summaries(out) == [(CALLEE, "CANCEL")]  # held until now
    flow.respond_to(out[0], 200, "OK", CALLEE)
    out = flow.callee_responds(487, "Request Terminated")
    assert summaries(out) == [(CALLEE, "ACK")]


def test_unreachable_callee_timer_b_gives_408() -> None:
    sw = Switch()
    flow = start(sw)
    out = sw.advance(32.0)
    sends = [s.summary() for s in out]
    assert sends == [(CALLEE, "INVITE")] * 6 + [(CALLER, "408 INVITE")]
    assert all(s.data == flow.b.data for s in out[:6])
    assert out[-1].resp.reason == "Request Timeout"
    assert flow.gone()


def test_transport_failure_towards_the_callee_gives_480() -> None:
    sw = Switch()
    flow = start(sw)
    out = sw.transport_failed(CALLEE)
    assert summaries(out) == [(CALLER, "480 INVITE")]
    assert out[0].resp.reason == "Unreachable"
    assert flow.gone()


def test_unknown_number_gets_404() -> None:
    sw = Switch()
    out = sw.receive(a_invite(uri="sip:12345@127.0.0.1:5060"), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLER, "404 INVITE")]
    assert out[1].resp.reason == "Not Found"
    assert TAG.fullmatch(out[1].resp.to_tag)
    assert sw.core.calls == {}
    assert sw.core.stats.calls_rejected == 1


def test_registered_user_without_contact_gets_480() -> None:
    sw = Switch()
    out = sw.receive(a_invite(uri="sip:bob@127.0.0.1:5060"), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLER, "480 INVITE")]
    assert out[1].resp.reason == "Temporarily Unavailable"


def test_registered_user_is_called_at_its_contact() -> None:
    sw = Switch()
    sw.register("bob", "sip:bob@127.0.0.1:5070")
    out = sw.receive(a_invite(uri="sip:bob@127.0.0.1:5060"), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (("udp", "127.0.0.1", 5070), "INVITE")]
    assert out[1].req.uri == "sip:bob@127.0.0.1:5070"


BOB_DESK = ("udp", "127.0.0.1", 5070)
BOB_MOBILE = ("udp", "127.0.0.1", 5071)


def test_registered_user_contacts_are_tried_in_turn() -> None:
    sw = Switch()
    sw.register("bob", "sip:bob@127.0.0.1:5070", q=1.0)
    sw.register("bob", "sip:bob@127.0.0.1:5071", q=0.5)
    out = sw.receive(a_invite(uri="sip:bob@127.0.0.1:5060"), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (BOB_DESK, "INVITE")]
    out = sw.receive(response_bytes(out[1].data, 486, "Busy Here", to_tag="d1"), BOB_DESK)
    assert summaries(out) == [(BOB_DESK, "ACK"), (BOB_MOBILE, "INVITE")]
    assert out[1].req.uri == "sip:bob@127.0.0.1:5071"
    out = sw.receive(response_bytes(out[1].data, 480, "Offline", to_tag="m1"), BOB_MOBILE)
    # The last target's answer is what the caller hears.
    assert summaries(out) == [(BOB_MOBILE, "ACK"), (CALLER, "480 INVITE")]
    assert out[1].resp.reason == "Offline"
    assert sw.core.calls == {}


def test_decline_from_one_contact_ends_the_search() -> None:
    sw = Switch()
    sw.register("bob", "sip:bob@127.0.0.1:5070", q=1.0)
    sw.register("bob", "sip:bob@127.0.0.1:5071", q=0.5)
    out = sw.receive(a_invite(uri="sip:bob@127.0.0.1:5060"), CALLER)
    out = sw.receive(response_bytes(out[1].data, 603, "Decline", to_tag="d1"), BOB_DESK)
    assert summaries(out) == [(BOB_DESK, "ACK"), (CALLER, "603 INVITE")]


def test_over_max_calls_gets_503_with_retry_after() -> None:
    sw = Switch()  # max_calls = 3, retry_after = 7
    for i in range(3):
        start(sw, a_invite(call_id=f"load-{i}@127.0.0.1", branch=f"z9hG4bKload{i}"))
    out = sw.receive(a_invite(call_id="one-too-many@127.0.0.1", branch="z9hG4bKmany"), CALLER)
    assert summaries(out) == [(CALLER, "503 INVITE")]
    resp = out[0].resp
    assert resp.reason == "Service Unavailable"
    assert resp.get("Retry-After") == "7"
    assert len(sw.core.calls) == 3
    assert sw.core.stats.calls_overload_rejected == 1


def test_a_lagging_switch_refuses_new_calls_and_keeps_its_calls() -> None:
    sw = Switch()
    flow = ringing(sw)
    sw.core.overloaded = True  # set by the process when its event loop lags
    out = sw.receive(a_invite(call_id="during@127.0.0.1", branch="z9hG4bKlag"), CALLER)
    assert summaries(out) == [(CALLER, "503 INVITE")]
    assert out[0].resp.get("Retry-After") == "7"
    # The call it has goes on as usual.
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "200 INVITE")]
    sw.core.overloaded = False
    out = sw.receive(a_invite(call_id="after@127.0.0.1", branch="z9hG4bKafter"), CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]


def test_caller_never_acks_the_200_so_both_sides_get_a_bye() -> None:
    sw = Switch()
    flow = ringing(sw)
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "200 INVITE")]
    ok = out[1].data
    out = sw.advance(31.9)
    # The 200 is retransmitted from T1 doubling to T2 (RFC 3261 13.3.1.4).
    assert [s.data for s in out] == [ok] * 10
    out = sw.advance(0.1)  # 64*T1 without an ACK: hang up both legs
    assert summaries(out) == [(CALLER, "BYE"), (CALLEE, "BYE")]
    assert out[1].req.get("To") == f"<{B_URI}>;tag={B_TAG}"
    (call,) = sw.core.calls.values()
    assert call.cause == "no-ack"
    flow.respond_to(out[0], 200, "OK", CALLER)
    flow.respond_to(out[1], 200, "OK", CALLEE)
    assert flow.gone()


def test_callee_hangs_up_an_early_dialog() -> None:
    sw = Switch()
    flow = ringing(sw)
    out = flow.callee_request("BYE", 2)
    assert summaries(out) == [(CALLEE, "200 BYE"), (CALLER, "480 INVITE")]
    assert flow.gone()


def test_caller_bye_on_an_early_dialog_cancels_the_callee() -> None:
    """RFC 3261 15.1.2: the INVITE still pending in an early dialog the caller ends with
    BYE is answered (487 RECOMMENDED); the callee must stop ringing too."""
    sw = Switch()
    flow = ringing(sw)
    out = flow.caller_request("BYE", 2)
    assert sorted(summaries(out)) == sorted(
        [(CALLER, "200 BYE"), (CALLER, "487 INVITE"), (CALLEE, "CANCEL")]
    )
    cancel = next(s for s in out if s.summary() == (CALLEE, "CANCEL"))
    flow.respond_to(cancel, 200, "OK", CALLEE)
    assert summaries(flow.callee_responds(487, "Request Terminated")) == [(CALLEE, "ACK")]
    assert flow.gone()


def test_release_command_while_ringing_answers_the_caller() -> None:
    sw = Switch()
    flow = ringing(sw)
    (call,) = sw.core.calls.values()
    sw.core.release(call, sw.now)
    out = sw.take()
    assert sorted(summaries(out)) == sorted([(CALLEE, "CANCEL"), (CALLER, "480 INVITE")])
    cancel = next(s for s in out if s.summary() == (CALLEE, "CANCEL"))
    flow.respond_to(cancel, 200, "OK", CALLEE)
    assert summaries(flow.callee_responds(487, "Request Terminated")) == [(CALLEE, "ACK")]
    assert flow.gone()


def test_release_command_on_an_answered_call_sends_bye_both_ways() -> None:
    sw = Switch()
    flow = answered(sw)
    (call,) = sw.core.calls.values()
    sw.core.release(call, sw.now)
    out = sw.take()
    assert summaries(out) == [(CALLER, "BYE"), (CALLEE, "BYE")]
    flow.respond_to(out[0], 200, "OK", CALLER)
    flow.respond_to(out[1], 200, "OK", CALLEE)
    assert flow.gone()
    assert call.cause == "released"


# --- in-dialog requests -----------------------------------------------------------------------


def test_reinvite_from_the_caller_is_relayed_with_its_body() -> None:
    sw = Switch()
    flow = answered(sw)
    hold = SDP_OFFER + b"a=sendonly\r\n"
    out = flow.caller_request("INVITE", 2, body=hold)
    assert summaries(out) == [(CALLEE, "INVITE")]
    reinvite = out[0].req
    assert reinvite.uri == B_TARGET
    assert reinvite.get("CSeq") == "2 INVITE"
    assert reinvite.get("From") == flow.b_from
    assert reinvite.get("To") == f"<{B_URI}>;tag={B_TAG}"
    assert reinvite.get("Call-ID") == flow.b.req.call_id
    assert reinvite.get("Contact") == SW_CONTACT
    assert reinvite.get("Content-Type") == SDP
    assert reinvite.body == hold
    ok = reply(out[0], 200, "OK", contact=B_CONTACT, body=SDP_ANSWER)
    out = sw.receive(ok, CALLEE)
    # The re-INVITE carried the offer, so the switch ACKs the callee itself at once.
    assert summaries(out) == [(CALLEE, "ACK"), (CALLER, "200 INVITE")]
    assert out[0].req.get("CSeq") == "2 ACK"
    assert out[1].resp.get("CSeq") == "2 INVITE"
    assert out[1].resp.to_tag == flow.a_tag
    assert out[1].resp.get("Contact") == SW_CONTACT
    assert out[1].resp.body == SDP_ANSWER
    assert flow.caller_ack(2) == []  # already acknowledged towards the callee
    # A retransmission of the callee's 200 is ACKed again, not relayed again.
    assert summaries(sw.receive(ok, CALLEE)) == [(CALLEE, "ACK")]


def test_reinvite_without_offer_holds_the_ack_for_the_callers_answer() -> None:
    sw = Switch()
    flow = answered(sw)
    out = flow.caller_request("INVITE", 2)
    offer = reply(out[0], 200, "OK", contact=B_CONTACT, body=SDP_OFFER)
    assert summaries(sw.receive(offer, CALLEE)) == [(CALLER, "200 INVITE")]
    out = flow.caller_ack(2, body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK")]
    assert out[0].req.get("CSeq") == "2 ACK"
    assert out[0].req.body == SDP_ANSWER


def test_update_is_passed_through_both_ways() -> None:
    sw = Switch()
    flow = answered(sw)
    out = flow.caller_request("UPDATE", 2, body=SDP_OFFER)
    assert summaries(out) == [(CALLEE, "UPDATE")]
    assert out[0].req.body == SDP_OFFER
    assert out[0].req.get("Contact") == SW_CONTACT
    ok = reply(out[0], 200, "OK", contact=B_CONTACT, body=SDP_ANSWER)
    out = sw.receive(ok, CALLEE)
    assert summaries(out) == [(CALLER, "200 UPDATE")]
    assert out[0].resp.body == SDP_ANSWER
    assert out[0].resp.get("Contact") == SW_CONTACT
    assert out[0].resp.get("CSeq") == "2 UPDATE"
    # And from the callee towards the caller.
    out = flow.callee_request("INFO", 1)
    assert summaries(out) == [(CALLER, "INFO")]
    assert out[0].req.uri == "sip:alice@127.0.0.1:5061"
    out = sw.receive(response_bytes(out[0].data, 200, "OK"), CALLER)
    assert summaries(out) == [(CALLEE, "200 INFO")]


def test_in_dialog_request_with_an_old_cseq_gets_500() -> None:
    sw = Switch()
    flow = answered(sw)
    out = flow.caller_request("UPDATE", 1, branch="z9hG4bKold")
    assert summaries(out) == [(CALLER, "500 UPDATE")]
    assert out[0].resp.reason == "CSeq Out of Order"


def test_in_dialog_request_for_an_unknown_dialog_gets_481() -> None:
    sw = Switch()
    data = request_bytes(
        "BYE", SW_URI, branch="z9hG4bKstray", call_id="nobody@127.0.0.1", cseq=5,
        from_=A_FROM, to=f"{A_TO};tag=nope",
    )  # fmt: skip
    out = sw.receive(data, CALLER)
    assert summaries(out) == [(CALLER, "481 BYE")]
    assert out[0].resp.reason == "Call/Transaction Does Not Exist"


# --- out of dialog and malformed --------------------------------------------------------------


def test_options_out_of_dialog_gets_200_with_allow() -> None:
    sw = Switch()
    data = request_bytes("OPTIONS", SW_URI, branch="z9hG4bKopt", call_id="opt@127.0.0.1", cseq=1)
    out = sw.receive(data, CALLER)
    assert summaries(out) == [(CALLER, "200 OPTIONS")]
    resp = out[0].resp
    assert (
        b"\r\nAllow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, REGISTER, "
        b"NOTIFY, REFER\r\n" in out[0].data
    )
    assert resp.get_all("Allow") == [
        "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "UPDATE", "INFO", "PRACK", "REGISTER",
        "NOTIFY", "REFER",
    ]  # fmt: skip
    assert resp.get("Accept") == SDP
    assert TAG.fullmatch(resp.to_tag)
    assert sw.core.calls == {}


def test_malformed_request_gets_400_naming_the_problem_and_no_call() -> None:
    sw = Switch()
    bad = a_invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    out = sw.receive(bad, CALLER)
    assert summaries(out) == [(CALLER, "unparsable")]  # it echoes the bad CSeq
    assert out[0].data.startswith(b"SIP/2.0 400 Invalid CSeq number\r\n")
    assert f"\r\nVia: {A_VIA}\r\n".encode() in out[0].data
    assert b"\r\nCSeq: one INVITE\r\n" in out[0].data
    assert sw.core.calls == {}
    assert sw.core.stats.calls_offered == 0
    assert sw.core.stats.bad_requests_answered == 1


def test_400_carries_a_to_tag() -> None:
    sw = Switch()
    bad = a_invite().replace(b"CSeq: 1 INVITE", b"CSeq: one INVITE")
    out = sw.receive(bad, CALLER)
    assert re.search(rb"\r\nTo: <sip:9555@127.0.0.1>;tag=[0-9a-f]+\r\n", out[0].data)


def test_invite_without_contact_gets_400() -> None:
    sw = Switch()
    out = sw.receive(a_invite().replace(f"Contact: {A_CONTACT}\r\n".encode(), b""), CALLER)
    assert summaries(out) == [(CALLER, "400 INVITE")]
    assert out[0].resp.reason == "Missing Contact header"
    assert sw.core.calls == {}


def test_unanswerable_garbage_is_dropped_and_counted() -> None:
    sw = Switch()
    assert sw.receive(b"hello world\r\n\r\n", CALLER) == []
    assert sw.receive(b"\x00\x01\x02", CALLER) == []
    assert sw.receive(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", CALLEE) == []
    assert sw.core.stats.malformed_dropped == 3
    assert sw.core.stats.bad_requests_answered == 0


# --- ordering, offers, retransmissions --------------------------------------------------------


def test_callee_responses_are_relayed_in_the_order_received() -> None:
    sw = Switch()
    flow = start(sw)
    out = flow.callee_responds(180, "Ringing")
    out += flow.callee_responds(183, "Session Progress", body=SDP_ANSWER)
    out += flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [
        (CALLER, "180 INVITE"),
        (CALLER, "183 INVITE"),
        (CALLEE, "ACK"),
        (CALLER, "200 INVITE"),
    ]
    assert out[1].resp.body == SDP_ANSWER
    assert out[1].resp.get("Content-Type") == SDP
    assert len({s.resp.to_tag for s in out if s.address == CALLER}) == 1


def test_late_offer_holds_the_callee_ack_until_the_callers_answer() -> None:
    sw = Switch()
    flow = start(sw, a_invite(body=b""))
    assert flow.b.req.body == b""
    assert flow.b.req.get("Content-Type") is None
    out = flow.callee_responds(200, "OK", body=SDP_OFFER)
    # No ACK yet: it must carry the answer, which only the caller has.
    assert summaries(out) == [(CALLER, "200 INVITE")]
    assert out[0].resp.body == SDP_OFFER
    flow.a_tag = out[0].resp.to_tag
    assert flow.callee_responds(200, "OK", body=SDP_OFFER) == []  # retransmission
    out = flow.caller_ack(body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK")]
    ack = out[0].req
    assert ack.body == SDP_ANSWER
    assert ack.get("Content-Type") == SDP
    assert ack.get("CSeq") == "1 ACK"
    assert ack.get("To") == f"<{B_URI}>;tag={B_TAG}"


def test_retransmitted_invite_does_not_create_a_second_call() -> None:
    sw = Switch()
    flow = start(sw)
    out = sw.receive(flow.invite, CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE")]
    flow.callee_responds(180, "Ringing")
    out = sw.receive(flow.invite, CALLER)
    assert summaries(out) == [(CALLER, "180 INVITE")]
    assert len(sw.core.calls) == 1
    assert sw.core.stats.calls_offered == 1


def test_lost_ack_to_the_callee_is_sent_again() -> None:
    sw = Switch()
    flow = answered(sw)
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK")]
    assert out[0].data == b_ack_bytes(flow, out[0])
    # After Timer M the 2xx matches no transaction; the dialog still ACKs it.
    sw.advance(40.0)
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER)
    assert summaries(out) == [(CALLEE, "ACK")]
    assert out[0].data == b_ack_bytes(flow, out[0])


def test_calls_over_tcp_use_the_stream_and_are_not_retransmitted() -> None:
    config = CONFIG.replace(
        'listen = ["udp:127.0.0.1:5060"]', 'listen = ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]'
    ).replace("strip = 1\n", 'strip = 1\ntransport = "tcp"\n')
    sw = Switch(config)
    caller = ("tcp", "127.0.0.1", 5061)
    invite = a_invite().replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP")
    out = sw.receive(invite, caller, stream=True)
    callee = ("tcp", "127.0.0.1", 5062)
    assert summaries(out) == [(caller, "100 INVITE"), (callee, "INVITE")]
    b = out[1].req
    assert b.uri == "sip:555@127.0.0.1:5062;transport=tcp"
    assert (b.get("Via") or "").startswith("SIP/2.0/TCP 127.0.0.1:5060;branch=")
    assert b.get("Contact") == "<sip:127.0.0.1:5060;transport=tcp>"
    out = sw.advance(40.0)
    assert summaries(out) == [(caller, "408 INVITE")]  # and no Timer G over TCP


def test_in_dialog_requests_follow_the_callees_contact() -> None:
    sw = Switch()
    flow = ringing(sw)
    moved = ("udp", "127.0.0.1", 5072)
    out = flow.callee_responds(200, "OK", body=SDP_ANSWER, contact="<sip:555@127.0.0.1:5072>")
    assert summaries(out) == [(moved, "ACK"), (CALLER, "200 INVITE")]
    assert out[0].req.uri == "sip:555@127.0.0.1:5072"
    flow.caller_ack()
    out = flow.caller_request("BYE", 2)
    assert summaries(out) == [(CALLER, "200 BYE"), (moved, "BYE")]
    assert out[1].req.uri == "sip:555@127.0.0.1:5072"


def test_responses_tell_a_phone_behind_nat_where_it_was_seen() -> None:
    """RFC 3581 / RFC 3261 18.2.1: `received` and the filled-in `rport` on the top Via."""
    sw = Switch()
    invite = a_invite().replace(
        b"Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa1",
        b"Via: SIP/2.0/UDP 10.0.0.5:5061;branch=z9hG4bKa1;rport",
    )
    out = sw.receive(invite, CALLER)
    assert summaries(out) == [(CALLER, "100 INVITE"), (CALLEE, "INVITE")]
    assert out[0].resp.get("Via") == (
        "SIP/2.0/UDP 10.0.0.5:5061;branch=z9hG4bKa1;received=127.0.0.1;rport=5061"
    )


def test_a_route_while_ringing_cancels_the_attempt_and_tries_the_new_target() -> None:
    sw = Switch()
    flow = ringing(sw)
    (call,) = sw.core.calls.values()
    elsewhere = Target("sip:7000@127.0.0.1:5090", ("udp", "127.0.0.1", 5090), "route:7")
    sw.core.route(call, [elsewhere], sw.now)
    out = sw.take()
    # The ringing callee is cancelled and the new one called; the caller hears nothing yet.
    assert [s.summary() for s in out] == [
        (CALLEE, "CANCEL"),
        (("udp", "127.0.0.1", 5090), "INVITE"),
    ]
    assert out[0].req.branch == flow.b.req.branch
    assert out[1].req.uri == "sip:7000@127.0.0.1:5090"
    assert out[1].req.call_id != flow.b.req.call_id
    # The first callee's 487 is absorbed: the call goes on with the second.
    flow.respond_to(out[0], 200, "OK", CALLEE)
    assert summaries(flow.callee_responds(487, "Request Terminated")) == [(CALLEE, "ACK")]
    assert not flow.gone()


def test_a_reject_while_ringing_cancels_the_callee() -> None:
    sw = Switch()
    flow = ringing(sw)
    (call,) = sw.core.calls.values()
    sw.core.reject(call, 603, "Decline", sw.now)  # a service refusing mid-ring
    out = sw.take()
    assert [s.summary() for s in out] == [(CALLER, "603 INVITE"), (CALLEE, "CANCEL")]
    assert flow.gone()
