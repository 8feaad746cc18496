"""The messages of the call tracking link (CTL) and the peer links.

Each message is a tagged msgspec Struct, encoded as MessagePack in a frame with a 4-byte
length (`twinline.link.framing`); a decoder typed with the union of a link's messages
rejects anything else. Schema evolution (msgspec's rules): a new field gets a default,
a field never changes type, a removed field's tag is never reused; an incompatible
change bumps `PROTOCOL_VERSION`, which the handshake checks.

Handshake, both links (the acceptor speaks first, each side proves the cluster secret):

    acceptor  -> Challenge(version, nonce_a)
    connector -> Hello(version, name, incarnation, nonce_c,
                       proof=HMAC(secret, hello|nonce_a|...))
    acceptor  -> Welcome(proof=HMAC(secret, welcome|nonce_c|...), live)  (or closes)

Nothing but these three is accepted before the handshake completes.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated, Literal

import msgspec

PROTOCOL_VERSION = 1


class _Msg(msgspec.Struct, tag=True, frozen=True, kw_only=True, array_like=False):
    pass


# --- handshake ------------------------------------------------------------------------


class Challenge(_Msg, tag="challenge", frozen=True, kw_only=True):
    version: int
    nonce: bytes


class Hello(_Msg, tag="hello", frozen=True, kw_only=True):
    version: int
    name: str  # the application server's name from the configuration
    incarnation: int  # new at every start: tells a restart from a reconnect
    pid: int = 0  # for operators (`twinline status`)
    role: Literal["appserver"] = "appserver"
    nonce: bytes
    proof: bytes


class Welcome(_Msg, tag="welcome", frozen=True, kw_only=True):
    proof: bytes
    name: str  # the acceptor's name ("switch" or the peer server's)
    # CTL only: the calls for which the switch still counts on this server, and as what;
    # the server drops every other instance it holds (a restart or a fenced server).
    live: list[LiveInstance] = []


class LiveInstance(msgspec.Struct, frozen=True, array_like=True):
    call: str
    epoch: int
    role: Literal["primary", "standby"]


# --- both links ---------------------------------------------------------------------


class Heartbeat(_Msg, tag="hb", frozen=True, kw_only=True):
    sent_at: float  # the sender's wall clock, for the log when one arrives late
    active: int = 0  # calls the sender is primary for
    standby: int = 0  # calls the sender is standby for
    draining: bool = False


class Bye(_Msg, tag="bye", frozen=True, kw_only=True):
    """A clean close, with the reason logged by the other side."""

    reason: str


# --- CTL: switch -> application server --------------------------------------------------


class CallInfo(msgspec.Struct, frozen=True, kw_only=True):
    caller: str  # the caller's user part (number or user name)
    callee: str  # the dialled number or user name
    caller_uri: str = ""
    callee_uri: str = ""
    # The caller's P-Asserted-Identity (from a trunk only), Privacy, Diversion and
    # History-Info, when its INVITE had them; several values joined with ", ".
    headers: dict[str, str] = {}
    created: float = 0.0  # wall clock at the switch's INVITE
    user: str = ""  # the local user who authenticated the INVITE, or ""
    trunk: str = ""  # the trunk (by its configured name) the INVITE came from, or ""


class Offered(_Msg, tag="offered", frozen=True, kw_only=True):
    """A new call: sent to its primary and to its standby."""

    call: str
    epoch: int
    role: Literal["primary", "standby"]
    primary: str  # server names, so each instance knows its peer
    standby: str | None
    service: str  # chosen by the routing plan
    info: CallInfo


EventKind = Literal[
    "progress",  # the callee rings (status 180/183)
    "answered",
    "route_failed",  # every target of the last route failed: a decision point
    "released",  # the call is over, for either side's reason
]


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    """How one destination of a route ended: its final status and reason phrase."""

    destination: str
    status: int
    reason: str


class Event(_Msg, tag="event", frozen=True, kw_only=True, omit_defaults=True):
    call: str
    seq: int  # per call, from 1; the standby buffers past its last checkpoint's seq
    kind: EventKind
    at: float  # wall clock at the switch
    status: int = 0
    reason: str = ""
    cause: str = ""  # for "released": caller-bye, callee-bye, cancelled, max-duration, ...
    # The destination (as the route named it) that rang, answered or failed last.
    destination: str = ""
    # For "route_failed": every destination of the route, in the route's order.
    outcomes: list[Outcome] = []
    # For "released": seconds from the answer to the release, on the switch's clock
    # (0 for a call never answered).
    duration: float = 0.0


class Takeover(_Msg, tag="takeover", frozen=True, kw_only=True):
    """You are this call's primary now (its primary failed, or was handed over).

    Replay the events past your last checkpoint, re-send its pending commands with
    this epoch (the switch drops those it executed: `executed`), re-arm the timers,
    fill `standby` with a full checkpoint, then answer `Owned`."""

    call: str
    epoch: int
    standby: str | None
    executed: int  # the highest command sequence number the switch executed
    event_seq: int  # the last event the switch sent for the call
    # Every event the switch sent for the call: a standby given the call after some of
    # them (a new standby not yet filled) replays those it never saw.
    events: list[Event] = []


class Adopt(_Msg, tag="adopt", frozen=True, kw_only=True):
    """Both instances of this call were lost: become its primary from its database
    checkpoint (or from the offer, when it has none), replaying the switch's events
    past it, as a takeover does; then answer `Owned`."""

    call: str
    epoch: int
    standby: str | None
    executed: int
    offered: Offered  # how the call began
    events: list[Event] = []


class Protect(_Msg, tag="protect", frozen=True, kw_only=True):
    """Your call has a new standby (or none left): send it a full checkpoint."""

    call: str
    epoch: int
    standby: str | None


class Drop(_Msg, tag="drop", frozen=True, kw_only=True):
    """Let go of your instance of this call: it moved elsewhere on purpose."""

    call: str


# --- CTL: application server -> switch --------------------------------------------------


class Owned(_Msg, tag="owned", frozen=True, kw_only=True):
    """The takeover of a call is complete on its new primary."""

    call: str
    epoch: int


class Finished(_Msg, tag="finished", frozen=True, kw_only=True):
    """The call is over and its CDR is durable: the switch forgets it."""

    call: str
    epoch: int


class Leaving(_Msg, tag="leaving", frozen=True, kw_only=True):
    """This server is stopping: hand its calls over and place nothing more on it."""

    reason: str


DiversionReason = Literal[
    # RFC 5806 section 2 (the Diversion reasons); each maps to an RFC 4458 cause
    # for History-Info
    "unknown",
    "user-busy",
    "no-answer",
    "unavailable",
    "unconditional",
    "time-of-day",
    "do-not-disturb",
    "deflection",
    "follow-me",
    "out-of-service",
    "away",
]


# What a route option may hold, checked when a command is decoded, so that no value
# from a link can break the INVITE the switch builds from it (CR LF, quotes).
UserPart = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[A-Za-z0-9_.!~*'()&=+$,;?/%-]*$")]
DisplayName = Annotated[str, msgspec.Meta(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")]
Seconds = Annotated[float, msgspec.Meta(ge=0.0)]


class RouteOption(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """How the switch calls one destination of a `Route` (each field's default: as
    without options)."""

    # Seconds the destination may ring before the switch moves on (480 No Answer);
    # 0: `switch.no_answer_timeout`.
    ring_timeout: Annotated[float, msgspec.Meta(ge=0.0, le=86400.0)] = 0.0
    # The caller identity presented to the destination, in From and
    # P-Asserted-Identity: a user part (number) and a display name; "": the caller's.
    caller_id: UserPart = ""
    caller_name: DisplayName = ""
    # A diversion (RFC 5806 reason): the INVITE carries Diversion (or History-Info,
    # RFC 7044) naming `diverted_from` (default: the number dialled), and the caller
    # hears 181 Call Is Being Forwarded once per call.
    diversion: DiversionReason | None = None
    diverted_from: UserPart = ""
    history_info: bool = False


# A destination is a user name or number as it goes in a SIP URI's user part: one
# holding what could break the INVITE built from it (space, CR LF, <, >, ", @) is
# refused by the service API and, should one come over a link, by the switch.
BAD_DESTINATION = re.compile(r'[\x00-\x20\x7f<>"@]')


class Route(msgspec.Struct, tag="route", frozen=True, omit_defaults=True):
    destinations: list[str]  # user names or numbers, resolved by the switch's plan, in turn
    # options[i] applies to destinations[i]; missing entries mean no options. A list
    # beside the names (not a new type for them) keeps old switches able to decode it.
    options: list[RouteOption] = []
    # The longest the call may last once answered, in seconds, enforced by the switch
    # (BYE to both legs, cause "max-duration"); 0: `switch.max_call_duration`.
    max_duration: Seconds = 0.0


class Reject(msgspec.Struct, tag="reject", frozen=True):
    status: int
    reason: str


class Release(msgspec.Struct, tag="release", frozen=True):
    pass


Action = Route | Reject | Release


class Command(_Msg, tag="command", frozen=True, kw_only=True):
    call: str
    epoch: int  # executed only if it is the call's current epoch (invariant 1)
    seq: int  # per call, from 1; a repeated seq is not executed again
    action: Action


# --- peer links: primary <-> standby -------------------------------------------------------


class TimerSpec(msgspec.Struct, frozen=True, array_like=True):
    name: str
    due: float  # wall-clock deadline (invariant 6)


class CallRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the framework keeps about a call for its CDR, checkpointed with it."""

    primaries: list[str] = []  # servers that were primary, in order
    answered_at: float = 0.0
    status: int = 0  # the last failure status a service saw or gave (0: none)
    reason: str = ""
    # What the call cost (`ServiceCall.record_cost`), for its CDR; None: not charged.
    cost: Decimal | None = None
    currency: str = ""
    # The longest the call may last once answered (`ServiceCall.limit_duration`): every
    # route the call is given carries it. 0: no limit of the services'.
    max_duration: float = 0.0


class Checkpoint(_Msg, tag="checkpoint", frozen=True, kw_only=True):
    call: str
    epoch: int
    version: int  # per call, from 1
    event_seq: int  # the last switch event this state includes
    offered: Offered  # how the call began (the standby may have missed nothing, but a
    # new standby filled later has only this)
    service_state: bytes  # the service's state Struct, MessagePack
    timers: list[TimerSpec] = []
    pending: list[Command] = []  # commands not yet known executed by the switch
    commands_sent: int = 0  # the highest command seq issued so far
    # No longer filled: effects are recorded by key in the database (`Store.once_with`).
    # Kept so that checkpoints of the previous release still decode.
    writes_done: list[str] = []
    record: CallRecord = CallRecord()


class CheckpointAck(_Msg, tag="ack", frozen=True, kw_only=True):
    call: str
    version: int


class Forget(_Msg, tag="forget", frozen=True, kw_only=True):
    """The call ended at the primary: the standby can drop its copy."""

    call: str


CtlToServer = (
    Challenge | Welcome | Heartbeat | Bye | Offered | Event | Takeover | Adopt | Protect | Drop
)
CtlToSwitch = Hello | Heartbeat | Bye | Command | Owned | Finished | Leaving
PeerMessage = Challenge | Hello | Welcome | Heartbeat | Bye | Checkpoint | CheckpointAck | Forget
