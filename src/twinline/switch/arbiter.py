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
from typing import Protocol

import msgspec

from twinline.config import AppServer, PlanEntry
from twinline.link.messages import (
    CallInfo,
    Command,
    Event,
    EventKind,
    LiveInstance,
    Offered,
    Reject,
    Release,
    Route,
)
from twinline.store.records import ActiveCall, Role
from twinline.switch.call import Call
from twinline.switch.routing import NoRoute, RoutingPlan, Target

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


class Switch(Protocol):
    """The commands the arbiter gives the switch's call core."""

    def route(self, call: Call, targets: list[Target], now: float) -> None: ...

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
    primary: str
    standby: str | None
    service: str
    epoch: int = 1
    event_seq: int = 0
    executed: int = 0  # the highest command sequence number executed


@dataclass(slots=True)
class ArbiterStats:
    commands_executed: int = 0
    commands_refused_stale: int = 0  # wrong epoch or not from the primary
    commands_duplicate: int = 0
    commands_unknown_call: int = 0
    calls_unplaced: int = 0  # no live application server: 503


class ServicePlan:
    """Which service handles a call: longest number prefix, then longest caller prefix."""

    def __init__(self, entries: list[PlanEntry], default: str = "basic") -> None:
        self.entries = sorted(entries, key=lambda e: (-len(e.number), -len(e.caller)))
        self.default = default

    def resolve(self, dialled: str, caller: str) -> str:
        for entry in self.entries:
            if dialled.startswith(entry.number) and caller.startswith(entry.caller):
                return entry.service
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

    # --- the servers -------------------------------------------------------------------------
    def server_up(self, name: str, incarnation: int, pid: int) -> list[LiveInstance]:
        """A server completed its handshake; returns the instances it should keep."""
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

    def server_down(self, name: str) -> None:
        entry = self.servers.get(name)
        if entry is not None:
            entry.state = ServerState.DOWN

    def place(self) -> tuple[ServerEntry, ServerEntry | None] | None:
        up = [s for s in self.servers.values() if s.state is ServerState.UP]
        if not up:
            return None
        primary = min(up, key=lambda s: (len(s.primaries) / s.capacity, s.placed, s.name))
        standby = None
        if self.redundancy:
            others = [s for s in up if s is not primary]
            if others:
                standby = min(
                    others,
                    key=lambda s: (
                        primary.standby_peers[s.name],
                        len(s.standbys) / s.capacity,
                        s.name,
                    ),
                )
        return primary, standby

    # --- CallControl ---------------------------------------------------------------------------
    def offered(self, call: Call, now: float) -> None:
        placed = self.place()
        if placed is None:
            self.stats.calls_unplaced += 1
            self.switch.reject(call, 503, "Service Unavailable", now)
            return
        primary, standby = placed
        service = self.services.resolve(call.dialled, call.caller)
        own = Ownership(call, primary.name, standby.name if standby else None, service)
        self.owned[call.id] = own
        primary.primaries.add(call.id)
        primary.placed += 1
        if standby is not None:
            standby.standbys.add(call.id)
            primary.standby_peers[standby.name] += 1
        wall = self.wall()
        req = call.a_invite.request
        info = CallInfo(
            caller=call.caller,
            callee=call.dialled,
            caller_uri=req.get("From") or "",
            callee_uri=req.uri,
            created=wall,
        )
        for server, role in ((primary, "primary"), (standby, "standby")):
            if server is None:
                continue
            self.send(
                server.name,
                Offered(
                    call=call.id,
                    epoch=own.epoch,
                    role=role,  # type: ignore[arg-type]
                    primary=own.primary,
                    standby=own.standby,
                    service=service,
                    info=info,
                ),
            )
        if self.recorder is not None:
            self.recorder.call_started(
                ActiveCall(
                    call_id=call.id, caller=call.caller, callee=call.dialled, service=service,
                    primary_server=own.primary, standby_server=own.standby, epoch=own.epoch,
                    state="setup", started_at=wall, updated_at=wall,
                )
            )  # fmt: skip
            self.recorder.placement(call.id, own.primary, "primary", own.epoch, wall)
            if own.standby is not None:
                self.recorder.placement(call.id, own.standby, "standby", own.epoch, wall)

    def progress(self, call: Call, status: int, now: float) -> None:
        self._event(call, "progress", status=status)

    def answered(self, call: Call, now: float) -> None:
        self._event(call, "answered", status=200)

    def route_failed(self, call: Call, status: int, reason: str, now: float) -> None:
        self._event(call, "route_failed", status=status, reason=reason)

    def released(self, call: Call, now: float) -> None:
        own = self.owned.pop(call.id, None)
        if own is None:
            return
        self._send_event(own, "released", cause=call.cause)
        primary = self.servers.get(own.primary)
        if primary is not None:
            primary.primaries.discard(call.id)
            if own.standby is not None:
                primary.standby_peers[own.standby] -= 1
        if own.standby is not None:
            standby = self.servers.get(own.standby)
            if standby is not None:
                standby.standbys.discard(call.id)
        if self.recorder is not None:
            self.recorder.call_ended(call.id)

    def _event(self, call: Call, kind: EventKind, *, status: int = 0, reason: str = "") -> None:
        own = self.owned.get(call.id)
        if own is not None:
            self._send_event(own, kind, status=status, reason=reason)

    def _send_event(
        self, own: Ownership, kind: EventKind, *, status: int = 0, reason: str = "", cause: str = ""
    ) -> None:
        own.event_seq += 1
        event = Event(
            call=own.call.id,
            seq=own.event_seq,
            kind=kind,
            at=self.wall(),
            status=status,
            reason=reason,
            cause=cause,
        )
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
            self._route(own, action.destinations, now)
        elif isinstance(action, Reject):
            self.switch.reject(call, action.status, action.reason, now)
        elif isinstance(action, Release):
            self.switch.release(call, now)

    def _route(self, own: Ownership, destinations: list[str], now: float) -> None:
        targets: list[Target] = []
        failure: NoRoute | None = None
        for destination in destinations:
            try:
                targets.extend(self.routing.resolve(destination, now))
            except NoRoute as e:
                failure = failure or e
        if targets:
            self.switch.route(own.call, targets, now)
        else:
            failure = failure or NoRoute(404, "Not Found")
            self._send_event(own, "route_failed", status=failure.status, reason=failure.reason)

    # --- what operators see --------------------------------------------------------------------
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
