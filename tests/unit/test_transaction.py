"""The four transaction machines (RFC 3261 17, RFC 6026) driven with bytes and a clock.

Each test steps time by hand (`Layer.advance_to`) and asserts the exact instants at
which bytes leave and the exact calls the transaction user receives. The timer values
are RFC 3261's defaults: T1 = 0.5 s, T2 = 4 s, T4 = 5 s, so 64*T1 = 32 s.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sipfix import (
    SDP_OFFER,
    Layer,
    ServerTransaction,
    parse_request,
    request_bytes,
    response_bytes,
)

from twinline.sip.message import Response, response_to
from twinline.sip.transaction import (
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    Failure,
    Input,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
    State,
)

T1, T2, T4 = 0.5, 4.0, 5.0
PEER = ("udp", "127.0.0.1", 5062)
PEER_TCP = ("tcp", "127.0.0.1", 5062)
CALLER = ("udp", "127.0.0.1", 5061)
CALLER_TCP = ("tcp", "127.0.0.1", 5061)

# An INVITE as the switch sends it, with a second Via and a Route so that the ACK
# and CANCEL rules (one Via, Route kept) are visible.
INVITE_HEAD = (
    "INVITE sip:bob@127.0.0.1:5062 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKclient1\r\n"
    "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKupstream\r\n"
    "Max-Forwards: 69\r\n"
    "Route: <sip:127.0.0.1:5062;lr>\r\n"
    "From: <sip:alice@127.0.0.1>;tag=f1\r\n"
    "To: <sip:bob@127.0.0.1:5062>\r\n"
    "Call-ID: call-1@127.0.0.1\r\n"
    "CSeq: 7 INVITE\r\n"
    "Contact: <sip:127.0.0.1:5060>\r\n"
    "Content-Type: application/sdp\r\n"
)
INVITE = f"{INVITE_HEAD}Content-Length: {len(SDP_OFFER)}\r\n\r\n".encode() + SDP_OFFER

ACK_486 = (
    b"ACK sip:bob@127.0.0.1:5062 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKclient1\r\n"
    b"Max-Forwards: 69\r\n"
    b"Route: <sip:127.0.0.1:5062;lr>\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=f1\r\n"
    b"To: <sip:bob@127.0.0.1:5062>;tag=t486\r\n"
    b"Call-ID: call-1@127.0.0.1\r\n"
    b"CSeq: 7 ACK\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

CANCEL = (
    b"CANCEL sip:bob@127.0.0.1:5062 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKclient1\r\n"
    b"Max-Forwards: 69\r\n"
    b"Route: <sip:127.0.0.1:5062;lr>\r\n"
    b"From: <sip:alice@127.0.0.1>;tag=f1\r\n"
    b"To: <sip:bob@127.0.0.1:5062>\r\n"
    b"Call-ID: call-1@127.0.0.1\r\n"
    b"CSeq: 7 CANCEL\r\n"
    b"Content-Length: 0\r\n"
    b"\r\n"
)

BYE = request_bytes(
    "BYE",
    "sip:bob@127.0.0.1:5062",
    branch="z9hG4bKnon1",
    call_id="call-1@127.0.0.1",
    cseq=8,
    via_host="127.0.0.1:5060",
    to="<sip:bob@127.0.0.1:5062>;tag=b1",
    from_="<sip:alice@127.0.0.1>;tag=f1",
)

# Requests arriving from a caller, for the server machines.
SRV_INVITE = request_bytes(
    "INVITE",
    "sip:bob@127.0.0.1",
    branch="z9hG4bKsrv1",
    call_id="srv-1@127.0.0.1",
    cseq=1,
    contact="<sip:alice@127.0.0.1:5061>",
    body=SDP_OFFER,
    content_type="application/sdp",
)
SRV_INVITE_TCP = request_bytes(
    "INVITE",
    "sip:bob@127.0.0.1",
    branch="z9hG4bKsrv1",
    call_id="srv-1@127.0.0.1",
    cseq=1,
    transport="TCP",
    contact="<sip:alice@127.0.0.1:5061;transport=tcp>",
)
SRV_BYE = request_bytes(
    "BYE",
    "sip:127.0.0.1:5060",
    branch="z9hG4bKsrvbye",
    call_id="srv-1@127.0.0.1",
    cseq=2,
    to="<sip:bob@127.0.0.1>;tag=s1",
)


def ack_for(invite: bytes, *, branch: str, to_tag: str) -> bytes:
    """The caller's ACK: same branch for a non-2xx (17.1.1.3), a new one for a 2xx."""
    req = parse_request(invite)
    return request_bytes(
        "ACK",
        req.uri,
        branch=branch,
        call_id=req.call_id,
        cseq=req.cseq,
        to=f"{req.get('To')};tag={to_tag}",
        from_=req.get("From") or "",
        transport="TCP" if "/TCP " in (req.get("Via") or "") else "UDP",
    )


def answer(txn: ServerTransaction, status: int, reason: str, now: float) -> Response:
    resp = response_to(txn.request, status, reason, to_tag="s1")
    txn.respond(resp, now)
    return resp


def geometric(start: float, first: float, cap: float | None, until: float) -> list[float]:
    """Send instants of a retransmission timer: `start`, then intervals doubling from
    `first` (capped at `cap`), strictly before `until`."""
    times = [start]
    interval = first
    t = start + interval
    while t < until:
        times.append(t)
        interval = interval * 2 if cap is None else min(interval * 2, cap)
        t += interval
    return times


def client_invite(h: Layer, address: tuple[str, str, int] = PEER) -> ClientInviteTransaction:
    txn = h.layer.send_request(parse_request(INVITE), address, h.now)
    assert isinstance(txn, ClientInviteTransaction)
    return txn


# --- client INVITE (17.1.1, RFC 6026 7.2) -----------------------------------------------------


def test_client_invite_timer_a_doubles_until_timer_b_reports_timeout_once() -> None:
    h = Layer()
    txn = client_invite(h)
    assert txn.state is State.CALLING
    h.advance_to(100.0)
    assert h.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(addr == PEER and data == INVITE for _, addr, data in h.sent)
    assert h.tu.kinds() == [("failed", 32.0, Failure.TIMEOUT)]
    assert txn.state is State.TERMINATED
    assert len(h.layer) == 0
    assert h.timers.next_deadline() is None


def test_client_invite_retransmission_stops_on_a_provisional() -> None:
    h = Layer()
    txn = client_invite(h)
    h.advance_to(1.0)
    h.response(response_bytes(INVITE, 180, "Ringing", to_tag="t180"), PEER)
    assert txn.state is State.PROCEEDING
    h.advance_to(100.0)
    assert h.send_times() == [0.0, 0.5]
    # Timer B runs only in Calling (17.1.1.2): Proceeding waits for the final response.
    assert h.tu.kinds() == [("response", 1.0, 180)]
    assert txn.state is State.PROCEEDING
    h.response(response_bytes(INVITE, 183, "Session Progress", to_tag="t180"), PEER)
    assert h.tu.kinds()[-1] == ("response", 100.0, 183)


def test_client_invite_over_tcp_is_not_retransmitted() -> None:
    h = Layer()
    client_invite(h, PEER_TCP)
    h.advance_to(100.0)
    assert h.send_times() == [0.0]
    assert h.tu.kinds() == [("failed", 32.0, Failure.TIMEOUT)]


def test_client_invite_non_2xx_is_acked_with_the_same_branch_and_timer_d_ends_it() -> None:
    h = Layer()
    txn = client_invite(h)
    h.advance_to(1.0)
    busy = response_bytes(INVITE, 486, "Busy Here", to_tag="t486")
    h.response(busy, PEER)
    assert txn.state is State.COMPLETED
    assert h.take() == [(0.0, PEER, INVITE), (0.5, PEER, INVITE), (1.0, PEER, ACK_486)]
    assert h.tu.kinds() == [("response", 1.0, 486)]
    # The 486 again: the ACK was lost. ACKed again, the TU is not told twice.
    h.advance_to(2.0)
    h.response(busy, PEER)
    assert h.take() == [(2.0, PEER, ACK_486)]
    assert h.tu.kinds() == [("response", 1.0, 486)]
    # Timer D (32 s on UDP) ends the transaction; nothing is retransmitted meanwhile.
    h.advance_to(32.9)
    assert txn.state is State.COMPLETED
    h.advance_to(33.0)
    assert txn.state is State.TERMINATED
    assert h.sent == []
    assert len(h.layer) == 0
    h.response(busy, PEER)
    assert h.tu.kinds()[-1] == ("stray", 33.0, 486)
    assert h.sent == []


def test_client_invite_non_2xx_over_tcp_ends_at_once() -> None:
    h = Layer()
    txn = client_invite(h, PEER_TCP)
    h.response(response_bytes(INVITE, 486, "Busy Here", to_tag="t486"), PEER_TCP)
    assert h.take() == [(0.0, PEER_TCP, INVITE), (0.0, PEER_TCP, ACK_486)]
    assert txn.state is State.TERMINATED
    assert h.tu.kinds() == [("response", 0.0, 486)]
    assert len(h.layer) == 0


def test_client_invite_2xx_is_accepted_and_retransmissions_reach_the_tu_until_timer_m() -> None:
    h = Layer()
    txn = client_invite(h)
    h.advance_to(1.0)
    h.response(response_bytes(INVITE, 180, "Ringing", to_tag="t200"), PEER)
    h.advance_to(2.0)
    ok = response_bytes(INVITE, 200, "OK", to_tag="t200", contact="<sip:bob@127.0.0.1:5062>")
    h.response(ok, PEER)
    assert txn.state is State.ACCEPTED
    h.advance_to(3.0)
    h.response(ok, PEER)  # the TU's ACK was lost: the TU must see this one too
    h.advance_to(33.9)
    assert txn.state is State.ACCEPTED
    h.advance_to(34.0)  # Timer M = 64*T1 after the first 2xx
    assert txn.state is State.TERMINATED
    h.response(ok, PEER)
    assert h.tu.kinds() == [
        ("response", 1.0, 180),
        ("response", 2.0, 200),
        ("response", 3.0, 200),
        ("stray", 34.0, 200),
    ]
    # The transaction never ACKs a 2xx itself (that is the TU's, 13.2.2.4).
    assert h.send_times() == [0.0, 0.5]


def test_client_invite_2xx_from_calling_stops_timer_a_and_b() -> None:
    h = Layer()
    txn = client_invite(h)
    h.response(response_bytes(INVITE, 200, "OK", to_tag="t200"), PEER)
    h.advance_to(100.0)
    assert h.send_times() == [0.0]
    assert h.tu.kinds() == [("response", 0.0, 200)]
    assert txn.state is State.TERMINATED


def test_client_invite_transport_error_is_reported_once() -> None:
    h = Layer()
    txn = client_invite(h)
    h.advance_to(0.7)
    h.layer.transport_failed(PEER, h.now)
    h.layer.transport_failed(PEER, h.now)
    assert txn.state is State.TERMINATED
    h.advance_to(100.0)
    assert h.send_times() == [0.0, 0.5]
    assert h.tu.kinds() == [("failed", 0.7, Failure.TRANSPORT)]


def test_transport_failure_elsewhere_leaves_the_transaction_alone() -> None:
    h = Layer()
    txn = client_invite(h)
    h.layer.transport_failed(("udp", "127.0.0.1", 9999), h.now)
    assert txn.state is State.CALLING
    assert h.tu.events == []


def test_cancel_request_repeats_the_invite_identity_with_one_via() -> None:
    """RFC 3261 9.1: same Request-URI, Call-ID, From, To, CSeq number and Route, and
    a single Via equal to the INVITE's top one."""
    h = Layer()
    txn = client_invite(h)
    cancel = txn.cancel_request()
    assert cancel.to_bytes() == CANCEL
    assert (cancel.branch, cancel.cseq, cancel.cseq_method) == ("z9hG4bKclient1", 7, "CANCEL")
    # Its response is matched to the CANCEL's own transaction, not to the INVITE.
    cancel_txn = h.layer.send_request(cancel, PEER, h.now)
    h.response(response_bytes(CANCEL, 200, "OK", to_tag="t1"), PEER)
    assert cancel_txn.state is State.COMPLETED
    assert txn.state is State.CALLING
    assert h.tu.kinds() == [("response", 0.0, 200)]


def test_response_with_an_unknown_branch_is_stray() -> None:
    h = Layer()
    client_invite(h)
    other = INVITE.replace(b"z9hG4bKclient1", b"z9hG4bKother")
    h.response(response_bytes(other, 180, "Ringing", to_tag="x"), PEER)
    assert h.tu.kinds() == [("stray", 0.0, 180)]


# --- client non-INVITE (17.1.2) ---------------------------------------------------------------


def test_client_non_invite_timer_e_doubles_capped_at_t2_until_timer_f() -> None:
    h = Layer()
    txn = h.layer.send_request(parse_request(BYE), PEER, 0.0)
    assert isinstance(txn, ClientNonInviteTransaction)
    h.advance_to(100.0)
    assert h.send_times() == geometric(0.0, T1, T2, 32.0)
    assert h.send_times() == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert h.tu.kinds() == [("failed", 32.0, Failure.TIMEOUT)]
    assert txn.state is State.TERMINATED
    assert len(h.layer) == 0


def test_client_non_invite_in_proceeding_retransmits_every_t2() -> None:
    h = Layer()
    txn = h.layer.send_request(parse_request(BYE), PEER, 0.0)
    h.advance_to(0.2)
    h.response(response_bytes(BYE, 100, "Trying"), PEER)
    assert txn.state is State.PROCEEDING
    h.advance_to(100.0)
    # E fires as scheduled (0.5), then every T2 (17.1.2.2); F still ends it at 64*T1.
    assert h.send_times() == [0.0, 0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert h.tu.kinds() == [("response", 0.2, 100), ("failed", 32.0, Failure.TIMEOUT)]


def test_client_non_invite_final_then_timer_k() -> None:
    h = Layer()
    txn = h.layer.send_request(parse_request(BYE), PEER, 0.0)
    h.advance_to(1.0)
    ok = response_bytes(BYE, 200, "OK")
    h.response(ok, PEER)
    assert txn.state is State.COMPLETED
    h.advance_to(2.0)
    h.response(ok, PEER)  # absorbed in Completed
    h.advance_to(5.9)
    assert txn.state is State.COMPLETED
    h.advance_to(6.0)  # Timer K = T4
    assert txn.state is State.TERMINATED
    h.response(ok, PEER)
    assert h.tu.kinds() == [("response", 1.0, 200), ("stray", 6.0, 200)]
    assert h.send_times() == [0.0, 0.5]
    assert len(h.layer) == 0


def test_client_non_invite_over_tcp_no_retransmission_and_no_timer_k() -> None:
    h = Layer()
    txn = h.layer.send_request(parse_request(BYE), PEER_TCP, 0.0)
    h.advance_to(10.0)
    assert h.send_times() == [0.0]
    h.response(response_bytes(BYE, 481, "Call/Transaction Does Not Exist"), PEER_TCP)
    assert txn.state is State.TERMINATED
    assert h.tu.kinds() == [("response", 10.0, 481)]
    assert len(h.layer) == 0


def test_client_non_invite_transport_error() -> None:
    h = Layer()
    txn = h.layer.send_request(parse_request(BYE), PEER, 0.0)
    h.response(response_bytes(BYE, 100, "Trying"), PEER)
    h.layer.transport_failed(PEER, 0.0)
    assert txn.state is State.TERMINATED
    assert h.tu.kinds() == [("response", 0.0, 100), ("failed", 0.0, Failure.TRANSPORT)]


# --- server INVITE (17.2.1, RFC 6026 7.1) -----------------------------------------------------


def server_invite(h: Layer, data: bytes = SRV_INVITE, source=CALLER) -> ServerInviteTransaction:  # type: ignore[no-untyped-def]
    h.request(data, source)
    txn = h.tu.events[-1][3]
    assert isinstance(txn, ServerInviteTransaction)
    return txn


def test_server_invite_retransmission_resends_the_last_provisional() -> None:
    h = Layer()
    txn = server_invite(h)
    assert txn.state is State.PROCEEDING
    h.request(SRV_INVITE, CALLER)  # before any response: nothing to resend yet
    assert h.sent == []
    trying = answer(txn, 100, "Trying", 0.0).to_bytes()
    h.advance_to(1.0)
    h.request(SRV_INVITE, CALLER)
    h.advance_to(2.0)
    ringing = answer(txn, 180, "Ringing", 2.0).to_bytes()
    h.advance_to(3.0)
    h.request(SRV_INVITE, CALLER)
    assert h.take() == [
        (0.0, CALLER, trying),
        (1.0, CALLER, trying),
        (2.0, CALLER, ringing),
        (3.0, CALLER, ringing),
    ]
    # Provisional responses are not retransmitted on a timer, and the TU saw one INVITE.
    h.advance_to(50.0)
    assert h.sent == []
    assert [e[:3] for e in h.tu.events] == [("request", 0.0, "INVITE")]


def test_server_invite_non_2xx_retransmitted_on_timer_g_until_the_ack() -> None:
    h = Layer()
    txn = server_invite(h)
    busy = answer(txn, 486, "Busy Here", 0.0).to_bytes()
    assert txn.state is State.COMPLETED
    h.advance_to(10.0)
    assert h.send_times(busy) == [0.0, 0.5, 1.5, 3.5, 7.5]
    h.request(SRV_INVITE, CALLER)  # the INVITE again: the final response again
    assert h.send_times(busy)[-1] == 10.0
    h.request(ack_for(SRV_INVITE, branch="z9hG4bKsrv1", to_tag="s1"), CALLER)
    assert txn.state is State.CONFIRMED
    h.take()
    h.advance_to(14.9)
    assert txn.state is State.CONFIRMED
    h.advance_to(15.0)  # Timer I = T4
    assert txn.state is State.TERMINATED
    assert h.sent == []
    # The ACK of a non-2xx belongs to the transaction: the TU never sees it.
    assert [e[:3] for e in h.tu.events] == [("request", 0.0, "INVITE")]
    assert len(h.layer) == 0


def test_server_invite_retransmitted_ack_in_confirmed_is_absorbed() -> None:
    h = Layer()
    txn = server_invite(h)
    answer(txn, 486, "Busy Here", 0.0)
    ack = ack_for(SRV_INVITE, branch="z9hG4bKsrv1", to_tag="s1")
    h.request(ack, CALLER)
    h.advance_to(1.0)
    h.request(ack, CALLER)
    assert txn.state is State.CONFIRMED
    assert [e[:3] for e in h.tu.events] == [("request", 0.0, "INVITE")]


def test_server_invite_timer_h_reports_no_ack() -> None:
    h = Layer()
    txn = server_invite(h)
    busy = answer(txn, 603, "Decline", 0.0).to_bytes()
    h.advance_to(100.0)
    assert h.send_times(busy) == geometric(0.0, T1, T2, 32.0)
    assert len(h.sent) == len(geometric(0.0, T1, T2, 32.0))
    assert [e[:3] for e in h.tu.events] == [
        ("request", 0.0, "INVITE"),
        ("failed", 32.0, Failure.NO_ACK),
    ]
    assert txn.state is State.TERMINATED
    assert len(h.layer) == 0


def test_server_invite_non_2xx_over_tcp_is_not_retransmitted_and_ack_ends_it() -> None:
    h = Layer()
    txn = server_invite(h, SRV_INVITE_TCP, CALLER_TCP)
    answer(txn, 486, "Busy Here", 0.0)
    h.advance_to(10.0)
    assert h.send_times() == [0.0]
    h.request(ack_for(SRV_INVITE_TCP, branch="z9hG4bKsrv1", to_tag="s1"), CALLER_TCP)
    assert txn.state is State.TERMINATED  # Timer I is 0 on a reliable transport
    assert len(h.layer) == 0


def test_server_invite_2xx_retransmitted_doubling_to_t2_until_the_ack() -> None:
    h = Layer()
    txn = server_invite(h)
    ok = answer(txn, 200, "OK", 0.0).to_bytes()
    assert txn.state is State.ACCEPTED
    h.advance_to(13.0)
    assert h.send_times(ok) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5]
    h.request(SRV_INVITE, CALLER)  # the INVITE again: the 2xx again (RFC 6026 7.1)
    # The ACK of a 2xx has a branch of its own; it is matched by Call-ID and CSeq.
    h.request(ack_for(SRV_INVITE, branch="z9hG4bKack2xx", to_tag="s1"), CALLER)
    assert txn.acked
    h.advance_to(31.9)
    assert h.send_times(ok) == [0.0, 0.5, 1.5, 3.5, 7.5, 11.5, 13.0]
    assert txn.state is State.ACCEPTED
    h.advance_to(32.0)  # Timer L ends it quietly: it was acknowledged
    assert txn.state is State.TERMINATED
    assert [e[:3] for e in h.tu.events] == [
        ("request", 0.0, "INVITE"),
        ("ack", 13.0, "z9hG4bKack2xx"),
    ]
    assert len(h.layer) == 0
    assert h.tu.ended == [(32.0, txn)]  # told once, when it is forgotten


def test_server_invite_2xx_without_ack_reports_no_ack_at_64_t1() -> None:
    h = Layer()
    txn = server_invite(h)
    ok = answer(txn, 200, "OK", 0.0).to_bytes()
    h.advance_to(100.0)
    assert h.send_times(ok) == geometric(0.0, T1, T2, 32.0)
    assert [e[:3] for e in h.tu.events] == [
        ("request", 0.0, "INVITE"),
        ("failed", 32.0, Failure.NO_ACK),
    ]
    assert txn.state is State.TERMINATED


def test_server_invite_2xx_over_tcp_is_sent_once() -> None:
    h = Layer()
    txn = server_invite(h, SRV_INVITE_TCP, CALLER_TCP)
    answer(txn, 200, "OK", 0.0)
    h.advance_to(100.0)
    assert h.send_times() == [0.0]
    assert h.tu.events[-1][:3] == ("failed", 32.0, Failure.NO_ACK)


def test_ack_for_a_2xx_after_the_transaction_ended_still_reaches_the_tu() -> None:
    h = Layer()
    txn = server_invite(h)
    answer(txn, 200, "OK", 0.0)
    h.advance_to(40.0)
    h.request(ack_for(SRV_INVITE, branch="z9hG4bKlate", to_tag="s1"), CALLER)
    assert h.tu.events[-1][:3] == ("ack", 40.0, "z9hG4bKlate")


def test_rfc2543_invite_without_magic_cookie_is_matched_on_its_identity() -> None:
    h = Layer()
    old = SRV_INVITE.replace(b"branch=z9hG4bKsrv1", b"branch=1234")
    txn = server_invite(h, old)
    answer(txn, 180, "Ringing", 0.0)
    h.request(old, CALLER)
    assert len(h.sent) == 2
    assert [e[:3] for e in h.tu.events] == [("request", 0.0, "INVITE")]


def test_cancel_gets_its_own_transaction_and_finds_the_invite() -> None:
    h = Layer()
    txn = server_invite(h)
    cancel = request_bytes(
        "CANCEL",
        "sip:bob@127.0.0.1",
        branch="z9hG4bKsrv1",
        call_id="srv-1@127.0.0.1",
        cseq=1,
    )
    h.request(cancel, CALLER)
    event = h.tu.events[-1]
    assert event[:3] == ("request", 0.0, "CANCEL")
    assert isinstance(event[3], ServerNonInviteTransaction)
    assert h.layer.find_invite(parse_request(cancel)) is txn


# --- server non-INVITE (17.2.2) ---------------------------------------------------------------


def test_server_non_invite_absorbs_retransmissions_resends_final_and_timer_j() -> None:
    h = Layer()
    h.request(SRV_BYE, CALLER)
    txn = h.tu.events[-1][3]
    assert isinstance(txn, ServerNonInviteTransaction)
    assert txn.state is State.TRYING
    h.advance_to(0.5)
    h.request(SRV_BYE, CALLER)  # no response yet: absorbed, nothing sent
    assert h.sent == []
    h.advance_to(1.0)
    ok = answer(txn, 200, "OK", 1.0).to_bytes()
    assert txn.state is State.COMPLETED
    h.advance_to(2.0)
    h.request(SRV_BYE, CALLER)
    assert h.take() == [(1.0, CALLER, ok), (2.0, CALLER, ok)]
    h.advance_to(32.9)  # no timer-driven retransmission of a non-INVITE response
    assert h.sent == []
    assert txn.state is State.COMPLETED
    h.advance_to(33.0)  # Timer J = 64*T1
    assert txn.state is State.TERMINATED
    assert len(h.layer) == 0
    # After Timer J the same bytes are a new request for the TU.
    h.request(SRV_BYE, CALLER)
    assert [e[:3] for e in h.tu.events] == [("request", 0.0, "BYE"), ("request", 33.0, "BYE")]


def test_server_non_invite_provisional_resent_on_retransmission() -> None:
    h = Layer()
    h.request(SRV_BYE, CALLER)
    txn = h.tu.events[-1][3]
    trying = answer(txn, 100, "Trying", 0.0).to_bytes()
    assert txn.state is State.PROCEEDING
    h.request(SRV_BYE, CALLER)
    assert h.take() == [(0.0, CALLER, trying), (0.0, CALLER, trying)]


def test_server_non_invite_over_tcp_ends_with_its_final_response() -> None:
    h = Layer()
    h.request(SRV_BYE.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"), CALLER_TCP)
    txn = h.tu.events[-1][3]
    answer(txn, 200, "OK", 0.0)
    assert txn.state is State.TERMINATED
    assert len(h.layer) == 0


# --- property tests: random inputs on each machine --------------------------------------------

WAIT = st.tuples(st.just("wait"), st.sampled_from([0.1, 0.5, 1.0, 4.0, 5.0, 20.0, 40.0]))


def _check_terminal(states: list[State]) -> None:
    if State.TERMINATED in states:
        first = states.index(State.TERMINATED)
        assert all(s is State.TERMINATED for s in states[first:]), states


@settings(max_examples=60, deadline=None)
@given(
    transport=st.sampled_from([PEER, PEER_TCP]),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("resp"), st.sampled_from([100, 180, 183, 200, 404, 486, 603])),
            st.tuples(st.just("transport")),
            WAIT,
        ),
        max_size=15,
    ),
)
def test_client_invite_random_inputs(transport, ops) -> None:  # type: ignore[no-untyped-def]
    h = Layer()
    txn = client_invite(h, transport)
    states = [txn.state]
    sent_at_end = None
    for op in ops:
        if op[0] == "resp":
            h.response(response_bytes(INVITE, op[1], "X", to_tag="t"), transport)
        elif op[0] == "transport":
            h.layer.transport_failed(transport, h.now)
        else:
            h.advance_to(h.now + op[1])
        states.append(txn.state)
        if txn.state is State.TERMINATED and sent_at_end is None:
            sent_at_end = len(h.sent)
            assert txn.key not in h.layer.client
    _check_terminal(states)
    failures = [e for e in h.tu.events if e[0] == "failed"]
    assert len(failures) <= 1
    if sent_at_end is not None:
        # A terminated transaction sends nothing more (late responses are strays).
        assert len(h.sent) == sent_at_end
    h.advance_to(h.now + 100.0)
    # Every state but Proceeding (which waits for a final response) ends by a timer.
    assert txn.state in (State.TERMINATED, State.PROCEEDING)


@settings(max_examples=60, deadline=None)
@given(
    transport=st.sampled_from([PEER, PEER_TCP]),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("resp"), st.sampled_from([100, 180, 200, 481, 500])),
            st.tuples(st.just("transport")),
            WAIT,
        ),
        max_size=15,
    ),
)
def test_client_non_invite_random_inputs(transport, ops) -> None:  # type: ignore[no-untyped-def]
    h = Layer()
    txn = h.layer.send_request(parse_request(BYE), transport, 0.0)
    states = [txn.state]
    for op in ops:
        if op[0] == "resp":
            h.response(response_bytes(BYE, op[1], "X"), transport)
        elif op[0] == "transport":
            h.layer.transport_failed(transport, h.now)
        else:
            h.advance_to(h.now + op[1])
        states.append(txn.state)
    _check_terminal(states)
    assert len([e for e in h.tu.events if e[0] == "failed"]) <= 1
    finals = [e for e in h.tu.events if e[0] == "response" and e[2] >= 200]
    assert len(finals) <= 1
    h.advance_to(h.now + 100.0)
    assert txn.state is State.TERMINATED
    assert len(h.layer) == 0


@settings(max_examples=60, deadline=None)
@given(
    tcp=st.booleans(),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("tu"), st.sampled_from([100, 180, 200, 486, 603])),
            st.tuples(st.just("invite")),
            st.tuples(st.just("ack_same")),
            st.tuples(st.just("ack_new")),
            WAIT,
        ),
        max_size=15,
    ),
)
def test_server_invite_random_inputs(tcp, ops) -> None:  # type: ignore[no-untyped-def]
    h = Layer()
    invite, source = (SRV_INVITE_TCP, CALLER_TCP) if tcp else (SRV_INVITE, CALLER)
    txn = server_invite(h, invite, source)
    states = [txn.state]
    final_sent = False
    sent_at_end = None
    for op in ops:
        if op[0] == "tu":
            final_sent = final_sent or op[1] >= 200
            answer(txn, op[1], "X", h.now)
        elif op[0] == "invite":
            h.request(invite, source)
        elif op[0] == "ack_same":
            h.request(ack_for(invite, branch="z9hG4bKsrv1", to_tag="s1"), source)
        elif op[0] == "ack_new":
            h.request(ack_for(invite, branch="z9hG4bKnew", to_tag="s1"), source)
        else:
            h.advance_to(h.now + op[1])
        states.append(txn.state)
        if txn.state is State.TERMINATED and sent_at_end is None:
            sent_at_end = len(h.sent)
    _check_terminal(states)
    if sent_at_end is not None:
        assert len(h.sent) == sent_at_end
    assert len([e for e in h.tu.events if e[0] == "failed"]) <= 1
    h.advance_to(h.now + 100.0)
    if final_sent:
        assert txn.state is State.TERMINATED
        assert h.layer.server.get(txn.key) is not txn
    else:
        assert txn.state is State.PROCEEDING  # the TU owes a response; no timer ends it


@settings(max_examples=60, deadline=None)
@given(
    tcp=st.booleans(),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("tu"), st.sampled_from([100, 200, 404])),
            st.tuples(st.just("again")),
            WAIT,
        ),
        max_size=15,
    ),
)
def test_server_non_invite_random_inputs(tcp, ops) -> None:  # type: ignore[no-untyped-def]
    h = Layer()
    data = SRV_BYE.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP") if tcp else SRV_BYE
    source = CALLER_TCP if tcp else CALLER
    h.request(data, source)
    txn = h.tu.events[-1][3]
    states = [txn.state]
    final_sent = False
    for op in ops:
        if op[0] == "tu":
            final_sent = final_sent or op[1] >= 200
            answer(txn, op[1], "X", h.now)
        elif op[0] == "again":
            h.request(data, source)
        else:
            h.advance_to(h.now + op[1])
        states.append(txn.state)
    _check_terminal(states)
    h.advance_to(h.now + 100.0)
    assert txn.state is (State.TERMINATED if final_sent else states[-1])


MACHINES = [
    ClientInviteTransaction,
    ClientNonInviteTransaction,
    ServerInviteTransaction,
    ServerNonInviteTransaction,
]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda m: m.__name__)
@settings(max_examples=40, deadline=None)
@given(inputs=st.lists(st.sampled_from(list(Input)), max_size=20))
def test_any_input_sequence_through_the_table(machine, inputs) -> None:  # type: ignore[no-untyped-def]
    """Every (state, input) pair, wanted or not, either follows the table or is ignored,
    and Terminated is never left (h2's test_state_machines, for SIP)."""
    h = Layer()
    req = parse_request(INVITE if "Invite" in machine.__name__ else BYE)
    txn = machine(h.layer, "key", req, PEER)
    client = isinstance(txn, ClientInviteTransaction | ClientNonInviteTransaction)
    if client:
        txn.start(0.0)
    statuses = {Input.R1XX: 180, Input.R2XX: 200, Input.R3XX_6XX: 486}
    states = [txn.state]
    for what in inputs:
        if client and what in statuses:  # as `receive` does before the table walk
            txn.last_response = Response(statuses[what], "X", [("To", "<sip:b@x>;tag=t")])
        txn.handle(what, h.now)
        states.append(txn.state)
    _check_terminal(states)
