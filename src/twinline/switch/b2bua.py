"""The switch's core: a back-to-back user agent over the transaction layer, sans-IO.

`SwitchCore.receive(data, source, now)` takes the bytes of one datagram or stream frame;
everything the switch sends leaves through the `send(address, bytes)` callable it was
built with; deadlines sit in its `TimerHeap`. No sockets, no clock, no logging on
the per-message path: counters in `stats` say what happened.

Each call has an A-leg (the switch is the caller's UAS) and a B-leg (the switch is the
callee's UAC). The switch does the SIP work itself (100 Trying, relaying provisional
and final responses in the order they arrive, ACKs, CANCEL, BYE, in-dialog requests
passed through, SDP untouched) and asks its `CallControl` only at decision points.
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from itertools import count
from typing import Protocol
from urllib.parse import unquote

from twinline.metrics_histogram import DURATION_BUCKETS, SETUP_BUCKETS, Histogram
from twinline.sip.errors import SipParseError
from twinline.sip.ids import new_branch, new_call_id, new_tag
from twinline.sip.message import (
    Limits,
    NameAddr,
    Request,
    Response,
    parse_message,
    parse_name_addr,
    parse_uri,
    parse_via,
    readable_party,
    response_to,
)
from twinline.sip.transaction import (
    Address,
    ClientInviteTransaction,
    ClientTransaction,
    Failure,
    Send,
    ServerInviteTransaction,
    ServerTransaction,
    State,
    Transaction,
    TransactionLayer,
)
from twinline.switch.access import ASSERTED, Admission, Refusal
from twinline.switch.call import Attempt, Call, CallState, Leg, Refresh, Relay, Side
from twinline.switch.control import CallControl
from twinline.switch.flood import FloodGuard
from twinline.switch.routing import DestinationOptions, Target, address_of_uri, format_host
from twinline.switch.session_timer import (
    IntervalTooSmall,
    LegSession,
    SessionConfig,
    negotiate_as_uac,
    negotiate_as_uas,
    request_headers,
)
from twinline.timers import TimerHeap

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO, PRACK, REGISTER, NOTIFY, REFER"
# Extensions this B2BUA can honour when a caller *requires* them (100rel would need
# the switch to take part in reliable provisional responses: not yet).
SUPPORTED: frozenset[str] = frozenset(["timer"])
# Headers of the caller's INVITE that the callee's INVITE carries too; the rest
# (Via, Route, Contact, tags, Call-ID, ...) belong to one hop or one dialog only.
PASSED_ON_INVITE = frozenset(
    [
        "Content-Type", "Content-Disposition", "Content-Encoding", "Content-Language",
        "Allow", "Accept", "Subject", "User-Agent", "Alert-Info", "Call-Info",
        "P-Asserted-Identity", "P-Preferred-Identity", "Privacy", "Priority",
        "Organization", "Reason",
    ]
)  # fmt: skip
PASSED_ON_RESPONSE = frozenset(
    [
        "Content-Type", "Content-Disposition", "Content-Encoding", "Content-Language",
        "Allow", "Accept", "Server", "Warning", "Retry-After", "Reason", "Unsupported",
        "Call-Info", "Error-Info", "P-Asserted-Identity",
    ]
)  # fmt: skip
PASSED_IN_DIALOG = PASSED_ON_INVITE | frozenset(["Event", "Subscription-State", "Refer-To"])
# A new call's INVITE also carries the history of its diversions so far.
PASSED_ON_NEW_INVITE = PASSED_ON_INVITE | frozenset(["Diversion", "History-Info"])
# RFC 4458 causes for the Diversion reasons, as History-Info's "cause" carries them.
HISTORY_CAUSES = {
    "user-busy": 486, "no-answer": 408, "unconditional": 302, "deflection": 487,
    "unavailable": 503, "out-of-service": 503, "unknown": 404,
}  # fmt: skip
# Transports whose in-dialog requests follow the connection the dialog came on.
STREAMS = ("tcp", "tls")
# Seconds before a session refresh that had to wait (a re-INVITE under way) is tried again.
REFRESH_RETRY = 1.0


class Registrar(Protocol):
    def handle(self, req: Request, source: tuple[str, str, int], now: float) -> Response: ...


@dataclass(slots=True)
class SwitchStats:
    """Counters only: they are the per-message path's whole observability."""

    received: int = 0
    sent: int = 0
    bad_requests_answered: int = 0  # malformed but answerable: 400 (or 416, 505, 513)
    malformed_dropped: int = 0  # could not be answered: dropped
    calls_offered: int = 0
    calls_answered: int = 0
    calls_rejected: int = 0
    calls_cancelled: int = 0
    calls_overload_rejected: int = 0
    calls_completed: int = 0
    routes_refused: int = 0  # a route command for a call not waiting for one
    calls_session_expired: int = 0  # released: a leg's session timer ran out (RFC 4028)
    calls_cut_at_max_duration: int = 0  # released by the switch at their maximum duration
    requests: Counter[str] = field(default_factory=Counter)  # received, by method
    responses: Counter[int] = field(default_factory=Counter)  # received, by status code
    # Observed once per call: INVITE to answer, and answer to end.
    setup_time: Histogram = field(default_factory=lambda: Histogram(SETUP_BUCKETS))
    duration: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))


class Ending(enum.Enum):
    """Who ended an established call, for the call's cause."""

    CALLER = "caller-bye"
    CALLEE = "callee-bye"
    SWITCH = "switch"


class SwitchCore:
    def __init__(
        self,
        *,
        send: Send,
        local: dict[str, tuple[str, int]],
        limits: Limits,
        timers: TimerHeap | None = None,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
        max_calls: int = 20000,
        retry_after: int = 5,
        no_answer_timeout: float = 60.0,
        max_call_duration: float = 0.0,
        registrar: Registrar | None = None,
        call_id_prefix: str = "c",
        session: SessionConfig | None = None,
    ) -> None:
        """`local` maps each transport ("udp", "tcp") to the host and port the switch
        advertises for it in Via and Contact."""
        self._send = send
        self.local = local
        self.limits = limits
        self.timers = timers or TimerHeap()
        self.layer = TransactionLayer(self, self._counted_send, self.timers, t1=t1, t2=t2, t4=t4)
        self.max_calls = max_calls
        self.retry_after = retry_after
        self.no_answer_timeout = no_answer_timeout
        self.max_call_duration = max_call_duration  # 0: calls may last as long as they do
        self.session = session or SessionConfig()  # RFC 4028; off unless configured
        self.registrar = registrar
        self.control: CallControl | None = None
        # Who may call what, and the per-address flood limits; None: everyone, no limit.
        self.admission: Admission | None = None
        self.guard: FloodGuard | None = None
        self.calls: dict[str, Call] = {}
        # (SIP Call-ID, our tag) -> the leg: how in-dialog requests find their call.
        self.dialogs: dict[tuple[str, str], tuple[Call, Leg]] = {}
        self.stats = SwitchStats()
        # Set by the process when its event loop lags: new calls get 503 with
        # Retry-After until it catches up, so the calls it has keep their timers.
        self.overloaded = False
        # Call ids must never repeat, across restarts too: CDRs and side-effect keys
        # are keyed by them. The process gives a prefix of its own (see server.py).
        self._id_prefix = call_id_prefix
        self._ids = count(1)
        # The time of the input being handled, for the few helpers deep in a call's
        # handling that arm timers; every entry point sets it first.
        self._now = 0.0

    # --- input ----------------------------------------------------------------------
    def receive(self, data: bytes, source: Address, now: float, *, stream: bool = False) -> None:
        self.stats.received += 1
        self._now = now
        guard = self.guard
        if guard is not None and not guard.admit(source, now):
            return  # a banned address: dropped unread
        try:
            msg = parse_message(data, self.limits, stream=stream)
        except SipParseError as e:
            self._bad_input(e, source)
            return
        if isinstance(msg, Request):
            self.stats.requests[msg.method] += 1
            _stamp_via(msg, source)
            self.layer.receive_request(msg, source, now)
        else:
            self.stats.responses[msg.status] += 1
            self.layer.receive_response(msg, source, now)

    def _bad_input(self, error: SipParseError, source: Address) -> None:
        req = error.request
        if req is None or req.method == "ACK":
            self.stats.malformed_dropped += 1
            return
        self.stats.bad_requests_answered += 1
        resp = response_to(req, error.status, error.reason, to_tag=new_tag())
        self._counted_send(source, resp.to_bytes())

    def _counted_send(self, address: Address, data: bytes) -> None:
        self.stats.sent += 1
        self._send(address, data)

    # --- our identity on each transport -----------------------------------------------
    def _via(self, transport: str) -> str:
        host, port = self.local.get(transport) or next(iter(self.local.values()))
        return f"SIP/2.0/{transport.upper()} {format_host(host)}:{port}"

    def _contact(self, transport: str, secure: bool = False) -> str:
        """Our Contact on a leg over `transport`: a SIPS URI when the dialog is secure
        (RFC 3261 8.1.1.8: a SIPS Request-URI asks for one), else a SIP URI that names
        a stream transport. For TLS that is `transport=tls`, which RFC 5630 deprecates
        in favour of SIPS but which is what deployed phones and trunks read."""
        host, port = self.local.get(transport) or next(iter(self.local.values()))
        if secure:
            return f"<sips:{format_host(host)}:{port}>"
        params = f";transport={transport}" if transport in STREAMS else ""
        return f"<sip:{format_host(host)}:{port}{params}>"

    # --- TransactionUser ------------------------------------------------------------------
    def request_received(self, txn: ServerTransaction, req: Request, now: float) -> None:
        guard = self.guard
        if guard is not None and not guard.count(txn.address, now):
            self.layer.discard(txn)  # the request that got its address banned
            return
        if req.to_tag:
            found = self.dialogs.get((req.call_id, req.to_tag))
            if found is None:
                self._respond(txn, req, 481, "Call/Transaction Does Not Exist", tag=True)
                return
            self._in_dialog(found[0], found[1], txn, req, now)
            return
        method = req.method
        if method == "INVITE":
            assert isinstance(txn, ServerInviteTransaction)
            self._new_call(txn, req, now)
        elif method == "CANCEL":
            self._cancel_from_caller(txn, req, now)
        elif method == "OPTIONS":
            self._respond(
                txn, req, 200, "OK", [("Allow", ALLOW), ("Accept", "application/sdp")], tag=True
            )
        elif method == "REGISTER":
            if self.registrar is None:
                self._respond(txn, req, 405, "Method Not Allowed", [("Allow", ALLOW)], tag=True)
            else:
                txn.respond(self.registrar.handle(req, txn.address, now), now)
        elif method in ("BYE", "UPDATE", "INFO", "PRACK", "NOTIFY"):
            self._respond(txn, req, 481, "Call/Transaction Does Not Exist", tag=True)
        else:
            self._respond(txn, req, 405, "Method Not Allowed", [("Allow", ALLOW)], tag=True)

    def ack_received(self, req: Request, source: Address, now: float) -> None:
        found = self.dialogs.get((req.call_id, req.to_tag))
        if found is None:
            # The ACK of a rejected INVITE, already absorbed, or a stray one.
            if self.guard is not None:
                self.guard.count(source, now)
            return
        call, leg = found
        other = call.other(leg)
        if other is None or not other.ack_held:
            return
        # The other leg's 2xx was held unacknowledged because its INVITE carried no
        # offer: this ACK carries the answer, so it goes on now.
        self._send_ack(other, req.body, req.get("Content-Type"))

    def response_received(self, txn: ClientTransaction, resp: Response, now: float) -> None:
        owner = txn.owner
        if isinstance(owner, Call):
            if txn is owner.b_invite:
                self._callee_responded(owner, resp, now)
            elif txn in owner.abandoned:
                self._abandoned_responded(owner, txn, resp, now)
            elif resp.status >= 200 and txn in owner.releasing:
                owner.releasing.remove(txn)
                txn.owner = None
                if not owner.releasing and owner.state is CallState.RELEASING:
                    self._end(owner, now)
        elif isinstance(owner, Relay):
            self._relay_response(owner, txn, resp, now)
        elif isinstance(owner, Refresh):
            self._refresh_response(owner, txn, resp, now)

    def stray_response(self, resp: Response, source: Address, now: float) -> None:
        # A 2xx to one of our INVITEs after its transaction ended: our ACK was lost.
        if resp.status // 100 == 2 and resp.cseq_method == "INVITE":
            found = self.dialogs.get((resp.call_id, resp.from_tag))
            if found is not None and found[1].confirmed:
                self._send_ack(found[1], b"", None)
                return
        if self.guard is not None:
            self.guard.count(source, now)  # belongs to nothing: counted as a request

    def transaction_ended(self, txn: Transaction) -> None:
        owner = txn.owner
        if isinstance(owner, Call):
            if txn is owner.a_invite:
                owner.a_invite = None
            elif txn is owner.b_invite:
                owner.b_invite = None

    def transaction_failed(self, txn: Transaction, failure: Failure, now: float) -> None:
        owner = txn.owner
        if isinstance(owner, Relay):
            if isinstance(txn, ClientTransaction):
                status, reason = (
                    (408, "Request Timeout")
                    if failure is Failure.TIMEOUT
                    else (503, "Service Unavailable")
                )
                self._respond(owner.origin, owner.origin.request, status, reason)
            owner.call.reinvite_pending = False
            return
        if isinstance(owner, Refresh):
            self._refresh_failed(owner, now)
            return
        if not isinstance(owner, Call):
            return
        call = owner
        if txn is call.b_invite:
            status, reason = (
                (408, "Request Timeout") if failure is Failure.TIMEOUT else (480, "Unreachable")
            )
            self._callee_failed(call, status, reason, now)
        elif txn in call.abandoned:
            del call.abandoned[txn]
        elif txn is call.a_invite and failure is Failure.NO_ACK:
            # The caller never acknowledged our 2xx (RFC 3261 13.3.1.4): hang up.
            self._release(call, Ending.SWITCH, now, cause="no-ack")
        elif txn in call.releasing:
            call.releasing.remove(txn)
            txn.owner = None
            if not call.releasing and call.state is CallState.RELEASING:
                self._end(call, now)

    # --- commands from the call's controller ---------------------------------------------
    def route(
        self, call: Call, targets: list[Target], now: float, *, max_duration: float = 0.0
    ) -> None:
        """Try `targets` in turn until one answers; if all fail, the controller decides.

        While a callee is being tried, a new route cancels that attempt first (a
        service moving on, e.g. forwarding on no answer). An answered or ending call
        cannot be routed. Once answered, the call lasts at most `max_duration`
        seconds, or `max_call_duration` if that is shorter (0: no limit of its own)."""
        if call.state in (CallState.CALLING, CallState.RINGING):
            self._abandon_attempt(call, now)
        elif call.state is not CallState.ROUTING:
            self.stats.routes_refused += 1
            return
        call.state = CallState.ROUTING
        call.targets = tuple(targets)
        call.outcomes = ()
        limits = [d for d in (max_duration, self.max_call_duration) if d > 0]
        call.max_duration = min(limits) if limits else 0.0
        self._try_next_target(call, now)

    def reject(self, call: Call, status: int, reason: str, now: float) -> None:
        if call.state in (CallState.ANSWERED, CallState.RELEASING, CallState.ENDED):
            return
        headers = [("Retry-After", str(self.retry_after))] if status == 503 else None
        self._respond(call.setup, call.setup.request, status, reason, headers, tag=True)
        self.stats.calls_rejected += 1
        call.cause = f"{status} {reason}"
        self._end(call, now)

    def release(self, call: Call, now: float) -> None:
        """Hang up a call on the controller's behalf, in whatever phase it is."""
        if call.state in (CallState.ROUTING, CallState.CALLING, CallState.RINGING):
            self._abandon_setup(call, 480, "Temporarily Unavailable", "released", now)
        else:
            self._release(call, Ending.SWITCH, now, cause="released")

    def _abandon_setup(self, call: Call, status: int, reason: str, cause: str, now: float) -> None:
        """End a call before it was answered: the caller gets `status` at once, the
        callee being tried is cancelled in the background."""
        self._respond(call.setup, call.setup.request, status, reason, tag=True)
        call.cause = cause
        self._end(call, now)

    def _abandon_attempt(self, call: Call, now: float) -> None:
        """Give up on the callee being tried: CANCEL it now if it sent a provisional
        response, else as soon as it sends one (RFC 3261 9.1)."""
        if call.no_answer is not None:
            call.no_answer.cancel()
            call.no_answer = None
        txn, leg = call.b_invite, call.b
        call.b_invite = None
        if txn is None or leg is None:
            return
        self.dialogs.pop((leg.call_id, leg.local_tag), None)
        if txn.state not in (State.CALLING, State.PROCEEDING):
            txn.owner = None  # over already: what it still absorbs is no concern of the call
            return
        attempt = Attempt(leg)
        call.abandoned[txn] = attempt
        if txn.state is State.PROCEEDING:
            self._cancel(txn, attempt, now)

    def _cancel(self, txn: ClientTransaction, attempt: Attempt, now: float) -> None:
        assert isinstance(txn, ClientInviteTransaction)
        attempt.cancelled = True
        self.layer.send_request(txn.cancel_request(), txn.address, now, owner=None)

    def _abandoned_responded(
        self, call: Call, txn: ClientTransaction, resp: Response, now: float
    ) -> None:
        attempt = call.abandoned[txn]
        if resp.status < 200:
            if not attempt.cancelled:
                self._cancel(txn, attempt, now)  # any provisional, 100 included
            return
        del call.abandoned[txn]
        if resp.status < 300:
            # It answered before our CANCEL reached it: take the dialog only to end it.
            self._hang_up_stray(call, attempt.leg, resp, now)
        # a failure (487 to our CANCEL): the transaction acknowledged it; done.

    # --- a new call ------------------------------------------------------------------------
    def _new_call(self, txn: ServerInviteTransaction, req: Request, now: float) -> None:
        required = [r.strip() for r in req.get_all("Require") for r in r.split(",")]
        supported = SUPPORTED if self.session.enabled else SUPPORTED - {"timer"}
        unsupported = [r for r in required if r and r not in supported]
        if unsupported:
            self._respond(
                txn, req, 420, "Bad Extension", [("Unsupported", ", ".join(unsupported))], tag=True
            )
            return
        if req.max_forwards == 0:  # read as a number by the parser: "00" is zero too
            self._respond(txn, req, 483, "Too Many Hops", tag=True)
            return
        if len(self.calls) >= self.max_calls or self.overloaded:
            self.stats.calls_overload_rejected += 1
            self._respond(
                txn, req, 503, "Service Unavailable",
                [("Retry-After", str(self.retry_after))], tag=True,
            )  # fmt: skip
            return
        try:
            dialled = parse_uri(req.uri).user
            caller = parse_name_addr(req.get("From") or "")
            contact_value = req.get("Contact")
            if contact_value is None:
                raise SipParseError("Missing Contact header")
            remote_target = parse_name_addr(contact_value).uri
            parse_uri(remote_target)
            session = negotiate_as_uas(req, self.session)
            caller_user = parse_uri(caller.uri).user if caller.uri else ""
        except SipParseError as e:
            self._respond(txn, req, e.status, e.reason, tag=True)
            return
        except IntervalTooSmall as e:
            self._respond(
                txn, req, 422, "Session Interval Too Small", [("Min-SE", str(e.min_se))], tag=True
            )
            return
        user = trunk = ""
        if self.admission is not None:
            admitted = self.admission.admit(req, txn.address, dialled, unquote(caller_user), now)
            if isinstance(admitted, Refusal):
                # Statelessly, as Kamailio challenges: a flood of INVITEs must not
                # leave thousands of transactions retransmitting their 407s.
                refusal = response_to(
                    req, admitted.status, admitted.reason,
                    to_tag=new_tag(), headers=list(admitted.headers),
                )  # fmt: skip
                self.layer.respond_statelessly(txn, refusal)
                return
            user, trunk = admitted.user, admitted.trunk
        self._respond(txn, req, 100, "Trying")
        self.stats.calls_offered += 1
        local_tag = new_tag()
        a = Leg(
            side=Side.A,
            call_id=req.call_id,
            local_tag=local_tag,
            local_party=f"{req.get('To')};tag={local_tag}",
            remote_party=req.get("From") or "",
            remote_tag=req.from_tag,
            remote_target=remote_target,
            route_set=req.get_all("Record-Route"),
            # In-dialog requests to the caller follow the flow its INVITE came on:
            # the same TCP connection, or the NAT binding its datagrams came from.
            address=txn.address,
            remote_cseq=req.cseq,
            secure=req.uri[:5].lower() == "sips:",
            session=session,
        )
        call = Call(
            id=f"{self._id_prefix}{next(self._ids)}",
            a=a,
            a_invite=txn,
            dialled=dialled,
            caller=caller_user,
            created=now,
            late_offer=not req.body,
            user=user,
            trunk=trunk,
            trusted=self.admission is None or bool(trunk),
        )
        txn.owner = call
        self.calls[call.id] = call
        self.dialogs[(a.call_id, a.local_tag)] = (call, a)
        assert self.control is not None, "a CallControl must be set before calls arrive"
        self.control.offered(call, now)

    def _try_next_target(self, call: Call, now: float) -> None:
        if not call.targets:
            return
        target, call.targets = call.targets[0], call.targets[1:]
        call.target = target
        options = target.options
        a_req = call.setup.request
        transport = target.address[0]
        b_call_id = new_call_id(format_host(self.local.get(transport, ("twinline", 0))[0]))
        from_tag = new_tag()
        caller = parse_name_addr(a_req.get("From") or "")
        presented = _presented(caller, options) if options.caller_id or options.caller_name else ""
        if presented:
            caller = parse_name_addr(presented)
        caller.params = {"tag": from_tag}
        local_party = str(caller)
        remote_party = f"<{target.uri}>"
        b = Leg(
            side=Side.B,
            call_id=b_call_id,
            local_tag=from_tag,
            local_party=local_party,
            remote_party=remote_party,
            remote_target=target.uri,
            address=target.address,
            local_cseq=1,
            secure=target.uri[:5].lower() == "sips:",
            local_sdp=a_req.body,
        )
        if call.b is not None:
            self.dialogs.pop((call.b.call_id, call.b.local_tag), None)
        call.b = b
        self.dialogs[(b.call_id, b.local_tag)] = (call, b)
        # One hop less than the caller's (RFC 3261 16.6 step 3); 70 less one when it sent none.
        hops = a_req.max_forwards - 1 if a_req.max_forwards > 0 else 69
        branch = new_branch()
        headers = [
            ("Via", f"{self._via(transport)};branch={branch};rport"),
            ("Max-Forwards", str(hops)),
            ("From", local_party),
            ("To", remote_party),
            ("Call-ID", b_call_id),
            ("CSeq", "1 INVITE"),
            ("Contact", self._contact(transport, b.secure)),
        ]
        passed = PASSED_ON_NEW_INVITE
        if not call.trusted:
            # An identity asserted by anyone but a trunk is not passed on (RFC 3325 5).
            passed = passed - ASSERTED
        if options.diversion:
            # Ours on top; earlier diversions follow, so their counters add up (RFC
            # 5806 2). A History-Info of ours starts the history afresh.
            headers.extend(_diversion(a_req.uri, target.uri, options))
            if options.history_info:
                passed = passed - {"History-Info"}
        if presented:
            headers.append(("P-Asserted-Identity", presented))
            passed = passed - {"P-Asserted-Identity", "P-Preferred-Identity"}
        headers.extend((n, v) for n, v in a_req.headers if n in passed)
        headers.extend(request_headers(self.session, call.b_session_expires))
        invite = Request("INVITE", target.uri, headers, a_req.body)
        invite.call_id = b_call_id
        invite.cseq = 1
        invite.cseq_method = "INVITE"
        invite.branch = branch
        invite.from_tag = from_tag
        call.state = CallState.CALLING
        call.b_invite = self.layer.send_request(invite, target.address, now, owner=call)  # type: ignore[assignment]
        if call.no_answer is not None:
            call.no_answer.cancel()
        call.no_answer = self.timers.schedule(
            now + (options.ring_timeout or self.no_answer_timeout),
            lambda t: self._no_answer(call, t),
        )
        if options.diversion and not call.forwarded:
            call.forwarded = True
            forwarded = response_to(
                a_req, 181, "Call Is Being Forwarded", to_tag=call.a.local_tag,
                headers=[("Contact", self._contact(call.a.address[0], call.a.secure))],
            )  # fmt: skip
            call.setup.respond(forwarded, now)

    # --- the callee's answers ---------------------------------------------------------------
    def _callee_responded(self, call: Call, resp: Response, now: float) -> None:
        status = resp.status
        b = call.b
        assert b is not None
        if status < 200:
            if status == 100:
                return
            if call.state in (CallState.CALLING, CallState.RINGING):
                first = call.state is CallState.CALLING
                call.state = CallState.RINGING
                if resp.to_tag and not b.remote_tag:
                    b.remote_tag = resp.to_tag
                self._relay_to_caller(call, resp, contact=bool(resp.to_tag))
                if first and self.control is not None:
                    self.control.progress(call, status, now)
            return
        if status < 300:
            self._callee_answered(call, resp, now)
            return
        if status == 422 and self._session_retry(call, resp):
            return
        reason = resp.reason
        if status == 503:
            # A downstream 503 is not our overload; the caller must not back off from us.
            status, reason = 480, "Temporarily Unavailable"
        self._callee_failed(call, status, reason, now)

    def _callee_answered(self, call: Call, resp: Response, now: float) -> None:
        b = call.b
        assert b is not None
        if b.confirmed and resp.to_tag == b.remote_tag:
            # A retransmitted 2xx: our ACK was lost. Acknowledge again.
            if not b.ack_held:
                self._send_ack(b, b"", None)
            return
        if b.confirmed:
            # A second 2xx from a fork: take the dialog only to end it (13.2.2.4).
            self._hang_up_stray(call, b, resp, now)
            return
        contact = resp.get("Contact")
        try:
            target = parse_name_addr(contact).uri if contact else b.remote_target
            address = address_of_uri(target) if not b.route_set else b.address
        except SipParseError:
            target, address = b.remote_target, b.address
        if call.no_answer is not None:
            call.no_answer.cancel()
            call.no_answer = None
        b.remote_tag = resp.to_tag
        b.remote_party = readable_party(resp.get("To"), b.remote_party, resp.to_tag)
        b.remote_target = target
        b.route_set = list(reversed(resp.get_all("Record-Route")))
        if b.address[0] not in STREAMS:
            b.address = address
        b.confirmed = True
        if call.late_offer:
            b.ack_held = True  # the caller's ACK carries the answer to the callee's offer
        else:
            self._send_ack(b, b"", None)
        call.state = CallState.ANSWERED
        call.answered_at = now
        call.a.confirmed = True
        self.stats.calls_answered += 1
        self.stats.setup_time.observe(now - call.created)
        if call.max_duration > 0:
            call.deadline = self.timers.schedule(
                now + call.max_duration, lambda t: self._max_duration_reached(call, t)
            )
        b.session = self._session_of_answer(resp, call.b_session_expires, None)
        a_session = call.a.session
        self._relay_to_caller(
            call, resp, contact=True, extra=a_session.response_headers() if a_session else None
        )
        for leg in (call.a, b):
            self._session_start(call, leg, now)
        if self.control is not None:
            self.control.answered(call, now)

    def _hang_up_stray(self, call: Call, b: Leg, resp: Response, now: float) -> None:
        """ACK and BYE a 2xx we do not want (a fork's second answer, an abandoned
        attempt that answered anyway)."""
        contact = resp.get("Contact")
        try:
            target = parse_name_addr(contact).uri if contact else b.remote_target
            address = address_of_uri(target)
        except SipParseError:
            target, address = b.remote_target, b.address
        stray = Leg(
            side=Side.B, call_id=b.call_id, local_tag=b.local_tag,
            local_party=b.local_party,
            remote_party=readable_party(resp.get("To"), b.remote_party, resp.to_tag),
            remote_tag=resp.to_tag, remote_target=target,
            route_set=list(reversed(resp.get_all("Record-Route"))),
            address=b.address if b.address[0] in STREAMS else address, local_cseq=b.local_cseq,
        )  # fmt: skip
        self._send_ack(stray, b"", None)
        bye = stray.build_request("BYE", self._via(stray.address[0]), "")
        call.releasing.append(self.layer.send_request(bye, stray.address, now, owner=call))

    def _callee_failed(self, call: Call, status: int, reason: str, now: float) -> None:
        """The callee's side gave a final failure, timed out, was unreachable or did
        not answer in time: try the next target, or let the controller decide."""
        if call.state not in (CallState.CALLING, CallState.RINGING):
            return
        if call.no_answer is not None:
            call.no_answer.cancel()
            call.no_answer = None
        if call.b is not None:
            self.dialogs.pop((call.b.call_id, call.b.local_tag), None)
        call.b_invite = None
        call.state = CallState.ROUTING
        call.cause = ""
        if call.target is not None:
            call.outcomes += ((call.target.destination, status, reason),)
        if status >= 600:
            call.targets = ()  # a global failure: no other contact is tried (RFC 3261 21.6)
        if call.targets:
            self._try_next_target(call, now)
        elif self.control is not None:
            self.control.route_failed(call, status, reason, now)

    def _max_duration_reached(self, call: Call, now: float) -> None:
        call.deadline = None
        if call.state is CallState.ANSWERED:
            self.stats.calls_cut_at_max_duration += 1
            self._release(call, Ending.SWITCH, now, cause="max-duration")

    # --- session timers (RFC 4028; the negotiation is in session_timer.py) ---------------
    def _session_of_answer(
        self, resp: Response, asked: int, previous: LegSession | None
    ) -> LegSession | None:
        """A leg's session timer from the 2xx to our INVITE there; a malformed
        Session-Expires counts as none (we refresh)."""
        asked = asked or self.session.session_expires
        try:
            return negotiate_as_uac(resp, self.session, asked, previous)
        except SipParseError:
            return negotiate_as_uac(Response(200, "OK", []), self.session, asked, previous)

    def _session_start(self, call: Call, leg: Leg, now: float) -> None:
        """A new interval on `leg` begins now (an answer, a refresh's 2xx)."""
        session = leg.session
        if session is None:
            return
        session.cancel()
        session.started = now
        session.refresh_sent = False
        session.timer = self.timers.schedule(
            session.next_deadline(), lambda t: self._session_due(call, leg, session, t)
        )

    def _session_due(self, call: Call, leg: Leg, session: LegSession, now: float) -> None:
        if leg.session is not session or call.state is not CallState.ANSWERED:
            return
        session.timer = None
        if session.we_refresh and not session.refresh_sent:
            if self._refresh(call, leg, now):
                session.refresh_sent = True
                at = session.next_deadline()
            else:  # an offer of the other side's is under way: try again shortly
                at = min(now + REFRESH_RETRY, session.started + session.interval)
                session.refresh_sent = at >= session.started + session.interval
            session.timer = self.timers.schedule(
                at, lambda t: self._session_due(call, leg, session, t)
            )
            return
        self.stats.calls_session_expired += 1
        self._release(call, Ending.SWITCH, now, cause="session-expired")

    def _refresh(self, call: Call, leg: Leg, now: float) -> bool:
        """Refresh `leg`'s session (RFC 4028 7.4): UPDATE without a body when the peer
        allows it, else a re-INVITE offering again the SDP it last had from us. False
        when it cannot go now (a re-INVITE is under way on the call)."""
        session = leg.session
        assert session is not None
        headers = [("Session-Expires", session.request_value()), ("Supported", "timer")]
        invite = not session.use_update and bool(leg.local_sdp)
        if invite and call.reinvite_pending:
            return False
        if invite:
            headers.append(("Content-Type", "application/sdp"))
        out = leg.build_request(
            "INVITE" if invite else "UPDATE",
            self._via(leg.address[0]),
            self._contact(leg.address[0], leg.secure),
            headers=headers,
            body=leg.local_sdp if invite else b"",
        )
        if invite:
            leg.invite_cseq = out.cseq
            call.reinvite_pending = True
        self.layer.send_request(out, leg.address, now, owner=Refresh(call, leg))
        return True

    def _refresh_response(
        self, refresh: Refresh, txn: ClientTransaction, resp: Response, now: float
    ) -> None:
        call, leg = refresh.call, refresh.leg
        status = resp.status
        invite = resp.cseq_method == "INVITE"
        if status < 200 or refresh.answered:
            if refresh.answered and invite and status < 300:
                self._send_ack(leg, b"", None)  # our ACK was lost: the 2xx came again
            return
        refresh.answered = True
        if invite:
            call.reinvite_pending = False
        if call.state is not CallState.ANSWERED or leg.session is None:
            if invite and status < 300:
                self._send_ack(leg, b"", None)
            return
        if status < 300:
            if invite:
                self._send_ack(leg, b"", None)
            previous = leg.session
            previous.cancel()
            leg.session = self._session_of_answer(resp, previous.interval, previous)
            self._session_start(call, leg, now)
        elif status in (408, 481):
            # RFC 4028 10: the dialog is gone on that side.
            self._refresh_failed(refresh, now)
        elif status in (405, 501) and not invite and leg.local_sdp:
            leg.session.use_update = False  # it does not take UPDATE: re-INVITE at once
            if not self._refresh(call, leg, now):
                session = leg.session
                session.cancel()
                session.refresh_sent = False  # the guard's time comes through _session_due
                session.timer = self.timers.schedule(
                    now + REFRESH_RETRY, lambda t: self._session_due(call, leg, session, t)
                )
        # Anything else (491, 5xx): the guard at the interval's end stands.

    def _refresh_failed(self, refresh: Refresh, now: float) -> None:
        call = refresh.call
        if refresh.leg.session is not None and call.state is CallState.ANSWERED:
            self.stats.calls_session_expired += 1
            self._release(call, Ending.SWITCH, now, cause="session-expired")

    def _session_retry(self, call: Call, resp: Response) -> bool:
        """A 422 from the callee: try the same target again with its Min-SE as our
        interval (RFC 4028 7.3), once."""
        value = resp.get("Min-SE")
        target = call.target
        if not self.session.enabled or value is None or target is None:
            return False
        floor = value.partition(";")[0].strip()
        asked = call.b_session_expires or self.session.session_expires
        if not floor.isascii() or not floor.isdigit() or not asked < int(floor) <= 86400:
            return False
        call.b_session_expires = int(floor)
        call.targets = (target, *call.targets)
        self._callee_failed(call, 422, "Session Interval Too Small", self._now)
        return True

    def _no_answer(self, call: Call, now: float) -> None:
        call.no_answer = None
        if call.state not in (CallState.CALLING, CallState.RINGING):
            return
        # The caller's side moves on now; the callee is cancelled in the background,
        # even if it has not sent a provisional response yet.
        self._abandon_attempt(call, now)
        self._callee_failed(call, 480, "No Answer", now)

    def _relay_to_caller(
        self,
        call: Call,
        resp: Response,
        *,
        contact: bool,
        extra: list[tuple[str, str]] | None = None,
    ) -> None:
        headers = [(n, v) for n, v in resp.headers if n in PASSED_ON_RESPONSE]
        if contact:
            headers.insert(0, ("Contact", self._contact(call.a.address[0], call.a.secure)))
        if extra:
            headers.extend(extra)
        if resp.body and resp.status < 300:
            call.a.local_sdp = resp.body
        setup = call.setup
        out = response_to(
            setup.request, resp.status, resp.reason,
            to_tag=call.a.local_tag, headers=headers, body=resp.body,
        )  # fmt: skip
        setup.respond(out, self._now)

    # --- cancel and release ------------------------------------------------------------------
    def _cancel_from_caller(self, txn: ServerTransaction, req: Request, now: float) -> None:
        invite = self.layer.find_invite(req)
        if invite is None:
            self._respond(txn, req, 481, "Call/Transaction Does Not Exist", tag=True)
            return
        call = invite.owner
        # The 200 to the CANCEL carries the same To tag as the 487 (RFC 3261 9.2).
        txn.owner = call
        self._respond(txn, req, 200, "OK", tag=True)
        if invite.answered or not isinstance(call, Call):
            return  # too late: the final response went out (RFC 3261 9.2)
        self.stats.calls_cancelled += 1
        self._abandon_setup(call, 487, "Request Terminated", "cancelled", now)

    def _release(self, call: Call, ending: Ending, now: float, *, cause: str = "") -> None:
        """BYE towards every confirmed leg that did not end the call itself."""
        if call.state in (CallState.RELEASING, CallState.ENDED):
            return
        call.state = CallState.RELEASING
        call.cause = cause or ending.value
        for leg in (call.a, call.b):
            if leg is None or not leg.confirmed:
                continue
            if (ending is Ending.CALLER and leg is call.a) or (
                ending is Ending.CALLEE and leg is call.b
            ):
                continue
            bye = leg.build_request("BYE", self._via(leg.address[0]), "")
            call.releasing.append(self.layer.send_request(bye, leg.address, now, owner=call))
        if not call.releasing:
            self._end(call, now)

    def _end(self, call: Call, now: float) -> None:
        if call.state is CallState.ENDED:
            return
        # A callee still being tried is cancelled, whoever ended the call (a CANCEL,
        # a reject from the controller while it rings, ...).
        self._abandon_attempt(call, now)
        if call.deadline is not None:
            call.deadline.cancel()
            call.deadline = None
        for leg in (call.a, call.b):
            if leg is not None and leg.session is not None:
                leg.session.cancel()
        call.state = CallState.ENDED
        call.ended_at = now
        self.calls.pop(call.id, None)
        if self.admission is not None:
            self.admission.ended(call.user, call.trunk)
        self.dialogs.pop((call.a.call_id, call.a.local_tag), None)
        if call.b is not None:
            self.dialogs.pop((call.b.call_id, call.b.local_tag), None)
        if call.answered_at is not None:
            self.stats.calls_completed += 1
            self.stats.duration.observe(now - call.answered_at)
        if self.control is not None:
            self.control.released(call, now)
        # Its transactions outlive the call by up to 64*T1, absorbing retransmissions;
        # they need it no more, and it need not stay in memory that long. (Abandoned
        # attempts still do: a late 1xx gets its CANCEL, a late 2xx its ACK and BYE.)
        for txn in (call.a_invite, call.b_invite, *call.releasing):
            if txn is not None:
                txn.owner = None
        call.a_invite = call.b_invite = None
        call.releasing = []

    # --- in-dialog requests -------------------------------------------------------------------
    def _in_dialog(
        self, call: Call, leg: Leg, txn: ServerTransaction, req: Request, now: float
    ) -> None:
        method = req.method
        if method != "CANCEL":
            if req.cseq <= leg.remote_cseq:
                self._respond(txn, req, 500, "CSeq Out of Order")
                return
            leg.remote_cseq = req.cseq
        if method == "BYE":
            self._respond(txn, req, 200, "OK")
            if call.state in (CallState.RELEASING, CallState.ENDED):
                return
            if call.state is not CallState.ANSWERED:
                if leg is call.b:
                    # The callee hung up an early dialog: treat as a failed route.
                    self._callee_failed(call, 480, "Temporarily Unavailable", now)
                else:
                    # The caller gave up before the answer (RFC 3261 15.1.2): as CANCEL.
                    self._abandon_setup(call, 487, "Request Terminated", "caller-bye", now)
                return
            self._release(call, Ending.CALLER if leg is call.a else Ending.CALLEE, now)
            return
        other = call.other(leg)
        if other is None or not other.confirmed or call.state is not CallState.ANSWERED:
            if method == "INVITE":
                self._respond(txn, req, 491, "Request Pending")
            else:
                self._respond(txn, req, 481, "Call/Transaction Does Not Exist")
            return
        renewed = None
        if method in ("INVITE", "UPDATE") and leg.session is not None:
            # A refresh of this leg's session, maybe renegotiated (RFC 4028 9).
            try:
                renewed = negotiate_as_uas(req, self.session)
            except SipParseError as e:
                self._respond(txn, req, e.status, e.reason)
                return
            except IntervalTooSmall as e:
                self._respond(
                    txn, req, 422, "Session Interval Too Small", [("Min-SE", str(e.min_se))]
                )
                return
        if method == "INVITE":
            if call.reinvite_pending:
                self._respond(txn, req, 491, "Request Pending")
                return
            call.reinvite_pending = True
        headers = [(n, v) for n, v in req.headers if n in PASSED_IN_DIALOG]
        if method in ("INVITE", "UPDATE") and other.session is not None:
            # It refreshes the other leg's session too: say so, with that leg's terms.
            headers += [("Session-Expires", other.session.request_value()), ("Supported", "timer")]
        out = other.build_request(
            method, self._via(other.address[0]), self._contact(other.address[0], other.secure),
            headers=headers, body=req.body,
        )  # fmt: skip
        if method == "INVITE":
            other.invite_cseq = out.cseq
        if req.body:
            other.local_sdp = req.body
        self.layer.send_request(
            out, other.address, now, owner=Relay(txn, call, other, renewed=renewed)
        )

    def _relay_response(
        self, relay: Relay, txn: ClientTransaction, resp: Response, now: float
    ) -> None:
        if resp.status == 100:
            return
        origin = relay.origin
        call = relay.call
        method = origin.request.method
        if method == "INVITE" and resp.status // 100 == 2 and origin.last_status >= 200:
            # A retransmitted 2xx of a re-INVITE already answered: ACK it again unless
            # the ACK waits for the caller's answer. (The origin, accepted, keeps only
            # the request's identity: nothing to build a response from.)
            if not relay.leg.ack_held:
                self._send_ack(relay.leg, b"", None)
            return
        headers = [(n, v) for n, v in resp.headers if n in PASSED_ON_RESPONSE]
        if method in ("INVITE", "UPDATE") and resp.status < 300:
            leg = call.other(relay.leg) or call.a
            headers.insert(0, ("Contact", self._contact(origin.address[0], leg.secure)))
        if resp.status >= 200:
            call.reinvite_pending = call.reinvite_pending and method != "INVITE"
        if method in ("INVITE", "UPDATE") and resp.status // 100 == 2:
            origin_leg = call.other(relay.leg)
            if origin_leg is not None and origin_leg.session is not None:
                origin_leg.session.cancel()
                origin_leg.session = relay.renewed or origin_leg.session
                headers += origin_leg.session.response_headers()
                self._session_start(call, origin_leg, now)
                if resp.body:
                    origin_leg.local_sdp = resp.body
            if relay.leg.session is not None:
                previous = relay.leg.session
                previous.cancel()
                relay.leg.session = self._session_of_answer(resp, previous.interval, previous)
                self._session_start(call, relay.leg, now)
        if method == "INVITE" and resp.status // 100 == 2:
            if origin.request.body:
                self._send_ack(relay.leg, b"", None)
            else:
                relay.leg.ack_held = True  # the ACK carries the answer: wait for it
        out = response_to(origin.request, resp.status, resp.reason, headers=headers, body=resp.body)
        origin.respond(out, now)

    def _send_ack(self, leg: Leg, body: bytes, content_type: str | None) -> None:
        """ACK a 2xx on `leg` (RFC 3261 13.2.2.4): a new branch, the INVITE's CSeq number."""
        leg.ack_held = False
        if body:
            leg.local_sdp = body
        headers = [("Content-Type", content_type)] if content_type and body else None
        ack = leg.build_request(
            "ACK", self._via(leg.address[0]), "", headers=headers, body=body, cseq=leg.invite_cseq
        )
        self._counted_send(leg.address, ack.to_bytes())

    # --- helpers ------------------------------------------------------------------------------
    def _respond(
        self,
        txn: ServerTransaction,
        req: Request,
        status: int,
        reason: str,
        headers: list[tuple[str, str]] | None = None,
        *,
        tag: bool = False,
    ) -> None:
        owner = txn.owner
        to_tag = ""
        if tag:
            to_tag = owner.a.local_tag if isinstance(owner, Call) else new_tag()
        txn.respond(response_to(req, status, reason, to_tag=to_tag, headers=headers), self._now)

    # --- timers -------------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def fire_timers(self, now: float) -> None:
        self._now = now
        self.timers.fire_due(now)

    def release_all(self, now: float) -> int:
        """Hang up every call (the switch is stopping): BYE to both legs of answered
        calls, 480 and CANCEL for calls in setup. Returns how many were live."""
        self._now = now
        calls = list(self.calls.values())
        for call in calls:
            self.release(call, now)
        return len(calls)

    def transport_failed(self, address: Address, now: float) -> None:
        self._now = now
        self.layer.transport_failed(address, now)

    @property
    def active_calls(self) -> int:
        return len(self.calls)


def _presented(caller: NameAddr, options: DestinationOptions) -> str:
    """The caller identity shown to a destination, as a name-addr for From and
    P-Asserted-Identity (RFC 3325): the caller's URI with the user part the service
    chose, and the display name it chose (none if it changed only the number)."""
    try:
        uri = parse_uri(caller.uri)
    except SipParseError:
        return ""
    display = caller.display
    if options.caller_id:
        uri.user, uri.password, display = options.caller_id, None, ""
    if options.caller_name:
        escaped = options.caller_name.replace("\\", "\\\\").replace('"', '\\"')
        display = f'"{escaped}"'
    return str(NameAddr(display, str(uri)))


def _diversion(dialled: str, target: str, options: DestinationOptions) -> list[tuple[str, str]]:
    """The header entries that say the call was diverted from `dialled` (the caller's
    Request-URI, with the diverting party's user part) to `target`: one Diversion
    (RFC 5806), or the two History-Info entries of a retargeting (RFC 7044 with the
    RFC 4458 cause)."""
    diverted = parse_uri(dialled)  # parsed when the call arrived: it is valid
    if options.diverted_from:
        diverted.user = options.diverted_from
    diverted.params, diverted.headers, diverted.password = {}, "", None
    if not options.history_info:
        return [("Diversion", f"<{diverted}>;reason={options.diversion};counter=1")]
    cause = HISTORY_CAUSES.get(options.diversion, 302)
    diverted.headers = f"Reason=SIP%3Bcause%3D{cause}"
    try:
        retargeted = parse_uri(target)
        retargeted.params["cause"] = str(cause)
        target = str(retargeted)
    except SipParseError:
        pass
    return [
        ("History-Info", f"<{diverted}>;index=1"),
        ("History-Info", f"<{target}>;index=1.1;mp=1"),
    ]


def _stamp_via(req: Request, source: Address) -> None:
    """Record where a request really came from in its top Via (RFC 3261 18.2.1 and
    RFC 3581): `received` when the address differs from sent-by, and the port in an
    empty `rport`, so that a phone behind NAT learns its public address."""
    headers = req.headers
    for i, (name, via) in enumerate(headers):
        if name != "Via":
            continue
        _, host, port = source
        rport = via.find(";rport")
        if rport >= 0 and via[rport + 6 : rport + 7] in ("", ";", " "):
            stamped = f"{via[:rport]};received={host};rport={port}{via[rport + 6 :]}"
        else:
            try:
                if parse_via(via).host == host:
                    return
            except SipParseError:
                return
            stamped = f"{via};received={host}"
        headers[i] = (name, stamped)
        return
