"""One end of a link (CTL or peer), sans-IO: bytes and `now` in, events and bytes out.

The same class serves both sides of a TCP connection: the *acceptor* (the switch on a
CTL, the listening server on a peer link) and the *connector*. Nothing here touches a
socket or logs, and time comes in as `now` (the one clock read is the injected
`wall_clock`, for the informative `Heartbeat.sent_at`); `twinline.link.aio` drives it.

States (a frame or call not shown for a state closes the link; every arrow to CLOSED
yields exactly one `Closed(reason)`, after which the endpoint yields nothing more)::

    acceptor   IDLE --start--> AWAIT_HELLO --Hello ok--> DECIDING --accept()--> ESTABLISHED
    connector  IDLE --start--> AWAIT_CHALLENGE --Challenge ok--> AWAIT_WELCOME --Welcome ok--+
                                                                                            |
               ESTABLISHED <----------------------------------------------------------------+
    any state  --bad frame | bad proof | wrong version | handshake timeout | refuse() |
                 no heartbeat | Bye received | close() | connection lost-->  CLOSED

Handshake (invariant 8: nothing but it is accepted until both sides proved the cluster
secret; a `Received` event never comes before `Established`)::

    acceptor  -> Challenge(version, nonce_a)
    connector -> Hello(version, name, incarnation, role, nonce_c, proof=hello_proof(...))
    acceptor     verifies, yields HelloReceived; the application calls accept() or refuse()
    acceptor  -> Welcome(proof=welcome_proof(...), name, live)     (or Bye(reason), close)
    connector    verifies the acceptor's proof: mutual authentication

Besides these, only a `Bye` is accepted before `Established`: it closes the link with
the peer's reason, so a refused server logs why ("refused: unknown server"). Every
close this side decides (a bad frame or proof included) sends a `Bye` with its reason.

Proofs are HMAC-SHA256 keyed with the cluster secret over a label and the fields below,
each variable-length field prefixed with its length (`lp x` = u32 len(x) | x) so no
byte can move from one field to the next; integers are fixed-width big-endian::

    hello_proof   = HMAC(secret, b"hello" | u32 version | lp nonce_a | lp utf8 name
                                 | u64 incarnation | lp utf8 role | lp nonce_c)
    welcome_proof = HMAC(secret, b"welcome" | u32 version | lp nonce_c | lp utf8 name_a
                                 | lp nonce_a)

The labels differ in their first byte, so a proof of one kind never passes for the
other; each side's fresh nonce makes a recorded proof useless on another connection.
This authenticates the two ends, not the bytes between them: across a network that is
not trusted, run the links inside TLS or a VPN.

After the handshake both sides send a `Heartbeat` every `heartbeat_interval` (with the
load set by `set_load`), and close the link when nothing at all has been received for
`dead_after` intervals (any bytes count: a large message arriving slowly is a sign of
life, not a missed heartbeat).
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import operator
import secrets
import struct
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from twinline.link.framing import (
    MAX_FRAME,
    FrameDecoder,
    FramingError,
    LinkError,
    MessageDecoder,
    encode_into,
    safe_reason,
)
from twinline.link.messages import (
    PROTOCOL_VERSION,
    Bye,
    Challenge,
    Heartbeat,
    Hello,
    LiveInstance,
    Welcome,
)

Role = Literal["acceptor", "connector"]

NONCE_SIZE = 16
MIN_NONCE = 16  # a peer's nonce shorter than this would make its proofs replayable
MAX_NONCE = 64
MAX_INCARNATION = 1 << 64

DEFAULT_HEARTBEAT_INTERVAL = 0.1
DEFAULT_DEAD_AFTER = 3
DEFAULT_HANDSHAKE_TIMEOUT = 5.0


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """Acceptor: a connector proved the secret; call `accept(live)` or `refuse(reason)`."""

    hello: Hello


@dataclass(frozen=True, slots=True)
class Established:
    """Both sides are authenticated: messages flow from here on.

    `message` is the peer's `Hello` on the acceptor, its `Welcome` on the connector.
    """

    peer_name: str
    message: Hello | Welcome


@dataclass(frozen=True, slots=True)
class Received:
    """A message from the peer (heartbeats included, for the load figures they carry)."""

    message: msgspec.Struct


@dataclass(frozen=True, slots=True)
class Closed:
    """The link is over; `reason` is a short printable phrase for the log."""

    reason: str


LinkEvent = HelloReceived | Established | Received | Closed


class LinkState(enum.Enum):
    IDLE = "idle"
    AWAIT_HELLO = "await-hello"  # acceptor
    DECIDING = "deciding"  # acceptor: the application decides on the Hello
    AWAIT_CHALLENGE = "await-challenge"  # connector
    AWAIT_WELCOME = "await-welcome"  # connector
    ESTABLISHED = "established"
    CLOSED = "closed"


# --- proofs -----------------------------------------------------------------------------

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _lp(field: bytes) -> bytes:
    return _U32.pack(len(field)) + field


def hello_proof(
    secret: bytes,
    *,
    version: int,
    acceptor_nonce: bytes,
    name: str,
    incarnation: int,
    role: str,
    connector_nonce: bytes,
) -> bytes:
    """The connector's proof of the secret (see the module docstring for the layout)."""
    data = b"".join(
        (
            b"hello",
            _U32.pack(version),
            _lp(acceptor_nonce),
            _lp(name.encode()),
            _U64.pack(incarnation),
            _lp(role.encode()),
            _lp(connector_nonce),
        )
    )
    return hmac.new(secret, data, hashlib.sha256).digest()


def welcome_proof(
    secret: bytes, *, version: int, connector_nonce: bytes, name: str, acceptor_nonce: bytes
) -> bytes:
    """The acceptor's proof of the secret; `name` is the acceptor's."""
    data = b"".join(
        (
            b"welcome",
            _U32.pack(version),
            _lp(connector_nonce),
            _lp(name.encode()),
            _lp(acceptor_nonce),
        )
    )
    return hmac.new(secret, data, hashlib.sha256).digest()


# --- decoders for each state ------------------------------------------------------------

_HANDSHAKE_TYPES = (Challenge, Hello, Welcome)

_HANDSHAKE_DECODERS = {
    LinkState.AWAIT_HELLO: MessageDecoder(Hello | Bye, "hello"),
    LinkState.DECIDING: MessageDecoder(Bye, "nothing before the welcome"),
    LinkState.AWAIT_CHALLENGE: MessageDecoder(Challenge | Bye, "challenge"),
    LinkState.AWAIT_WELCOME: MessageDecoder(Welcome | Bye, "welcome"),
}


def _tag(cls: type[msgspec.Struct]) -> str:
    return str(cls.__struct_config__.tag)


@functools.cache
def _established_decoder(receives: Any) -> MessageDecoder:
    """The decoder for `receives` past the handshake: its handshake messages removed,
    heartbeats and byes added (every link carries them)."""
    members = typing.get_args(receives) or (receives,)
    types = [t for t in members if t not in _HANDSHAKE_TYPES]
    types += [t for t in (Heartbeat, Bye) if t not in types]
    union = functools.reduce(operator.or_, types)
    return MessageDecoder(union, ", ".join(_tag(t) for t in types))


def _new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


# --- the endpoint -------------------------------------------------------------------------


class LinkEndpoint:
    """One connection's link protocol, either side.

    `receives` is the union of messages this side accepts (`CtlToSwitch`,
    `CtlToServer`, `PeerMessage`); its handshake members only count during the
    handshake. Times (`now`) are seconds on any monotonic clock, the same for every
    call; `wall_clock` only stamps `Heartbeat.sent_at`.
    """

    def __init__(
        self,
        role: Role,
        *,
        secret: bytes,
        name: str,
        incarnation: int,
        receives: Any,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        dead_after: int = DEFAULT_DEAD_AFTER,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_frame: int = MAX_FRAME,
        expect_peer: str | None = None,
        pid: int = 0,
        nonce_source: Callable[[], bytes] = _new_nonce,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if role not in ("acceptor", "connector"):
            raise ValueError(f"role must be 'acceptor' or 'connector', not {role!r}")
        if not secret:
            raise ValueError("the cluster secret is empty")
        if not 0 <= incarnation < MAX_INCARNATION:
            raise ValueError("incarnation must fit in 64 bits unsigned")
        if heartbeat_interval <= 0 or dead_after < 1 or handshake_timeout <= 0:
            raise ValueError("heartbeat_interval, dead_after and handshake_timeout must be > 0")
        self.role: Role = role
        self.name = name
        self.incarnation = incarnation
        self.pid = pid
        self.expect_peer = expect_peer
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.handshake_timeout = handshake_timeout
        self._secret = secret
        self._nonce_source = nonce_source
        self._wall_clock = wall_clock
        self._max_frame = max_frame
        self._established = _established_decoder(receives)
        self._frames = FrameDecoder(max_frame)
        self._out = bytearray()
        self._state = LinkState.IDLE
        self._now = 0.0
        self._handshake_deadline = 0.0
        self._nonce = b""  # ours
        self._peer_nonce = b""
        self._peer: Hello | Welcome | None = None
        self._close_reason: str | None = None
        self._dead_span = dead_after * heartbeat_interval
        self._last_rx = 0.0
        self._last_tick = 0.0
        self.stalls = 0  # timer ticks that came late because this process's loop stalled
        self._hb_base = 0.0
        self._hb_count = 0
        self._active = 0
        self._standby = 0
        self._draining = False

    # --- what the application reads ---

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def established(self) -> bool:
        return self._state is LinkState.ESTABLISHED

    @property
    def closed(self) -> bool:
        return self._state is LinkState.CLOSED

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def peer(self) -> Hello | Welcome | None:
        """The peer's Hello (acceptor) or Welcome (connector), once verified."""
        return self._peer

    @property
    def peer_name(self) -> str | None:
        return None if self._peer is None else self._peer.name

    @property
    def last_received(self) -> float:
        """When (on the `now` clock) the last bytes came from the peer."""
        return self._last_rx

    # --- inputs ---

    def start(self, now: float) -> None:
        """The connection is up: the acceptor sends its challenge, the handshake clock runs."""
        if self._state is not LinkState.IDLE:
            raise RuntimeError(f"start() in state {self._state.value}")
        self._now = now
        self._handshake_deadline = now + self.handshake_timeout
        if self.role == "acceptor":
            self._nonce = self._nonce_source()
            self._queue(Challenge(version=PROTOCOL_VERSION, nonce=self._nonce))
            self._state = LinkState.AWAIT_HELLO
        else:
            self._state = LinkState.AWAIT_CHALLENGE

    def receive_data(self, data: bytes, now: float) -> list[LinkEvent]:
        state = self._state
        if state is LinkState.CLOSED:
            return []
        if state is LinkState.IDLE:
            raise RuntimeError("receive_data() before start()")
        self._now = now
        if state is LinkState.ESTABLISHED:
            self._last_rx = now
        fault = ""
        try:
            frames = self._frames.feed(data)
        except FramingError as e:
            frames, fault = e.frames, e.reason
        events: list[LinkEvent] = []
        for frame in frames:
            if self._state is LinkState.ESTABLISHED:
                try:
                    msg = self._established.decode(frame)
                except LinkError as e:
                    events.append(self._close(e.reason))
                    return events
                if type(msg) is Bye:
                    events.append(self._close(f"peer closed: {msg.reason}", bye=False))
                    return events
                events.append(Received(msg))
            else:
                self._handshake(frame, events)
                if self._state is LinkState.CLOSED:
                    return events
        if fault:
            events.append(self._close(fault))
        return events

    def accept(
        self, live: Iterable[LiveInstance] = (), *, now: float | None = None
    ) -> list[LinkEvent]:
        """Acceptor, after `HelloReceived`: welcome the peer (`live`: CTL only).

        `now` defaults to the time of the last input (the Hello's arrival).
        """
        if self._state is LinkState.CLOSED:
            return []
        if self._state is not LinkState.DECIDING:
            raise RuntimeError(f"accept() in state {self._state.value}")
        hello = self._peer
        assert isinstance(hello, Hello)
        proof = welcome_proof(
            self._secret,
            version=PROTOCOL_VERSION,
            connector_nonce=hello.nonce,
            name=self.name,
            acceptor_nonce=self._nonce,
        )
        self._queue(Welcome(proof=proof, name=self.name, live=list(live)))
        self._establish(self._now if now is None else now)
        return [Established(hello.name, hello)]

    def refuse(self, reason: str) -> list[LinkEvent]:
        """Acceptor, after `HelloReceived`: turn the peer away, telling it why."""
        if self._state is LinkState.CLOSED:
            return []
        if self._state is not LinkState.DECIDING:
            raise RuntimeError(f"refuse() in state {self._state.value}")
        return [self._close(f"refused: {reason}")]

    def send(self, msg: msgspec.Struct) -> None:
        """Queues `msg` for `data_to_send()`.

        Dropped silently once the link is closed (the `Closed` event already told the
        application). A message over the frame limit raises `LinkError`; nothing is
        queued and the link stays up.
        """
        if self._state is LinkState.ESTABLISHED:
            encode_into(msg, self._out, self._max_frame)
        elif self._state is not LinkState.CLOSED:
            raise RuntimeError(f"send() before the link is established ({self._state.value})")

    def set_load(self, *, active: int, standby: int, draining: bool = False) -> None:
        """The figures the next heartbeats carry."""
        self._active = active
        self._standby = standby
        self._draining = draining

    def close(self, reason: str) -> list[LinkEvent]:
        """Closes the link, telling the peer why (a `Bye`)."""
        if self._state is LinkState.CLOSED:
            return []
        return [self._close(reason, bye=self._state is not LinkState.IDLE)]

    def connection_lost(self, reason: str = "connection lost") -> list[LinkEvent]:
        """The transport is gone (without a Bye, or the Closed would have come already)."""
        if self._state is LinkState.CLOSED:
            return []
        self._out.clear()
        return [self._close(reason, bye=False)]

    # --- time ---

    def next_deadline(self) -> float | None:
        state = self._state
        if state is LinkState.ESTABLISHED:
            return min(
                self._hb_base + self._hb_count * self.heartbeat_interval,
                self._last_rx + self._dead_span,
            )
        if state is LinkState.IDLE or state is LinkState.CLOSED:
            return None
        return self._handshake_deadline

    def handle_timer(self, now: float) -> list[LinkEvent]:
        state = self._state
        if state is LinkState.IDLE or state is LinkState.CLOSED:
            return []
        self._now = now
        if state is not LinkState.ESTABLISHED:
            if now >= self._handshake_deadline:
                return [self._close(f"handshake not completed in {self.handshake_timeout:g} s")]
            return []
        interval = self.heartbeat_interval
        late = now - self._last_tick
        self._last_tick = now
        if late > 2 * interval:
            # Our own loop stalled (ticks come at least every interval): the peer's
            # bytes may be waiting unread in the socket, so its silence proves nothing
            # yet. It gets a fresh interval to be heard; a peer that is really gone
            # is still declared dead, one tick later.
            self._last_rx = max(self._last_rx, now - interval)
            self.stalls += 1
        if now >= self._last_rx + self._dead_span:
            silent_ms = round((now - self._last_rx) * 1000)
            return [self._close(f"no heartbeat for {silent_ms} ms")]
        if now >= self._hb_base + self._hb_count * interval:
            self._queue(
                Heartbeat(
                    sent_at=self._wall_clock(),
                    active=self._active,
                    standby=self._standby,
                    draining=self._draining,
                )
            )
            # The next one on the grid after `now`: a stalled loop sends one, not a burst.
            self._hb_count = max(self._hb_count + 1, int((now - self._hb_base) / interval) + 1)
        return []

    # --- output ---

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = bytes(self._out)
        self._out.clear()
        return data

    # --- internals ---

    def _queue(self, msg: msgspec.Struct) -> None:
        encode_into(msg, self._out, self._max_frame)

    def _close(self, reason: str, *, bye: bool = True) -> Closed:
        reason = safe_reason(reason)
        if bye:
            self._queue(Bye(reason=reason))
        self._state = LinkState.CLOSED
        self._close_reason = reason
        return Closed(reason)

    def _establish(self, now: float) -> None:
        self._state = LinkState.ESTABLISHED
        self._last_rx = now
        self._last_tick = now
        self._hb_base = now
        self._hb_count = 1

    def _handshake(self, frame: bytes, events: list[LinkEvent]) -> None:
        """One frame before `Established`; appends the events it causes to `events`."""
        try:
            msg = _HANDSHAKE_DECODERS[self._state].decode(frame)
        except LinkError as e:
            events.append(self._close(e.reason))
            return
        if type(msg) is Bye:
            events.append(self._close(f"peer closed: {msg.reason}", bye=False))
        elif type(msg) is Hello:
            self._on_hello(msg, events)
        elif type(msg) is Challenge:
            self._on_challenge(msg, events)
        elif type(msg) is Welcome:
            self._on_welcome(msg, events)

    def _on_hello(self, hello: Hello, events: list[LinkEvent]) -> None:
        if hello.version != PROTOCOL_VERSION:
            reason = f"protocol version mismatch: peer {hello.version}, ours {PROTOCOL_VERSION}"
            events.append(self._close(reason))
            return
        if not MIN_NONCE <= len(hello.nonce) <= MAX_NONCE or hello.incarnation < 0:
            events.append(self._close(f"bad hello from {hello.name[:40]!r}"))
            return
        expected = hello_proof(
            self._secret,
            version=hello.version,
            acceptor_nonce=self._nonce,
            name=hello.name,
            incarnation=hello.incarnation,
            role=hello.role,
            connector_nonce=hello.nonce,
        )
        if not hmac.compare_digest(expected, hello.proof):
            events.append(self._close(f"authentication failed for {hello.name[:40]!r}"))
            return
        self._peer = hello
        self._state = LinkState.DECIDING
        events.append(HelloReceived(hello))

    def _on_challenge(self, challenge: Challenge, events: list[LinkEvent]) -> None:
        if challenge.version != PROTOCOL_VERSION:
            reason = f"protocol version mismatch: peer {challenge.version}, ours {PROTOCOL_VERSION}"
            events.append(self._close(reason))
            return
        if not MIN_NONCE <= len(challenge.nonce) <= MAX_NONCE:
            events.append(self._close(f"bad challenge: nonce of {len(challenge.nonce)} bytes"))
            return
        self._peer_nonce = challenge.nonce
        self._nonce = self._nonce_source()
        proof = hello_proof(
            self._secret,
            version=PROTOCOL_VERSION,
            acceptor_nonce=challenge.nonce,
            name=self.name,
            incarnation=self.incarnation,
            role="appserver",
            connector_nonce=self._nonce,
        )
        hello = Hello(
            version=PROTOCOL_VERSION,
            name=self.name,
            incarnation=self.incarnation,
            pid=self.pid,
            nonce=self._nonce,
            proof=proof,
        )
        self._queue(hello)
        self._state = LinkState.AWAIT_WELCOME

    def _on_welcome(self, welcome: Welcome, events: list[LinkEvent]) -> None:
        expected = welcome_proof(
            self._secret,
            version=PROTOCOL_VERSION,
            connector_nonce=self._nonce,
            name=welcome.name,
            acceptor_nonce=self._peer_nonce,
        )
        if not hmac.compare_digest(expected, welcome.proof):
            events.append(self._close("authentication failed: the welcome's proof is wrong"))
            return
        if self.expect_peer is not None and welcome.name != self.expect_peer:
            reason = f"unexpected peer {welcome.name[:40]!r}, expected {self.expect_peer!r}"
            events.append(self._close(reason))
            return
        self._peer = welcome
        self._establish(self._now)
        events.append(Established(welcome.name, welcome))
