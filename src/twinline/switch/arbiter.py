"""The arbiter: which application server owns each call, and what it may command.

Sans-IO. It is the switch's `CallControl` when application servers are configured:
a new call gets a primary and a standby instance (placement), every event of the call
goes to both, and a command is executed only when it comes from the call's primary with
the call's current epoch and a command sequence number not seen before (invariant 1).

Placement shares the load: the primary is the live server with the fewest primaries
relative to its capacity (ties go to the one that was given fewer calls so far, so
equal servers alternate); the standby is, among the other live servers, the one
holding the fewest standbys of this primary's calls, so that one server's failure
spreads its calls over all the survivors.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from twinline.config import AppServer, PlanEntry
from twinline.link.messages import (
    BAD_DESTINATION,
    Adopt,
    CallInfo,
    Command,
    Drop,
    Event,
    EventKind,
    Finished,
    LiveInstance,
    Offered,
    Outcome,
    Owned,
    Protect,
    Reject,
    Release,
    Route,
    RouteOption,
    Takeover,
)
from twinline.services.chain import chain_name
from twinline.sip.errors import SipParseError
from twinline.sip.message import parse_name_addr
from twinline.store.records import ActiveCall, Cdr, Role
from twinline.switch.access import service_headers
from twinline.switch.call import Call
from twinline.switch.routing import (
    NO_OPTIONS,
    DestinationOptions,
    NoRoute,
    RoutingPlan,
    Target,
)

Send = Callable[[str, msgspec.Struct], None]


class ServerState(enum.Enum):
    DOWN = "down"
    UP = "up"
    DRAINING = "draining"


class Recorder(Protocol):
    """The part of the store the arbiter writes (batched, off the call path)."""

    def placement(self, call_id: str, server: str, role: Role, epoch: int, at: float) -> None: ...

    def call_started(self, call: ActiveCall) -> None: ...

    def call_ended(self, call_id: str) -> None: ...

    def write_cdr(self, cdr: Cdr) -> None: ...

    def call_updated(
        self, call_id: str, primary: str, standby: str | None, epoch: int, state: str
    ) -> None: ...


class Switch(Protocol):
    """The commands the arbiter gives the switch's call core."""

    def route(
        self, call: Call, targets: list[Target], now: float, *, max_duration: float = 0.0
    ) -> None: ...

    def reject(self, call: Call, status: int, reason: str, now: float) -> None: ...

    def release(self, call: Call, now: float) -> None: ...


@dataclass(slots=True, eq=False)
class ServerEntry:
    name: str
    capacity: int
    state: ServerState = ServerState.DOWN
    incarnation: int = 0
    pid: int = 0
    primaries: set[str] = field(default_factory=set)
    standbys: set[str] = field(default_factory=set)
    # For this server's primaries: how many of their standbys each other server holds.
    standby_peers: Counter[str] = field(default_factory=Counter)
    placed: int = 0  # calls ever given to it as primary: the tie-breaker


@dataclass(slots=True, eq=False)
class Ownership:
    call: Call
    primary: str | None  # None: both instances are gone; the switch finishes the call
    standby: str | None  # None: the call runs unprotected
    service: str
    offered: Offered  # how the call was offered, re-sent to each new standby
    epoch: int = 1
    event_seq: int = 0
    executed: int = 0  # the highest command sequence number executed
    # The last route's destinations, and those of them the plan could not resolve.
    destinations: list[str] = field(default_factory=list)
    unroutable: list[Outcome] = field(default_factory=list)
    # Every event sent for the call: a server that takes it over or adopts it replays
    # those its checkpoint does not cover.
    events: tuple[Event, ...] = ()


@dataclass(slots=True, eq=False)
class Takeovers:
    """One server's failure (or handover) and the re-owning of its calls."""

    server: str
    reason: str
    started: float  # monotonic, when the switch noticed
    started_wall: float
    calls: int = 0
    pending: set[str] = field(default_factory=set)
    reprotected: int = 0
    unprotected: int = 0
    orphaned: int = 0  # lost both instances; adopted by a live server, or waiting for one
    adopted: int = 0
    finished: float | None = None
    finished_wall: float | None = None

    def as_dict(self) -> dict[str, object]:
        duration = (
            None if self.finished is None else round((self.finished - self.started) * 1000, 1)
        )
        return {
            "server": self.server,
            "reason": self.reason,
            "calls": self.calls,
            "pending": len(self.pending),
            "reprotected": self.reprotected,
            "unprotected": self.unprotected,
            "orphaned": self.orphaned,
            "adopted": self.adopted,
            "started_at": self.started_wall,
            "completed_at": self.finished_wall,
            "duration_ms": duration,
        }


@dataclass(slots=True)
class ArbiterStats:
    commands_executed: int = 0
    commands_refused_stale: int = 0  # wrong epoch or not from the primary
    commands_duplicate: int = 0
    commands_unknown_call: int = 0
    calls_unplaced: int = 0  # no live application server: 503
    takeovers: int = 0  # calls re-owned by their standby
    reprotections: int = 0  # calls given a new standby
    orphaned: int = 0  # calls whose primary and standby were both lost
    adopted: int = 0  # such calls given to a live server, from the database


def _uri_of(header: str) -> str:
    try:
        return parse_name_addr(header).uri
    except SipParseError:
        return ""


# The caller's headers a service may decide on (CallInfo.headers): identity and
# privacy (prepaid, screening), the diversions so far and the hops left (forwarding).
def _destination(call: Call) -> str:
    return call.target.destination if call.target is not None else ""


_NO_ROUTE_OPTION = RouteOption()


def _destination_options(option: RouteOption) -> DestinationOptions:
    if option == _NO_ROUTE_OPTION:
        return NO_OPTIONS
    return DestinationOptions(
        ring_timeout=option.ring_timeout,
        caller_id=option.caller_id,
        caller_name=option.caller_name,
        diversion=option.diversion or "",
        diverted_from=option.diverted_from,
        history_info=option.history_info,
    )


class ServicePlan:
    """Which service handles a call: longest number prefix, then longest caller prefix."""

    def __init__(self, entries: list[PlanEntry], default: str = "basic") -> None:
        self.entries = sorted(entries, key=lambda e: (-len(e.number), -len(e.caller)))
        self.default = default

    def resolve(self, dialled: str, caller: str) -> str:
        for entry in self.entries:
            if dialled.startswith(entry.number) and caller.startswith(entry.caller):
                return chain_name(entry.services)
        return self.default


class Arbiter:
    def __init__(
        self,
        *,
        switch: Switch,
        routing: RoutingPlan,
        services: ServicePlan,
        servers: list[AppServer],
        send: Send,
        wall: Callable[[], float],
        recorder: Recorder | None = None,
        redundancy: bool = True,
    ) -> None:
        self.switch = switch
        self.routing = routing
        self.services = services
        self.servers = {s.name: ServerEntry(s.name, s.capacity) for s in servers}
        self.send = send
        self.wall = wall
        self.recorder = recorder
        self.redundancy = redundancy
        self.owned: dict[str, Ownership] = {}
        self.stats = ArbiterStats()
        # Calls the switch released whose primary has not yet confirmed their CDR: a
        # failure now still needs a takeover, or the CDR would be lost.
        self.finishing: dict[str, Ownership] = {}
        self.runs: list[Takeovers] = []  # the latest first, a few kept for status
        self._pending_by_call: dict[str, Takeovers] = {}

    # --- the servers -------------------------------------------------------------------------
    def server_up(self, name: str, incarnation: int, pid: int) -> list[LiveInstance]:
        """A server completed its handshake; returns the instances it should keep.

        Call `reprotect` once the link is accepted: calls left without a standby get
        one, this server included."""
        entry = self.servers[name]
        entry.state = ServerState.UP
        entry.incarnation = incarnation
        entry.pid = pid
        live = []
        for own in self.owned.values():
            if own.primary == name:
                live.append(LiveInstance(own.call.id, own.epoch, "primary"))
            elif own.standby == name:
                live.append(LiveInstance(own.call.id, own.epoch, "standby"))
        return live

    def server_down(self, name: str, reason: str, now: float) -> Takeovers | None:
        """A server failed (link closed or silent): its calls' standbys take over, and
        the calls it was standby for get a new one."""
        entry = self.servers.get(name)
        if entry is None or entry.state is ServerState.DOWN:
            return None
        entry.state = ServerState.DOWN
        return self._move_off(entry, reason, now, planned=False)

    def drain(self, name: str, on: bool = True) -> None:
        """No new calls (as primary or standby) for a server; its live calls stay."""
        entry = self.servers[name]
        if entry.state is not ServerState.DOWN:
            entry.state = ServerState.DRAINING if on else ServerState.UP

    def handover(self, name: str, now: float) -> Takeovers:
        """Move a server's calls away on purpose: its primaries to their standbys, its
        standbys to other servers. The server is drained first and keeps its link."""
        entry = self.servers[name]
        if entry.state is ServerState.UP:
            entry.state = ServerState.DRAINING
        return self._move_off(entry, "handover", now, planned=True)

    def _move_off(self, entry: ServerEntry, reason: str, now: float, *, planned: bool) -> Takeovers:
        run = Takeovers(entry.name, reason, now, self.wall())
        for own in [o for o in self.finishing.values() if o.primary == entry.name]:
            self._finish_elsewhere(own, run, planned=planned)
        for own in [o for o in self.owned.values() if entry.name in (o.primary, o.standby)]:
            if own.primary == entry.name:
                run.calls += 1
                self._take_over(own, run, planned=planned)
            else:
                self._replace_standby(own, run, drop=planned)
        self.runs.insert(0, run)
        del self.runs[10:]
        if not run.pending:
            run.finished, run.finished_wall = now, run.started_wall
        return run

    def _take_over(self, own: Ownership, run: Takeovers, *, planned: bool) -> None:
        old = own.primary
        assert old is not None
        new = own.standby
        if new is None or self.servers[new].state is ServerState.DOWN:
            # Nobody holds this call any more: a live server adopts it from the
            # database, or it waits for one to join (the switch keeps it up meanwhile,
            # within the maximum duration its service gave it).
            self._unassign(own)
            own.primary = own.standby = None
            run.orphaned += 1
            self.stats.orphaned += 1
            if planned:
                self.send(old, Drop(call=own.call.id))  # it may go: the switch has the call
            self._adopt(own, run)
            return
        self._unassign(own)
        own.epoch += 1
        standby = self._pick_standby(self.servers[new])
        self._assign(own, new, standby.name if standby else None)
        self.stats.takeovers += 1
        run.pending.add(own.call.id)
        self._pending_by_call[own.call.id] = run
        self.send(new, self._move_message(own, adopt=False))
        if planned:
            self.send(old, Drop(call=own.call.id))
        if standby is not None:
            self._offer_standby(own)
            run.reprotected += 1
        else:
            run.unprotected += 1
        self._record(own)

    def _adopt(self, own: Ownership, run: Takeovers) -> bool:
        """Give a call that lost both instances to the least loaded live server."""
        placed = self.place()
        if placed is None:
            return False  # none live: `adopt_orphans` gives it to the next that joins
        primary, standby = placed
        own.epoch += 1
        self._assign(own, primary.name, standby.name if standby else None)
        self.stats.adopted += 1
        run.adopted += 1
        run.pending.add(own.call.id)
        self._pending_by_call[own.call.id] = run
        self.send(primary.name, self._move_message(own, adopt=True))
        if standby is not None:
            self._offer_standby(own)
        self._record(own)
        return True

    def adopt_orphans(self, reason: str, now: float) -> Takeovers | None:
        """Calls that lost both instances while no server was live go to the live ones
        now (a server joined). Returns the run, or None when there were none."""
        orphans = [o for o in self.owned.values() if o.primary is None]
        if not orphans:
            return None
        run = Takeovers("-", reason, now, self.wall())
        for own in orphans:
            if not self._adopt(own, run):
                break
        self.runs.insert(0, run)
        del self.runs[10:]
        if not run.pending:
            run.finished, run.finished_wall = now, run.started_wall
        return run

    def _finish_elsewhere(self, own: Ownership, run: Takeovers, *, planned: bool) -> None:
        """A released call's primary went before confirming its CDR: the standby, which
        holds the release event, takes over just to finish it."""
        old, new = own.primary, own.standby
        adopt = new is None or self.servers[new].state is ServerState.DOWN
        if adopt:
            # The release event is in the switch's log: a live server adopts the call
            # just to finish it (its CDR, its last effects); with none, the switch
            # writes the CDR from what it knows.
            run.orphaned += 1
            self.stats.orphaned += 1
            placed = self.place()
            if placed is None:
                del self.finishing[own.call.id]
                if self.recorder is not None:
                    self.recorder.write_cdr(self._switch_cdr(own))
                return
            new = placed[0].name
            run.adopted += 1
            self.stats.adopted += 1
        else:
            run.calls += 1
            self.stats.takeovers += 1
        assert new is not None
        own.epoch += 1
        own.primary, own.standby = new, None
        self.send(new, self._move_message(own, adopt=adopt))
        if planned and old is not None:
            self.send(old, Drop(call=own.call.id))

    def _move_message(self, own: Ownership, *, adopt: bool) -> Adopt | Takeover:
        """What makes the call's new primary take it on: a takeover of its standby
        instance, or an adoption from the database and the switch's events."""
        if adopt:
            return Adopt(
                call=own.call.id, epoch=own.epoch, standby=own.standby, executed=own.executed,
                offered=own.offered, events=list(own.events),
            )  # fmt: skip
        return Takeover(
            call=own.call.id, epoch=own.epoch, standby=own.standby, executed=own.executed,
            event_seq=own.event_seq, events=list(own.events),
        )  # fmt: skip

    def finished(self, server: str, msg: Finished) -> None:
        own = self.finishing.get(msg.call)
        if own is not None and own.primary == server:
            del self.finishing[msg.call]
            # The primary's Forget normally reaches the standby first; this covers a
            # peer link that was down or silent when the call ended.
            if own.standby is not None and self.servers[own.standby].state is not ServerState.DOWN:
                self.send(own.standby, Drop(call=msg.call))

    def _replace_standby(self, own: Ownership, run: Takeovers | None, *, drop: bool) -> None:
        old = own.standby
        primary = own.primary
        assert primary is not None
        self._unassign(own)
        standby = self._pick_standby(self.servers[primary])
        self._assign(own, primary, standby.name if standby else None)
        if drop and old is not None:
            self.send(old, Drop(call=own.call.id))
        self.send(primary, Protect(call=own.call.id, epoch=own.epoch, standby=own.standby))
        if standby is not None:
            self._offer_standby(own)
            self.stats.reprotections += 1
            if run is not None:
                run.reprotected += 1
        elif run is not None:
            run.unprotected += 1
        self._record(own)

    def reprotect(self) -> int:
        """Give every unprotected call a standby, if a live server can take it."""
        count = 0
        for own in list(self.owned.values()):
            if own.standby is None and own.primary is not None:
                primary = self.servers[own.primary]
                if primary.state is not ServerState.DOWN and self._pick_standby(primary):
                    self._replace_standby(own, None, drop=False)
                    count += 1
        return count

    def owned_by(self, server: str, msg: Owned, now: float) -> Takeovers | None:
        """A new primary finished taking a call over; returns the run if it completed."""
        run = self._pending_by_call.pop(msg.call, None)
        if run is None:
            return None
        run.pending.discard(msg.call)
        if run.pending or run.finished is not None:
            return None
        run.finished, run.finished_wall = now, self.wall()
        return run

    # --- bookkeeping of roles -------------------------------------------------------------
    def _assign(self, own: Ownership, primary: str, standby: str | None) -> None:
        own.primary, own.standby = primary, standby
        p = self.servers[primary]
        p.primaries.add(own.call.id)
        if standby is not None:
            self.servers[standby].standbys.add(own.call.id)
            p.standby_peers[standby] += 1

    def _unassign(self, own: Ownership) -> None:
        if own.primary is not None:
            p = self.servers[own.primary]
            p.primaries.discard(own.call.id)
            if own.standby is not None:
                p.standby_peers[own.standby] -= 1
        if own.standby is not None:
            self.servers[own.standby].standbys.discard(own.call.id)

    def _pick_standby(self, primary: ServerEntry) -> ServerEntry | None:
        if not self.redundancy:
            return None
        others = [
            s for s in self.servers.values() if s is not primary and s.state is ServerState.UP
        ]
        if not others:
            return None
        return min(
            others,
            key=lambda s: (primary.standby_peers[s.name], len(s.standbys) / s.capacity, s.name),
        )

    def _offer_standby(self, own: Ownership) -> None:
        assert own.standby is not None
        msg = msgspec.structs.replace(
            own.offered, epoch=own.epoch, role="standby", primary=own.primary, standby=own.standby
        )
        self.send(own.standby, msg)

    def _record(self, own: Ownership) -> None:
        if self.recorder is None or own.primary is None:
            return
        wall = self.wall()
        self.recorder.placement(own.call.id, own.primary, "primary", own.epoch, wall)
        if own.standby is not None:
            self.recorder.placement(own.call.id, own.standby, "standby", own.epoch, wall)
        self.recorder.call_updated(own.call.id, own.primary, own.standby, own.epoch, "moved")

    def place(self) -> tuple[ServerEntry, ServerEntry | None] | None:
        up = [s for s in self.servers.values() if s.state is ServerState.UP]
        if not up:
            return None
        primary = min(up, key=lambda s: (len(s.primaries) / s.capacity, s.placed, s.name))
        return primary, self._pick_standby(primary)

    # --- CallControl ---------------------------------------------------------------------------
    def offered(self, call: Call, now: float) -> None:
        placed = self.place()
        if placed is None:
            self.stats.calls_unplaced += 1
            self.switch.reject(call, 503, "Service Unavailable", now)
            return
        primary, standby = placed
        service = self.services.resolve(call.dialled, call.caller)
        wall = self.wall()
        req = call.setup.request
        info = CallInfo(
            caller=call.caller,
            callee=call.dialled,
            caller_uri=_uri_of(req.get("From") or ""),
            callee_uri=req.uri,
            headers=service_headers(req, trusted=call.trusted),
            created=wall,
            user=call.user,
            trunk=call.trunk,
        )
        offered = Offered(
            call=call.id,
            epoch=1,
            role="primary",
            primary=primary.name,
            standby=standby.name if standby else None,
            service=service,
            info=info,
        )
        own = Ownership(call, None, None, service, offered)
        self.owned[call.id] = own
        self._assign(own, primary.name, standby.name if standby else None)
        primary.placed += 1
        self.send(primary.name, offered)
        if standby is not None:
            self.send(standby.name, msgspec.structs.replace(offered, role="standby"))
        if self.recorder is not None:
            self.recorder.call_started(
                ActiveCall(
                    call_id=call.id, caller=call.caller, callee=call.dialled, service=service,
                    primary_server=primary.name, standby_server=own.standby, epoch=own.epoch,
                    state="setup", started_at=wall, updated_at=wall,
                )
            )  # fmt: skip
            self.recorder.placement(call.id, primary.name, "primary", own.epoch, wall)
            if own.standby is not None:
                self.recorder.placement(call.id, own.standby, "standby", own.epoch, wall)

    def progress(self, call: Call, status: int, now: float) -> None:
        own = self.owned.get(call.id)
        if own is not None:
            self._send_event(own, "progress", status=status, destination=_destination(call))

    def answered(self, call: Call, now: float) -> None:
        own = self.owned.get(call.id)
        if own is not None:
            self._send_event(own, "answered", status=200, destination=_destination(call))

    def route_failed(self, call: Call, status: int, reason: str, now: float) -> None:
        own = self.owned.get(call.id)
        if own is None:
            return
        # Per destination, in the route's order: how the switch's attempts ended (the
        # last of its contacts, for a user), or why the plan could not resolve it.
        ended = {o.destination: o for o in own.unroutable}
        ended.update((d, Outcome(d, s, r)) for d, s, r in call.outcomes)
        outcomes = [ended[d] for d in dict.fromkeys(own.destinations) if d in ended]
        self._send_event(
            own, "route_failed", status=status, reason=reason,
            destination=_destination(call), outcomes=outcomes,
        )  # fmt: skip

    def released(self, call: Call, now: float) -> None:
        own = self.owned.pop(call.id, None)
        if own is None:
            return
        duration = 0.0
        if call.answered_at is not None and call.ended_at is not None:
            duration = round(call.ended_at - call.answered_at, 3)
        self._send_event(own, "released", cause=call.cause, duration=duration)
        self._unassign(own)
        if own.primary is not None:
            self.finishing[call.id] = own
        elif self.recorder is not None:
            # Both instances were lost: the switch writes what it knows.
            self.recorder.write_cdr(self._switch_cdr(own))
        run = self._pending_by_call.pop(call.id, None)
        if run is not None:
            run.pending.discard(call.id)
            if not run.pending and run.finished is None:
                # The run's last call ended before its new primary said Owned (a
                # replayed offer rejected at once): no Owned will complete the run.
                run.finished, run.finished_wall = now, self.wall()
        if self.recorder is not None:
            self.recorder.call_ended(call.id)

    def _switch_cdr(self, own: Ownership) -> Cdr:
        call = own.call
        now = self.wall()
        offered = own.offered.info.created
        answered = None
        if call.answered_at is not None:
            # The call's own times are on the switch's monotonic clock: convert.
            answered = offered + (call.answered_at - call.created)
        return Cdr(
            call_id=call.id, caller=call.caller, callee=call.dialled, service=own.service,
            started_at=offered, answered_at=answered, ended_at=now,
            disposition="answered" if answered else "failed", status=200 if answered else 0,
            cause=f"{call.cause} (instances lost)", primaries=(own.offered.primary,),
            standby_servers=(own.offered.standby,) if own.offered.standby else (),
            epoch=own.epoch,
        )  # fmt: skip

    def _send_event(
        self,
        own: Ownership,
        kind: EventKind,
        *,
        status: int = 0,
        reason: str = "",
        cause: str = "",
        destination: str = "",
        outcomes: list[Outcome] | None = None,
        duration: float = 0.0,
    ) -> None:
        own.event_seq += 1
        # Only what is set goes on the wire (Event omits defaults, but recognises a
        # default by identity: a computed 0.0 would be sent).
        extra: dict[str, Any] = {}
        if destination:
            extra["destination"] = destination
        if outcomes:
            extra["outcomes"] = outcomes
        if duration:
            extra["duration"] = duration
        event = Event(
            call=own.call.id,
            seq=own.event_seq,
            kind=kind,
            at=self.wall(),
            status=status,
            reason=reason,
            cause=cause,
            **extra,
        )
        own.events = (*own.events, event)
        if own.primary is not None:
            self.send(own.primary, event)
        if own.standby is not None:
            self.send(own.standby, event)

    # --- commands from the primaries ------------------------------------------------------------
    def command(self, server: str, cmd: Command, now: float) -> None:
        own = self.owned.get(cmd.call)
        if own is None:
            self.stats.commands_unknown_call += 1  # the call ended meanwhile
            return
        if server != own.primary or cmd.epoch != own.epoch:
            self.stats.commands_refused_stale += 1  # a deposed primary: fenced out
            return
        if cmd.seq <= own.executed:
            self.stats.commands_duplicate += 1  # re-sent after a takeover: done already
            return
        own.executed = cmd.seq
        self.stats.commands_executed += 1
        action = cmd.action
        call = own.call
        if isinstance(action, Route):
            self._route(own, action, now)
        elif isinstance(action, Reject):
            self.switch.reject(call, action.status, action.reason, now)
        elif isinstance(action, Release):
            self.switch.release(call, now)

    def _route(self, own: Ownership, route: Route, now: float) -> None:
        targets: list[Target] = []
        unroutable: list[Outcome] = []
        options = route.options
        for i, destination in enumerate(route.destinations):
            if not destination or BAD_DESTINATION.search(destination):
                unroutable.append(Outcome(destination, 404, "Not Found"))
                continue
            how = _destination_options(options[i]) if i < len(options) else NO_OPTIONS
            try:
                targets.extend(self.routing.resolve(destination, now, how))
            except NoRoute as e:
                unroutable.append(Outcome(destination, e.status, e.reason))
        own.destinations, own.unroutable = route.destinations, unroutable
        if targets:
            self.switch.route(own.call, targets, now, max_duration=route.max_duration)
            return
        first = unroutable[0] if unroutable else Outcome("", 404, "Not Found")
        self._send_event(
            own, "route_failed", status=first.status, reason=first.reason,
            destination=first.destination, outcomes=unroutable,
        )  # fmt: skip

    # --- what operators see --------------------------------------------------------------------
    def unprotected(self) -> int:
        return sum(1 for o in self.owned.values() if o.standby is None and o.primary is not None)

    def orphans(self) -> int:
        """Calls no server holds (both instances lost, no live server to adopt them)."""
        return sum(1 for o in self.owned.values() if o.primary is None)

    def servers_status(self) -> list[dict[str, object]]:
        return [
            {
                "name": s.name,
                "pid": s.pid,
                "state": s.state.value,
                "incarnation": s.incarnation,
                "capacity": s.capacity,
                "primary": len(s.primaries),
                "standby": len(s.standbys),
            }
            for s in self.servers.values()
        ]
