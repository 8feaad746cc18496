"""The four SIP transaction state machines (RFC 3261 section 17, with RFC 6026).

Sans-IO: a `TransactionLayer` takes parsed messages and `now`, sends bytes through the
`send(address, data)` callable it was given, schedules its timers on a `TimerHeap`,
and tells its transaction user (the switch) what happened through the
`TransactionUser` methods. Each machine is a table ``(state, input) -> (effect, next
state)``; an input missing from a state's table is ignored, as section 17 says for
stray retransmissions.

Client INVITE (17.1.1, RFC 6026 7.2)::

                   |INVITE sent, Timer A (unreliable), Timer B
      1xx          v          Timer A: resend, A *= 2
    +-------- [Calling] ----------------+ Timer B / transport error: TU told
    |              |  300-699: ACK sent |
    v              |  to TU             v
  [Proceeding] ----+-------------> [Completed] --Timer D--> [Terminated]
    |  2xx: to TU                     ^ 300-699: ACK resent
    +--------------> [Accepted] --Timer M--> [Terminated]
                       2xx: to TU (the TU acknowledges each)

Server INVITE (17.2.1, RFC 6026 7.1)::

  [Proceeding] --1xx from TU: sent; INVITE again: last 1xx resent
    | 300-699 from TU: sent, Timer G (unreliable), H     | 2xx from TU: sent
    v                                                     v
  [Completed] --ACK--> [Confirmed] --Timer I-->  [Accepted] --Timer L--> [Terminated]
    Timer G: resend   Timer H: TU told (no ACK)     Timer G: resend 2xx until an ACK
                                                    (no ACK by Timer L: TU told)

The 2xx is retransmitted here until its ACK arrives rather than in the TU (RFC 3261
13.3.1.4 puts it in the UAS core); the bytes on the wire are the same, and one place
owns every retransmission. Non-INVITE machines (17.1.2, 17.2.2) follow the RFC's
figures 6 and 8 directly.

Server transactions are matched as RFC 3261 17.2.3 says: the top Via's branch, its
sent-by and the method (ACK matching INVITE; a CANCEL finds its INVITE the same way, 9.2).
The sent-by is part of the key because the branch is only unique per client: a second
client that picks (or copies) the same branch must get a transaction of its own, and a
CANCEL or ACK from elsewhere must not reach someone else's INVITE. Branches without the
magic cookie (RFC 2543 clients) are matched on Request-URI, To tag, From tag, Call-ID,
CSeq number and the top Via (its sent-by and branch; ``received`` and ``rport`` are ours).
Client transactions are matched on branch and CSeq method (17.1.3): the branch is ours.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from twinline.sip.message import Request, Response, readable_party
from twinline.timers import Timer, TimerHeap

# (transport, host, port): where a message came from or goes to. "tcp" means a stream;
# the adapter keeps the connection that belongs to the address.
Address = tuple[str, str, int]
Send = Callable[[Address, bytes], None]


class Failure(enum.Enum):
    TIMEOUT = "timeout"  # Timer B or F: no final response
    TRANSPORT = "transport"  # the message could not be sent
    NO_ACK = "no-ack"  # Timer H or L: our final response was never acknowledged


class Input(enum.Enum):
    REQUEST = enum.auto()  # a retransmission of the transaction's request
    ACK = enum.auto()
    R1XX = enum.auto()
    R2XX = enum.auto()
    R3XX_6XX = enum.auto()
    TU_1XX = enum.auto()
    TU_2XX = enum.auto()
    TU_3XX_6XX = enum.auto()
    TIMER_RETRANSMIT = enum.auto()  # A, E, G
    TIMER_TIMEOUT = enum.auto()  # B, F, H, and L without an ACK
    TIMER_END = enum.auto()  # D, I, J, K, L, M
    TRANSPORT_ERROR = enum.auto()


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    ACCEPTED = "accepted"
    TERMINATED = "terminated"


class TransactionUser(Protocol):
    def request_received(self, txn: ServerTransaction, req: Request, now: float) -> None: ...

    def ack_received(self, req: Request, source: Address, now: float) -> None:
        """An ACK for a 2xx: it has a transaction of its own (RFC 3261 17.1.1.3)."""

    def response_received(self, txn: ClientTransaction, resp: Response, now: float) -> None: ...

    def stray_response(self, resp: Response, source: Address, now: float) -> None:
        """A response that matches no transaction, e.g. a late 2xx retransmission."""

    def transaction_failed(self, txn: Transaction, failure: Failure, now: float) -> None: ...

    def transaction_ended(self, txn: Transaction) -> None:
        """`txn` is terminated and forgotten by the layer: let go of it, and of the
        messages it holds."""


def _kind(status: int) -> Input:
    if status < 200:
        return Input.R1XX
    if status < 300:
        return Input.R2XX
    return Input.R3XX_6XX


def _tu_kind(status: int) -> Input:
    if status < 200:
        return Input.TU_1XX
    if status < 300:
        return Input.TU_2XX
    return Input.TU_3XX_6XX


# An effect is a method of the machine's own class, taken from its body unbound; `Any`
# because each table holds its own subclass's methods.
Effect = Callable[[Any, float], None]
Table = dict[tuple[State, Input], tuple[Effect | None, State]]


class Transaction:
    """What the four machines share: identity, peer address, timers, the table walk."""

    __slots__ = (
        "_end",
        "_interval",
        "_retransmit",
        "_timeout",
        "address",
        "key",
        "layer",
        "owner",
        "request",
        "state",
    )
    TABLE: ClassVar[Table] = {}

    def __init__(self, layer: TransactionLayer, key: str, request: Request, address: Address):
        self.layer = layer
        self.key = key
        self.request = request
        self.address = address
        self.state = State.TRYING
        self.owner: object = None  # the transaction user's handle (a call, a leg)
        self._interval = layer.t1
        self._retransmit: Timer | None = None
        self._timeout: Timer | None = None
        self._end: Timer | None = None

    @property
    def reliable(self) -> bool:
        return self.address[0] != "udp"

    def handle(self, what: Input, now: float) -> None:
        entry = self.TABLE.get((self.state, what))
        if entry is None:
            return
        effect, next_state = entry
        self.state = next_state
        if effect is not None:
            effect(self, now)
        if next_state is State.TERMINATED:
            self._terminate()

    # timers -------------------------------------------------------------------------
    def _start_retransmit(self, now: float, interval: float) -> None:
        if self.reliable:
            return
        self._interval = interval
        self._cancel_retransmit()
        self._retransmit = self.layer.timers.schedule(now + interval, self._on_retransmit)

    def _cancel_retransmit(self) -> None:
        if self._retransmit is not None:
            self._retransmit.cancel()
            self._retransmit = None

    def _start_timeout(self, now: float, after: float) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
        self._timeout = self.layer.timers.schedule(now + after, self._on_timeout)

    def _start_end(self, now: float, after: float) -> None:
        self._cancel_retransmit()
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if after <= 0:
            self.handle(Input.TIMER_END, now)
            return
        self._end = self.layer.timers.schedule(now + after, self._on_end)

    def _on_retransmit(self, now: float) -> None:
        self._retransmit = None
        self.layer.retransmissions_sent += 1
        self.handle(Input.TIMER_RETRANSMIT, now)

    def _on_timeout(self, now: float) -> None:
        self._timeout = None
        self.handle(Input.TIMER_TIMEOUT, now)

    def _on_end(self, now: float) -> None:
        self._end = None
        self.handle(Input.TIMER_END, now)

    def _terminate(self) -> None:
        for timer in (self._retransmit, self._timeout, self._end):
            if timer is not None:
                timer.cancel()
        self._retransmit = self._timeout = self._end = None
        self.layer._forget(self)
        self.layer.tu.transaction_ended(self)


# --- client transactions -------------------------------------------------------------


class ClientTransaction(Transaction):
    __slots__ = ("_data", "last_response")

    def __init__(self, layer: TransactionLayer, key: str, request: Request, address: Address):
        super().__init__(layer, key, request, address)
        self._data = request.to_bytes()
        self.last_response: Response | None = None

    def start(self, now: float) -> None:
        raise NotImplementedError

    def receive(self, resp: Response, now: float) -> None:
        self.last_response = resp
        self.handle(_kind(resp.status), now)

    # effects
    def _resend(self, now: float) -> None:
        self.layer.send(self.address, self._data)

    def _deliver(self, now: float) -> None:
        assert self.last_response is not None
        self.layer.tu.response_received(self, self.last_response, now)

    def _fail_timeout(self, now: float) -> None:
        self.layer.tu.transaction_failed(self, Failure.TIMEOUT, now)

    def _fail_transport(self, now: float) -> None:
        self.layer.tu.transaction_failed(self, Failure.TRANSPORT, now)


class ClientInviteTransaction(ClientTransaction):
    __slots__ = ("_ack",)

    def start(self, now: float) -> None:
        self.state = State.CALLING
        self._ack: bytes | None = None
        self.layer.send(self.address, self._data)
        self._start_retransmit(now, self.layer.t1)  # Timer A
        self._start_timeout(now, 64 * self.layer.t1)  # Timer B

    def cancel_request(self) -> Request:
        """The CANCEL for this INVITE (RFC 3261 9.1): same Request-URI, Call-ID, From,
        To, CSeq number and Route, and a single Via equal to the INVITE's top one."""
        inv = self.request
        headers: list[tuple[str, str]] = []
        for n, v in inv.headers:
            if n == "Via":
                if not any(h[0] == "Via" for h in headers):
                    headers.append((n, v))
            elif n in ("From", "To", "Call-ID", "Route", "Max-Forwards"):
                headers.append((n, v))
        headers.insert(headers.index(("Call-ID", inv.call_id)) + 1, ("CSeq", f"{inv.cseq} CANCEL"))
        cancel = Request("CANCEL", inv.uri, headers)
        cancel.call_id = inv.call_id
        cancel.cseq = inv.cseq
        cancel.cseq_method = "CANCEL"
        cancel.branch = inv.branch
        cancel.from_tag = inv.from_tag
        cancel.to_tag = ""
        return cancel

    # effects
    def _retransmit_a(self, now: float) -> None:
        self.layer.send(self.address, self._data)
        self._start_retransmit(now, self._interval * 2)

    def _proceeding(self, now: float) -> None:
        self._cancel_retransmit()
        self._deliver(now)

    def _accepted(self, now: float) -> None:
        self._cancel_retransmit()
        self._start_end(now, 64 * self.layer.t1)  # Timer M
        self._deliver_accepted(now)

    def _deliver_accepted(self, now: float) -> None:
        """A 2xx to the TU. From here on the transaction only passes retransmitted 2xx
        up (the TU acknowledges them from its dialog): it lets go of the INVITE's
        headers, body and bytes, which tens of thousands of calls answered in the last
        64*T1 would otherwise hold."""
        self._deliver(now)
        self.last_response = None
        self._data = b""
        self.request = self.request.identity()

    def _completed(self, now: float) -> None:
        self._send_ack(now)
        self._start_end(now, 0 if self.reliable else 32.0)  # Timer D
        self._deliver(now)

    def _send_ack(self, now: float) -> None:
        """ACK for a non-2xx final response (RFC 3261 17.1.1.3), same branch."""
        if self._ack is None:
            inv = self.request
            resp = self.last_response
            assert resp is not None
            to = _ack_to(inv, resp)
            headers: list[tuple[str, str]] = []
            for n, v in inv.headers:
                if n == "Via":
                    if not any(h[0] == "Via" for h in headers):
                        headers.append((n, v))
                elif n in ("From", "Call-ID", "Route", "Max-Forwards"):
                    headers.append((n, v))
                elif n == "To":
                    headers.append((n, to))
            headers.append(("CSeq", f"{inv.cseq} ACK"))
            self._ack = Request("ACK", inv.uri, headers).to_bytes()
        self.layer.send(self.address, self._ack)

    TABLE: ClassVar[Table] = {
        (State.CALLING, Input.TIMER_RETRANSMIT): (_retransmit_a, State.CALLING),
        (State.CALLING, Input.TIMER_TIMEOUT): (ClientTransaction._fail_timeout, State.TERMINATED),
        (State.CALLING, Input.TRANSPORT_ERROR): (
            ClientTransaction._fail_transport,
            State.TERMINATED,
        ),
        (State.CALLING, Input.R1XX): (_proceeding, State.PROCEEDING),
        (State.CALLING, Input.R2XX): (_accepted, State.ACCEPTED),
        (State.CALLING, Input.R3XX_6XX): (_completed, State.COMPLETED),
        (State.PROCEEDING, Input.R1XX): (ClientTransaction._deliver, State.PROCEEDING),
        (State.PROCEEDING, Input.R2XX): (_accepted, State.ACCEPTED),
        (State.PROCEEDING, Input.R3XX_6XX): (_completed, State.COMPLETED),
        (State.PROCEEDING, Input.TRANSPORT_ERROR): (
            ClientTransaction._fail_transport,
            State.TERMINATED,
        ),
        (State.ACCEPTED, Input.R2XX): (_deliver_accepted, State.ACCEPTED),
        (State.ACCEPTED, Input.TIMER_END): (None, State.TERMINATED),
        (State.COMPLETED, Input.R3XX_6XX): (_send_ack, State.COMPLETED),
        (State.COMPLETED, Input.TIMER_END): (None, State.TERMINATED),
    }


def _ack_to(invite: Request, resp: Response) -> str:
    """The To of the ACK for a non-2xx: the response's (RFC 3261 17.1.1.3), or the
    INVITE's with the response's tag when the response's cannot be read."""
    return readable_party(resp.get("To"), invite.get("To") or "", resp.to_tag)


class ClientNonInviteTransaction(ClientTransaction):
    __slots__ = ()

    def start(self, now: float) -> None:
        self.state = State.TRYING
        self.layer.send(self.address, self._data)
        self._start_retransmit(now, self.layer.t1)  # Timer E
        self._start_timeout(now, 64 * self.layer.t1)  # Timer F

    def _retransmit_e(self, now: float) -> None:
        self.layer.send(self.address, self._data)
        interval = self._interval * 2 if self.state is State.TRYING else self.layer.t2
        self._start_retransmit(now, min(interval, self.layer.t2))

    def _provisional(self, now: float) -> None:
        self._deliver(now)

    def _final(self, now: float) -> None:
        self._start_end(now, 0 if self.reliable else self.layer.t4)  # Timer K
        self._deliver(now)
        # Completed only absorbs retransmitted responses: the request can go.
        self.last_response = None
        self._data = b""
        self.request = self.request.identity()

    TABLE: ClassVar[Table] = {
        (State.TRYING, Input.TIMER_RETRANSMIT): (_retransmit_e, State.TRYING),
        (State.TRYING, Input.TIMER_TIMEOUT): (ClientTransaction._fail_timeout, State.TERMINATED),
        (State.TRYING, Input.TRANSPORT_ERROR): (
            ClientTransaction._fail_transport,
            State.TERMINATED,
        ),
        (State.TRYING, Input.R1XX): (_provisional, State.PROCEEDING),
        (State.TRYING, Input.R2XX): (_final, State.COMPLETED),
        (State.TRYING, Input.R3XX_6XX): (_final, State.COMPLETED),
        (State.PROCEEDING, Input.TIMER_RETRANSMIT): (_retransmit_e, State.PROCEEDING),
        (State.PROCEEDING, Input.TIMER_TIMEOUT): (
            ClientTransaction._fail_timeout,
            State.TERMINATED,
        ),
        (State.PROCEEDING, Input.TRANSPORT_ERROR): (
            ClientTransaction._fail_transport,
            State.TERMINATED,
        ),
        (State.PROCEEDING, Input.R1XX): (_provisional, State.PROCEEDING),
        (State.PROCEEDING, Input.R2XX): (_final, State.COMPLETED),
        (State.PROCEEDING, Input.R3XX_6XX): (_final, State.COMPLETED),
        (State.COMPLETED, Input.TIMER_END): (None, State.TERMINATED),
    }


# --- server transactions -------------------------------------------------------------


class ServerTransaction(Transaction):
    __slots__ = ("_last", "last_status", "last_to_tag")

    def __init__(self, layer: TransactionLayer, key: str, request: Request, address: Address):
        super().__init__(layer, key, request, address)
        self._last: bytes | None = None
        self.last_status = 0
        self.last_to_tag = ""  # what an RFC 2543 ACK's To tag must match

    def respond(self, resp: Response, now: float) -> None:
        self._last = resp.to_bytes()
        self.last_status = resp.status
        self.last_to_tag = resp.to_tag
        self.handle(_tu_kind(resp.status), now)

    # effects
    def _send_last(self, now: float) -> None:
        if self._last is not None:
            self.layer.send(self.address, self._last)

    def _fail_no_ack(self, now: float) -> None:
        self.layer.tu.transaction_failed(self, Failure.NO_ACK, now)


class ServerInviteTransaction(ServerTransaction):
    __slots__ = ("acked",)

    def __init__(self, layer: TransactionLayer, key: str, request: Request, address: Address):
        super().__init__(layer, key, request, address)
        self.state = State.PROCEEDING
        self.acked = False

    @property
    def answered(self) -> bool:
        return self.state is not State.PROCEEDING

    def _completed(self, now: float) -> None:
        self._send_last(now)
        self._start_retransmit(now, self.layer.t1)  # Timer G
        self._start_timeout(now, 64 * self.layer.t1)  # Timer H

    def _accepted(self, now: float) -> None:
        self._send_last(now)
        self.layer._accepted(self)
        # Only the 2xx is retransmitted from here on (its bytes are kept), and the ACK
        # matched by Call-ID and CSeq: the INVITE's headers and body can go.
        self.request = self.request.identity()
        self._start_retransmit(now, self.layer.t1)  # 2xx retransmission (13.3.1.4)
        self._start_timeout(now, 64 * self.layer.t1)  # Timer L (and the TU's give-up time)

    def _retransmit_g(self, now: float) -> None:
        self._send_last(now)
        self._start_retransmit(now, min(self._interval * 2, self.layer.t2))

    def _confirmed(self, now: float) -> None:
        self._start_end(now, 0 if self.reliable else self.layer.t4)  # Timer I

    def _acked(self, now: float) -> None:
        self.acked = True
        self._cancel_retransmit()

    def _accepted_timeout(self, now: float) -> None:
        if not self.acked:
            self._fail_no_ack(now)

    TABLE: ClassVar[Table] = {
        (State.PROCEEDING, Input.REQUEST): (ServerTransaction._send_last, State.PROCEEDING),
        (State.PROCEEDING, Input.TU_1XX): (ServerTransaction._send_last, State.PROCEEDING),
        (State.PROCEEDING, Input.TU_2XX): (_accepted, State.ACCEPTED),
        (State.PROCEEDING, Input.TU_3XX_6XX): (_completed, State.COMPLETED),
        (State.COMPLETED, Input.REQUEST): (ServerTransaction._send_last, State.COMPLETED),
        (State.COMPLETED, Input.TIMER_RETRANSMIT): (_retransmit_g, State.COMPLETED),
        (State.COMPLETED, Input.TIMER_TIMEOUT): (ServerTransaction._fail_no_ack, State.TERMINATED),
        (State.COMPLETED, Input.ACK): (_confirmed, State.CONFIRMED),
        (State.CONFIRMED, Input.TIMER_END): (None, State.TERMINATED),
        (State.ACCEPTED, Input.REQUEST): (ServerTransaction._send_last, State.ACCEPTED),
        (State.ACCEPTED, Input.TIMER_RETRANSMIT): (_retransmit_g, State.ACCEPTED),
        (State.ACCEPTED, Input.ACK): (_acked, State.ACCEPTED),
        (State.ACCEPTED, Input.TIMER_TIMEOUT): (_accepted_timeout, State.TERMINATED),
    }


class ServerNonInviteTransaction(ServerTransaction):
    __slots__ = ()

    def _final(self, now: float) -> None:
        self._send_last(now)
        self._start_end(now, 0 if self.reliable else 64 * self.layer.t1)  # Timer J
        # Completed only answers retransmissions with the response's bytes, for 64*T1.
        self.request = self.request.identity()

    TABLE: ClassVar[Table] = {
        (State.TRYING, Input.TU_1XX): (ServerTransaction._send_last, State.PROCEEDING),
        (State.TRYING, Input.TU_2XX): (_final, State.COMPLETED),
        (State.TRYING, Input.TU_3XX_6XX): (_final, State.COMPLETED),
        (State.PROCEEDING, Input.REQUEST): (ServerTransaction._send_last, State.PROCEEDING),
        (State.PROCEEDING, Input.TU_1XX): (ServerTransaction._send_last, State.PROCEEDING),
        (State.PROCEEDING, Input.TU_2XX): (_final, State.COMPLETED),
        (State.PROCEEDING, Input.TU_3XX_6XX): (_final, State.COMPLETED),
        (State.COMPLETED, Input.REQUEST): (ServerTransaction._send_last, State.COMPLETED),
        (State.COMPLETED, Input.TIMER_END): (None, State.TERMINATED),
    }


# --- the layer -----------------------------------------------------------------------


class TransactionLayer:
    def __init__(
        self,
        tu: TransactionUser,
        send: Send,
        timers: TimerHeap,
        *,
        t1: float = 0.5,
        t2: float = 4.0,
        t4: float = 5.0,
    ) -> None:
        self.tu = tu
        self.send = send
        self.timers = timers
        self.t1, self.t2, self.t4 = t1, t2, t4
        self.server: dict[str, ServerTransaction] = {}
        self.client: dict[str, ClientTransaction] = {}
        # Accepted INVITE server transactions by (Call-ID, CSeq): their 2xx is ACKed
        # with a new branch, so the ACK is matched on the dialog's identity instead.
        self._accepted_by_dialog: dict[tuple[str, int], ServerInviteTransaction] = {}
        # For the metrics: requests and responses re-sent on a timer (A, E, G), and
        # requests received again for a transaction that exists.
        self.retransmissions_sent = 0
        self.retransmissions_received = 0

    @staticmethod
    def _server_key(req: Request, method: str, to_tag: str | None = None) -> str:
        """The key of the server transaction `req` belongs to (17.2.3), for `method`
        (INVITE for an ACK or a CANCEL). `to_tag` replaces the request's own in the RFC
        2543 key, for an ACK whose To tag is the one of our response."""
        branch = req.branch
        if branch.startswith("z9hG4bK"):
            return f"{branch}|{req.sent_by}|{method}"
        # RFC 2543 peers: no magic cookie, match on what identifies the request.
        tag = req.to_tag if to_tag is None else to_tag
        return (
            f"{req.uri}|{tag}|{req.from_tag}|{req.call_id}|{req.cseq}|{req.sent_by}"
            f"|{branch}|{method}"
        )

    def _invite_for_ack(self, ack: Request) -> ServerTransaction | None:
        txn = self.server.get(self._server_key(ack, "INVITE"))
        if txn is None and ack.to_tag and not ack.branch.startswith("z9hG4bK"):
            # RFC 2543: an initial INVITE had no To tag; its ACK carries the one of the
            # response it acknowledges.
            txn = self.server.get(self._server_key(ack, "INVITE", to_tag=""))
            if txn is not None and txn.last_to_tag != ack.to_tag:
                return None
        return txn

    # inbound ------------------------------------------------------------------------
    def receive_request(self, req: Request, source: Address, now: float) -> None:
        method = req.method
        if method == "ACK":
            txn = self._invite_for_ack(req)
            if isinstance(txn, ServerInviteTransaction) and txn.state in (
                State.COMPLETED,
                State.CONFIRMED,
            ):
                # ACK for our non-2xx: the transaction's own; in Confirmed a retransmitted
                # ACK is absorbed (17.2.1), never passed to the TU as a 2xx's ACK.
                txn.handle(Input.ACK, now)
                return
            accepted = self._accepted_by_dialog.get((req.call_id, req.cseq))
            if accepted is not None and accepted.last_to_tag == req.to_tag:
                # The 2xx's ACK is a transaction of its own (new branch, maybe another
                # path): it is matched on the dialog, the To tag of our 2xx included.
                accepted.handle(Input.ACK, now)
            self.tu.ack_received(req, source, now)
            return
        key = self._server_key(req, method)
        existing = self.server.get(key)
        if existing is not None:
            self.retransmissions_received += 1
            existing.handle(Input.REQUEST, now)
            return
        server: ServerTransaction
        if method == "INVITE":
            server = ServerInviteTransaction(self, key, req, source)
        else:
            server = ServerNonInviteTransaction(self, key, req, source)
        self.server[key] = server
        self.tu.request_received(server, req, now)

    def receive_response(self, resp: Response, source: Address, now: float) -> None:
        txn = self.client.get(f"{resp.branch}|{resp.cseq_method}")
        if txn is None:
            self.tu.stray_response(resp, source, now)
            return
        txn.receive(resp, now)

    # from the transaction user ---------------------------------------------------------
    def send_request(
        self, req: Request, address: Address, now: float, owner: object = None
    ) -> ClientTransaction:
        """Start a client transaction (any method but ACK) for a request that already
        carries its Via with a fresh branch."""
        key = f"{req.branch}|{req.method}"
        txn: ClientTransaction
        if req.method == "INVITE":
            txn = ClientInviteTransaction(self, key, req, address)
        else:
            txn = ClientNonInviteTransaction(self, key, req, address)
        txn.owner = owner
        self.client[key] = txn
        txn.start(now)
        return txn

    def respond_statelessly(self, txn: ServerTransaction, resp: Response) -> None:
        """Send a final response and forget the transaction, as a stateless server
        would (RFC 3261 16.11): nothing is retransmitted, a retransmitted request is
        answered afresh, an ACK finds no transaction and goes to the TU, which drops
        it. For refusals a flood causes (challenges, 403), which must cost no state."""
        self.send(txn.address, resp.to_bytes())
        self._forget(txn)

    def discard(self, txn: ServerTransaction) -> None:
        """Forget a server transaction the TU will not answer (a request dropped)."""
        self._forget(txn)

    def find_invite(self, cancel: Request) -> ServerInviteTransaction | None:
        """The INVITE server transaction a CANCEL refers to (RFC 3261 9.2)."""
        txn = self.server.get(self._server_key(cancel, "INVITE"))
        return txn if isinstance(txn, ServerInviteTransaction) else None

    def transport_failed(self, address: Address, now: float) -> None:
        """The adapter could not reach `address`: fail the client transactions bound there."""
        for txn in [t for t in self.client.values() if t.address == address]:
            txn.handle(Input.TRANSPORT_ERROR, now)

    # bookkeeping -----------------------------------------------------------------------
    def _accepted(self, txn: ServerInviteTransaction) -> None:
        self._accepted_by_dialog[(txn.request.call_id, txn.request.cseq)] = txn

    def _forget(self, txn: Transaction) -> None:
        if isinstance(txn, ServerTransaction):
            if self.server.get(txn.key) is txn:
                del self.server[txn.key]
            if isinstance(txn, ServerInviteTransaction):
                dialog_key = (txn.request.call_id, txn.request.cseq)
                if self._accepted_by_dialog.get(dialog_key) is txn:
                    del self._accepted_by_dialog[dialog_key]
        elif self.client.get(txn.key) is txn:
            del self.client[txn.key]

    def __len__(self) -> int:
        return len(self.server) + len(self.client)
