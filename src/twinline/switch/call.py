"""A call as the switch holds it: two legs, each a SIP dialog, and the call's state.

Plain data with small helpers; the behaviour lives in `twinline.switch.b2bua`.

Call states::

    [routing] --route--> [calling] --18x--> [ringing] --2xx--> [answered]
       ^  |                  |                  |                    |
       |  |   failure, no answer: the attempt is abandoned,          | BYE, max duration
       +--|------------------+------------------+ the controller     v
          |                  |                  | decides again  [releasing]
          +--reject, CANCEL--+------------------+----------------+--> [ended]
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from twinline.sip.ids import new_branch
from twinline.sip.message import Request
from twinline.sip.transaction import (
    Address,
    ClientInviteTransaction,
    ClientTransaction,
    ServerInviteTransaction,
    ServerTransaction,
)
from twinline.switch.routing import Target
from twinline.switch.session_timer import LegSession
from twinline.timers import Timer


class CallState(enum.Enum):
    ROUTING = "routing"  # INVITE received; waiting for the call's controller to decide
    CALLING = "calling"  # B-leg INVITE sent
    RINGING = "ringing"  # the callee sent a provisional response
    ANSWERED = "answered"  # the callee answered; 2xx relayed to the caller
    RELEASING = "releasing"  # BYE or CANCEL under way
    ENDED = "ended"


class Side(enum.Enum):
    A = "a"  # towards the caller: the switch is its UAS
    B = "b"  # towards the callee: the switch is its UAC


@dataclass(slots=True, eq=False)
class Leg:
    """One dialog of the call (RFC 3261 12): its identity, route and sequence numbers."""

    side: Side
    call_id: str
    local_tag: str
    # From/To header values as this side writes them, tags included once known.
    local_party: str
    remote_party: str
    remote_tag: str = ""
    remote_target: str = ""  # the peer's Contact URI
    route_set: list[str] = field(default_factory=list)
    address: Address = ("udp", "", 0)  # where in-dialog requests go
    local_cseq: int = 1
    remote_cseq: int = 0
    confirmed: bool = False
    invite_cseq: int = 1  # CSeq of our last INVITE on this leg, which its ACK repeats
    # We hold the ACK of this leg's 2xx until the other leg's ACK brings the SDP answer
    # (the INVITE we relayed carried no offer, so the 2xx did).
    ack_held: bool = False
    # A SIPS dialog (RFC 3261 26.2): our Contact on it is a SIPS URI.
    secure: bool = False
    # Its RFC 4028 session timer, if session timers are on; and the SDP this side last
    # had from us, which a refreshing re-INVITE offers again unchanged.
    session: LegSession | None = None
    local_sdp: bytes = b""

    def build_request(
        self,
        method: str,
        via: str,
        contact: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        cseq: int | None = None,
    ) -> Request:
        """An in-dialog request (RFC 3261 12.2.1.1); `via` lacks only its branch."""
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        branch = new_branch()
        hdrs = [
            ("Via", f"{via};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", self.local_party),
            ("To", self.remote_party),
            ("Call-ID", self.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        hdrs.extend(("Route", r) for r in self.route_set)
        if method in ("INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"):
            hdrs.append(("Contact", contact))
        if headers:
            hdrs.extend(headers)
        req = Request(method, self.remote_target, hdrs, body)
        req.call_id = self.call_id
        req.cseq = cseq
        req.cseq_method = method
        req.branch = branch
        req.from_tag = self.local_tag
        req.to_tag = self.remote_tag
        return req


@dataclass(slots=True, eq=False)
class Attempt:
    """A B-leg INVITE the call gave up on (no answer, CANCEL, re-route) whose
    transaction is still open: its CANCEL waits for a first provisional response
    (RFC 3261 9.1), and a 2xx that still arrives is acknowledged and hung up."""

    leg: Leg
    cancelled: bool = False


@dataclass(slots=True)
class Relay:
    """An in-dialog request passed from one leg to the other, awaiting its answer."""

    origin: ServerTransaction
    call: Call
    leg: Leg  # the leg the request went out on
    # A re-INVITE or UPDATE renegotiates its sender's session timer: the new terms,
    # applied when the other side accepts it.
    renewed: LegSession | None = None


@dataclass(slots=True, eq=False)
class Refresh:
    """A session refresh the switch sent on `leg` (RFC 4028), awaiting its answer."""

    call: Call
    leg: Leg
    answered: bool = False


@dataclass(slots=True, eq=False)
class Call:
    id: str
    a: Leg
    # The caller's INVITE transaction, and ours to the callee: let go of once they end
    # (after the answer), so that an established call holds no setup messages.
    a_invite: ServerInviteTransaction | None
    dialled: str
    caller: str
    created: float
    state: CallState = CallState.ROUTING
    b: Leg | None = None
    b_invite: ClientInviteTransaction | None = None
    targets: tuple[Target, ...] = ()  # still to try, in order
    target: Target | None = None  # the one being tried, or that answered
    # How each destination of the last route ended: (destination, status, reason).
    outcomes: tuple[tuple[str, int, str], ...] = ()
    forwarded: bool = False  # the caller heard 181 Call Is Being Forwarded
    max_duration: float = 0.0  # seconds the call may last once answered; 0: no limit
    deadline: Timer | None = None  # the max-duration timer, armed at the answer
    late_offer: bool = False  # the caller's INVITE had no SDP: B's ACK carries A's answer
    no_answer: Timer | None = None
    releasing: list[ClientTransaction] = field(default_factory=list)  # our BYEs
    abandoned: dict[ClientTransaction, Attempt] = field(default_factory=dict)
    answered_at: float | None = None
    ended_at: float | None = None
    cause: str = ""  # why it ended: "caller-bye", "callee-bye", "cancelled", "486 ..."
    reinvite_pending: bool = False
    # The session interval our INVITE to the callee asks for, when a 422 raised it
    # above the configured one (RFC 4028 7.3); 0: the configured one.
    b_session_expires: int = 0
    user: str = ""  # the local user who authenticated the INVITE, or ""
    trunk: str = ""  # the trunk whose source sent the INVITE, or ""
    # Whether the caller's P-Asserted-Identity is believed: from a trunk, or from
    # anyone on a switch without access control (a bare core in tests).
    trusted: bool = True

    @property
    def setup(self) -> ServerInviteTransaction:
        """The caller's INVITE transaction while the call is being set up: it ends
        only after a final response, so an unanswered call always has it."""
        assert self.a_invite is not None, f"call {self.id}: its INVITE transaction ended"
        return self.a_invite

    def leg(self, side: Side) -> Leg | None:
        return self.a if side is Side.A else self.b

    def other(self, leg: Leg) -> Leg | None:
        return self.b if leg is self.a else self.a
