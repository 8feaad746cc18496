"""Test fixtures for the SIP cores: message builders, a stepped clock, in-memory harnesses.

Nothing here sleeps or opens a socket. A `Clock` steps time by hand and fires every
deadline of a `TimerHeap` at the instant it falls due (so a timer that reschedules
itself, as Timer A does, is seen at each of its own deadlines, not at the end of a
jump). `Switch` wires a `SwitchCore` with its `PlanControl` and `RoutingPlan` to a list
outbox, the way h11's tests wire a client and a server together (`ConnectionPair`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from twinline.config import Config, load_config_text
from twinline.sip.digest import DigestAuthenticator
from twinline.sip.errors import SipParseError
from twinline.sip.message import Limits, Request, Response, parse_message
from twinline.sip.transaction import (
    ClientTransaction,
    Failure,
    ServerTransaction,
    Transaction,
    TransactionLayer,
)
from twinline.switch.access import Admission, CallLimits, DigestGate, TrustedSources, secrets_of
from twinline.switch.b2bua import SwitchCore
from twinline.switch.control import PlanControl
from twinline.switch.flood import FloodGuard
from twinline.switch.registrar import Binding, LocationService, Registrar
from twinline.switch.routing import RoutingPlan
from twinline.switch.session_timer import SessionConfig
from twinline.timers import TimerHeap

Address = tuple[str, str, int]

CALLER = ("udp", "127.0.0.1", 5061)
CALLER_HOST = "127.0.0.1:5061"
SWITCH_HOST = "127.0.0.1"
SWITCH_PORT = 5060
# The route of CONFIG: numbers starting with 9 go to this PBX, the 9 stripped.
CALLEE = ("udp", "127.0.0.1", 5062)
CALLEE_HOST = "127.0.0.1:5062"

SDP_OFFER = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)
SDP_ANSWER = (
    b"v=0\r\n"
    b"o=bob 2808844564 2808844564 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 3456 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
)

CONFIG = """
[switch]
listen = ["udp:127.0.0.1:5060"]
max_calls = 3
retry_after = 7
no_answer_timeout = 60.0

[switch.timers]
t1 = 0.5
t2 = 4.0
t4 = 5.0

[[users]]
name = "alice"
password = "secret"

[[users]]
name = "bob"
password = "hunter2"

[[routes]]
prefix = "9"
target = "127.0.0.1:5062"
strip = 1
"""


# --- building messages ------------------------------------------------------------------


def request_bytes(
    method: str,
    uri: str,
    *,
    branch: str,
    call_id: str,
    cseq: int,
    from_: str = "<sip:alice@127.0.0.1>;tag=a1",
    to: str = "<sip:bob@127.0.0.1>",
    via_host: str = CALLER_HOST,
    transport: str = "UDP",
    contact: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    cseq_method: str | None = None,
    max_forwards: int | None = 70,
    extra: Iterable[str] = (),
) -> bytes:
    """One request as a phone would write it (Content-Length always present)."""
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/{transport} {via_host};branch={branch}",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [
        f"From: {from_}",
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
    ]
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += list(extra)
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def response_bytes(
    req: Request | bytes,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    contact: str | None = None,
    body: bytes = b"",
    content_type: str | None = None,
    extra: Iterable[str] = (),
) -> bytes:
    """A response to `req` as its UAS would write it: Via, From, To, Call-ID and CSeq
    copied (RFC 3261 8.2.6.2), `to_tag` added to a To that has none."""
    if isinstance(req, bytes):
        req = parse_request(req)
    lines = [f"SIP/2.0 {status} {reason}"]
    for name, value in req.headers:
        if name in ("Via", "From", "Call-ID", "CSeq"):
            lines.append(f"{name}: {value}")
        elif name == "To":
            tagged = to_tag is not None and not req.to_tag
            lines.append(f"To: {value};tag={to_tag}" if tagged else f"To: {value}")
    if contact is not None:
        lines.append(f"Contact: {contact}")
    lines += list(extra)
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request), data
    return msg


def parse_response(data: bytes) -> Response:
    msg = parse_message(data)
    assert isinstance(msg, Response), data
    return msg


def wire(start_line: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    """The exact bytes of a message, for comparing what was sent with what is expected."""
    lines = [start_line] + [f"{n}: {v}" for n, v in headers]
    lines += [f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


def param(value: str, name: str) -> str:
    """A header parameter's value (";name=value"), or ""."""
    for part in value.split(";")[1:]:
        key, _, val = part.partition("=")
        if key.strip().lower() == name:
            return val.strip()
    return ""


# --- time -----------------------------------------------------------------------------------


class Clock:
    """A hand-stepped clock over a `TimerHeap`: `advance_to` fires each due timer at its
    own deadline, in order, and leaves `now` at the target."""

    def __init__(self, timers: TimerHeap, fire: Callable[[float], object] | None = None) -> None:
        self.timers = timers
        self.now = 0.0
        self._fire = fire or timers.fire_due

    def advance_to(self, when: float) -> None:
        assert when >= self.now
        while True:
            deadline = self.timers.next_deadline()
            if deadline is None or deadline > when:
                break
            self.now = max(self.now, deadline)
            self._fire(self.now)
        self.now = when

    def advance(self, seconds: float) -> None:
        self.advance_to(self.now + seconds)


# --- the switch in memory ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One message the switch sent: where, the bytes, and the parsed message."""

    address: Address
    data: bytes
    msg: Request | Response | None  # None: the switch sent bytes our parser refuses

    @property
    def req(self) -> Request:
        assert isinstance(self.msg, Request), self.data
        return self.msg

    @property
    def resp(self) -> Response:
        assert isinstance(self.msg, Response), self.data
        return self.msg

    def summary(self) -> tuple[Address, str]:
        m = self.msg
        if m is None:
            return (self.address, "unparsable")
        if isinstance(m, Request):
            return (self.address, m.method)
        return (self.address, f"{m.status} {m.cseq_method}")


@dataclass
class Switch:
    """A `SwitchCore` with its routing plan, a list outbox and a stepped clock."""

    config_text: str = CONFIG
    config: Config = field(init=False)
    core: SwitchCore = field(init=False)
    location: LocationService = field(init=False)
    clock: Clock = field(init=False)
    outbox: list[tuple[Address, bytes]] = field(default_factory=list)
    # RFC 4028 session timers: off unless a test turns them on.
    session: SessionConfig | None = None
    # Set by `secure()`.
    authenticator: DigestAuthenticator | None = None
    guard: FloodGuard | None = None

    def __post_init__(self) -> None:
        self.config = load_config_text(self.config_text)
        sw = self.config.switch
        self.location = LocationService()
        self.core = SwitchCore(
            send=lambda address, data: self.outbox.append((address, data)),
            local={"udp": (SWITCH_HOST, SWITCH_PORT), "tcp": (SWITCH_HOST, SWITCH_PORT)},
            limits=_limits(self.config),
            t1=sw.timers.t1,
            t2=sw.timers.t2,
            t4=sw.timers.t4,
            max_calls=sw.max_calls,
            retry_after=sw.retry_after,
            no_answer_timeout=sw.no_answer_timeout,
            max_call_duration=sw.max_call_duration,
            session=self.session,
        )
        self.core.control = PlanControl(RoutingPlan(self.config, self.location), self.core)
        self.clock = Clock(self.core.timers, self.core.fire_timers)

    @property
    def now(self) -> float:
        return self.clock.now

    def receive(self, data: bytes, source: Address, *, stream: bool = False) -> list[Sent]:
        """Feed one message; returns what the switch sent in answer (and clears it)."""
        self.core.receive(data, source, self.clock.now, stream=stream)
        return self.take()

    def advance(self, seconds: float) -> list[Sent]:
        self.clock.advance(seconds)
        return self.take()

    def transport_failed(self, address: Address) -> list[Sent]:
        self.core.transport_failed(address, self.clock.now)
        return self.take()

    def take(self) -> list[Sent]:
        out = [Sent(a, d, _parse_or_none(d)) for a, d in self.outbox]
        self.outbox.clear()
        return out

    def secure(self) -> Switch:
        """Wire who-may-call-what and the flood guard from the configuration, as the
        switch process does (twinline.switch.server), with a fixed nonce key."""
        config = self.config
        access, flood = config.access, config.flood
        secrets = secrets_of(config)
        self.authenticator = DigestAuthenticator(
            config.switch.domain,
            b"sipfix nonce key, 32 bytes long!",
            nonce_lifetime=access.nonce_lifetime,
            algorithms=access.digest_algorithms,
        )
        trusted = TrustedSources.from_config(config)
        self.guard = FloodGuard(
            max_requests=flood.max_requests,
            window=flood.window,
            max_auth_failures=flood.max_auth_failures,
            max_user_auth_failures=flood.max_user_auth_failures,
            auth_window=flood.auth_window,
            ban_seconds=flood.ban_seconds,
            is_trusted=trusted.is_trusted,
        )
        self.core.guard = self.guard
        self.core.admission = Admission(
            config,
            DigestGate(self.authenticator, secrets, self.guard),
            trusted,
            CallLimits.from_config(config),
        )
        self.core.registrar = Registrar(
            config.switch.domain, secrets, self.authenticator, self.location,
            hide_unknown_users=True, failures=self.guard,
        )  # fmt: skip
        return self

    def register(self, user: str, contact: str, *, q: float = 1.0, at: float = 0.0) -> None:
        """Put a binding in the location service, as a successful REGISTER would."""
        self.location.bind(
            Binding(
                user=user,
                contact=contact,
                key=contact,
                expires_at=at + 3600,
                call_id=f"reg-{user}-{contact}",
                cseq=1,
                q=q,
                source=("udp", "192.0.2.1", 5060),
                registered_at=at,
            ),
            at,
        )


def _parse_or_none(data: bytes) -> Request | Response | None:
    try:
        return parse_message(data)
    except SipParseError:
        return None


def _limits(config: Config) -> Limits:
    lim = config.switch.limits
    return Limits(
        max_message_size=lim.max_message_size,
        max_headers=lim.max_headers,
        max_line_length=lim.max_line_length,
    )


def summaries(sent: list[Sent]) -> list[tuple[Address, str]]:
    return [s.summary() for s in sent]


# --- the transaction layer in memory ----------------------------------------------------------


class FakeTU:
    """A transaction user that records what the layer tells it, with the time.

    `on_request`, when set, is called for each new server transaction (to answer it
    on the spot, as a real TU would)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.events: list[tuple[object, ...]] = []
        self.ended: list[tuple[float, Transaction]] = []  # kept apart: every test would see it
        self.on_request: Callable[[ServerTransaction, Request, float], None] | None = None

    def request_received(self, txn: ServerTransaction, req: Request, now: float) -> None:
        self.events.append(("request", now, req.method, txn))
        if self.on_request is not None:
            self.on_request(txn, req, now)

    def ack_received(self, req: Request, source: Address, now: float) -> None:
        self.events.append(("ack", now, req.branch))

    def response_received(self, txn: ClientTransaction, resp: Response, now: float) -> None:
        self.events.append(("response", now, resp.status))

    def stray_response(self, resp: Response, source: Address, now: float) -> None:
        self.events.append(("stray", now, resp.status))

    def transaction_failed(self, txn: Transaction, failure: Failure, now: float) -> None:
        self.events.append(("failed", now, failure))

    def transaction_ended(self, txn: Transaction) -> None:
        self.ended.append((self.clock.now, txn))

    def kinds(self) -> list[tuple[object, ...]]:
        """The events without the transaction objects, for comparing with a literal."""
        return [e[:3] for e in self.events]


class Layer:
    """A `TransactionLayer` wired to a `FakeTU`, a list outbox and a stepped clock."""

    def __init__(self, *, t1: float = 0.5, t2: float = 4.0, t4: float = 5.0) -> None:
        self.timers = TimerHeap()
        self.clock = Clock(self.timers)
        self.tu = FakeTU(self.clock)
        # (time sent, address, bytes)
        self.sent: list[tuple[float, Address, bytes]] = []
        self.layer = TransactionLayer(
            self.tu,
            lambda address, data: self.sent.append((self.clock.now, address, data)),
            self.timers,
            t1=t1,
            t2=t2,
            t4=t4,
        )

    @property
    def now(self) -> float:
        return self.clock.now

    def advance_to(self, when: float) -> None:
        self.clock.advance_to(when)

    def request(self, data: bytes, source: Address) -> None:
        self.layer.receive_request(parse_request(data), source, self.clock.now)

    def response(self, data: bytes, source: Address) -> None:
        self.layer.receive_response(parse_response(data), source, self.clock.now)

    def send_times(self, data: bytes | None = None) -> list[float]:
        return [t for t, _, d in self.sent if data is None or d == data]

    def take(self) -> list[tuple[float, Address, bytes]]:
        out = list(self.sent)
        self.sent.clear()
        return out
