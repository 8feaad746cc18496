"""A test harness for services: a call's life, a stepped clock, failures on demand.

It runs a service as twinline does, on the same code: two application servers'
replication runtimes (a primary and its standby), a peer link between them that can be
held, a model of the switch that fences commands by epoch and drops repeated ones, and
a real SQLite store kept in memory (tmpfs). The clock moves only when the test says so.

    with ServiceHarness(Prepaid, data=accounts) as h:
        call = h.offer(caller="alice", callee="0044201234")
        assert call.commands == [Route(["0044201234"])]
        h.answer(call)
        h.advance(30)
        h.hold_peer()              # the next checkpoints never reach the standby...
        h.release(call)            # ...the primary debits...
        h.fail_primary(call)       # ...and dies: the standby replays, debits nothing twice
        assert call.cdr is not None and len(h.effects("debit")) == 1

Failures: `fail_primary` (kill: what the primary had not sent is lost; the standby takes
over with a new epoch, as the switch orders it), `lose_both` (primary and standby gone;
a third server adopts the call from its database checkpoint and the switch's events).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec

from twinline.appserver.runtime import AppServerRuntime
from twinline.link.messages import (
    Action,
    Adopt,
    CallInfo,
    Checkpoint,
    CheckpointAck,
    Command,
    Event,
    EventKind,
    Finished,
    Forget,
    Offered,
    Owned,
    Reject,
    Release,
    Route,
    Takeover,
)
from twinline.services.api import Service
from twinline.store import Cdr, SideEffect, SqliteStore, Store, Tx

ServiceFactory = Callable[[Store], Service[Any]]
START = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: a fixed, ordinary moment


@dataclass(eq=False)
class HarnessCall:
    """One call as the harness's switch sees it."""

    id: str
    offered: Offered
    epoch: int = 1
    primary: str | None = "as1"
    standby: str | None = "as2"
    executed: int = 0
    events: list[Event] = field(default_factory=list)
    commands: list[Action] = field(default_factory=list)  # executed, in order
    state: str = "setup"  # setup, routed, ringing, answered, ended, finished
    answered_at: float | None = None
    cdr: Cdr | None = None


class ServiceHarness:
    def __init__(
        self,
        service: ServiceFactory,
        *,
        data: Callable[[Tx], object] | None = None,
        service_name: str | None = None,
        start: float = START,
    ) -> None:
        self.now = start
        self._dir = Path(tempfile.mkdtemp(prefix="twinline-harness-", dir=_memory_dir()))
        self.loop = asyncio.new_event_loop()
        self.store: Store = SqliteStore(self._dir / "harness.db", flush_interval=0.001)
        self.loop.run_until_complete(self.store.open())
        if data is not None:
            self.loop.run_until_complete(self.store.transaction("harness data", data))
        self._factory = service
        self.servers: dict[str, AppServerRuntime] = {}
        self.name = service_name or service(self.store).name
        self.calls: dict[str, HarnessCall] = {}
        self._wire: list[tuple[str, str, msgspec.Struct]] = []  # (from, to, message)
        self._held = False
        self._ids = itertools.count(1)
        for server in ("as1", "as2", "as3"):
            self._add_server(server)

    # --- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        self.loop.run_until_complete(self.store.close())
        self.loop.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> ServiceHarness:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_server(self, name: str) -> None:
        def to_switch(msg: msgspec.Struct) -> None:
            self._wire.append((name, "switch", msg))

        def to_peer(peer: str, msg: msgspec.Struct) -> bool:
            self._wire.append((name, peer, msg))
            return True

        runtime = AppServerRuntime(
            name, {self.name: self._factory(self.store)}, self.store,
            to_switch=to_switch, to_peer=to_peer, wall=lambda: self.now, follow_timers=False,
        )  # fmt: skip
        self.servers[name] = runtime
        for other in self.servers:
            if other != name:
                runtime.peer_up(other)
                self.servers[other].peer_up(name)

    # --- the call's life, driven by the test -------------------------------------------------
    def offer(
        self,
        *,
        caller: str = "alice",
        callee: str = "1000",
        headers: dict[str, str] | None = None,
        standby: bool = True,
    ) -> HarnessCall:
        """A new call: offered to its primary (as1) and its standby (as2, unless
        `standby=False`: then it runs unprotected, its checkpoints in the database)."""
        call_id = f"h{next(self._ids)}"
        info = CallInfo(caller=caller, callee=callee, headers=headers or {}, created=self.now)
        offered = Offered(
            call=call_id, epoch=1, role="primary", primary="as1",
            standby="as2" if standby else None, service=self.name, info=info,
        )  # fmt: skip
        call = HarnessCall(call_id, offered, standby="as2" if standby else None)
        self.calls[call_id] = call
        self._send("as1", offered)
        if standby:
            self._send("as2", msgspec.structs.replace(offered, role="standby"))
        self.settle()
        return call

    def progress(self, call: HarnessCall, status: int = 180) -> None:
        call.state = "ringing"
        self._event(call, "progress", status=status)

    def answer(self, call: HarnessCall) -> None:
        call.state, call.answered_at = "answered", self.now
        self._event(call, "answered", status=200)

    def fail(self, call: HarnessCall, status: int = 486, reason: str = "Busy Here") -> None:
        """Every destination of the last route failed with `status`."""
        call.state = "setup"
        self._event(call, "route_failed", status=status, reason=reason)

    def release(self, call: HarnessCall, cause: str = "caller-bye") -> None:
        """The call ends at the switch (a party hung up, or `cause`)."""
        call.state = "ended"
        self._event(call, "released", cause=cause)

    def advance(self, seconds: float) -> None:
        """Move the clock; timers due by then fire on the primaries."""
        self.now += seconds

        async def tick() -> None:
            for runtime in self.servers.values():
                runtime.tick()

        self.loop.run_until_complete(tick())
        self.settle()

    # --- failures --------------------------------------------------------------------------------
    def hold_peer(self) -> None:
        """From now on, peer-link messages wait (checkpoints, acks) until `release_peer`
        or a failure decides their fate."""
        self._held = True

    def release_peer(self) -> None:
        self._held = False
        self.settle()

    def fail_primary(self, call: HarnessCall) -> None:
        """The call's primary dies: whatever it had not sent is lost; the standby takes
        over with a new epoch and, with no other server, runs the call unprotected."""
        dead = call.primary
        assert dead is not None and call.standby is not None, "no standby to take over"
        self._kill(dead)
        new = call.standby
        call.epoch += 1
        call.primary, call.standby = new, None
        self._send(
            new,
            Takeover(
                call=call.id, epoch=call.epoch, standby=None, executed=call.executed,
                event_seq=len(call.events), events=list(call.events),
            ),
        )  # fmt: skip
        self.settle()

    def lose_both(self, call: HarnessCall, adopter: str = "as3") -> None:
        """The call's primary and standby die: `adopter` adopts it from the database."""
        for server in (call.primary, call.standby):
            if server is not None:
                self._kill(server)
        call.epoch += 1
        call.primary, call.standby = adopter, None
        self._send(
            adopter,
            Adopt(
                call=call.id, epoch=call.epoch, standby=None, executed=call.executed,
                offered=call.offered, events=list(call.events),
            ),
        )  # fmt: skip
        self.settle()

    def _kill(self, server: str) -> None:
        self._wire = [(s, d, m) for s, d, m in self._wire if server not in (s, d)]
        self._add_server(server)  # a new incarnation: it holds nothing

    # --- what the test looks at --------------------------------------------------------------
    def effects(self, name: str | None = None) -> list[SideEffect]:
        """Side effects applied (each once), optionally only those named `name`."""

        def query(tx: Tx) -> list[SideEffect]:
            rows = tx.fetchall(
                "SELECT key, call_id, kind, applied_at, result FROM side_effects ORDER BY key"
            )
            return [msgspec.convert(r, SideEffect) for r in rows]

        found = self.loop.run_until_complete(self.store.read(query))
        return [e for e in found if name is None or e.kind.rsplit("/", 1)[-1] == name]

    def query(self, fn: Callable[[Tx], Any]) -> Any:
        """Read the database (service data the effects changed)."""
        return self.loop.run_until_complete(self.store.read(fn))

    def state(self, call: HarnessCall) -> Any:
        """The primary's service state (decoded from its last checkpoint)."""
        assert call.primary is not None
        inst = self.servers[call.primary].instances[call.id]
        service = self.servers[call.primary].services[self.name]
        return msgspec.msgpack.decode(inst.state_bytes, type=service.State)

    def timers(self, call: HarnessCall) -> dict[str, float]:
        """The primary's armed timers: name -> deadline."""
        assert call.primary is not None
        return dict(self.servers[call.primary].instances[call.id].timers)

    # --- the switch, modelled -------------------------------------------------------------------
    def _event(
        self, call: HarnessCall, kind: EventKind, *, settle: bool = True, **fields: Any
    ) -> None:
        if kind == "released" and call.answered_at is not None:
            fields.setdefault("duration", self.now - call.answered_at)  # as the switch measures
        event = Event(call=call.id, seq=len(call.events) + 1, kind=kind, at=self.now, **fields)
        call.events.append(event)
        for server in (call.primary, call.standby):
            if server is not None:
                self._send(server, event)
        if settle:
            self.settle()

    def _send(self, server: str, msg: msgspec.Struct) -> None:
        self._wire.append(("switch", server, msg))

    def _from_server(self, server: str, msg: msgspec.Struct) -> None:
        if isinstance(msg, Command):
            call = self.calls.get(msg.call)
            if call is None or server != call.primary or msg.epoch != call.epoch:
                return  # fenced: a deposed primary
            if msg.seq <= call.executed:
                return  # a repeat after a takeover
            call.executed = msg.seq
            self._execute(call, msg.action)
        elif isinstance(msg, Finished):
            call = self.calls.get(msg.call)
            if call is not None:
                call.state = "finished"  # its CDR is read once the harness settles
        elif isinstance(msg, Owned):
            pass

    def _execute(self, call: HarnessCall, action: Action) -> None:
        call.commands.append(action)
        if isinstance(action, Route) and call.state in ("setup", "routed", "ringing"):
            call.state = "routed"
        elif isinstance(action, Reject) and call.state != "answered":
            call.state = "ended"
            self._event(call, "released", cause=f"{action.status} {action.reason}", settle=False)
        elif isinstance(action, Release) and call.state not in ("ended", "finished"):
            call.state = "ended"
            self._event(call, "released", cause="released", settle=False)

    async def _read_cdrs(self) -> None:
        waiting = [c for c in self.calls.values() if c.state == "finished" and c.cdr is None]
        if waiting:
            await self.store.flush()
            cdrs = {c.call_id: c for c in await self.store.cdrs()}
            for call in waiting:
                call.cdr = cdrs.get(call.id)

    # --- delivery -------------------------------------------------------------------------
    def settle(self) -> None:
        """Deliver every message and finish every run, until nothing moves."""
        self.loop.run_until_complete(self._settle())

    async def _settle(self) -> None:
        for _ in range(10_000):
            delivered = self._deliver()
            for runtime in self.servers.values():
                deadline = runtime.core.next_deadline()
                if deadline is not None and deadline <= self.now:
                    runtime.tick()  # overdue timers fire at once (after a takeover)
                    delivered = True
            busy = [rt for rt in self.servers.values() if rt.busy]
            for runtime in busy:
                await runtime.idle()
            await asyncio.sleep(0)
            if not delivered and not busy and not self._deliverable():
                await self._read_cdrs()
                return
        raise RuntimeError("the harness did not settle: a service loops")

    def _deliverable(self) -> bool:
        return any(not self._held or dest == "switch" or src == "switch"
                   for src, dest, _ in self._wire)  # fmt: skip

    def _deliver(self) -> bool:
        moved = False
        while True:
            i = next(
                (i for i, (s, d, _) in enumerate(self._wire)
                 if not self._held or "switch" in (s, d)),
                None,
            )  # fmt: skip
            if i is None:
                return moved
            src, dest, msg = self._wire.pop(i)
            moved = True
            if dest == "switch":
                self._from_server(src, msg)
            else:
                _deliver_to(self.servers[dest], src, msg)


def _deliver_to(runtime: AppServerRuntime, src: str, msg: msgspec.Struct) -> None:
    if isinstance(msg, Offered):
        runtime.offered(msg)
    elif isinstance(msg, Event):
        runtime.event(msg)
    elif isinstance(msg, Takeover):
        runtime.takeover(msg)
    elif isinstance(msg, Adopt):
        runtime.adopt(msg)
    elif isinstance(msg, Checkpoint):
        runtime.checkpoint(src, msg)
    elif isinstance(msg, CheckpointAck):
        runtime.acknowledged(msg)
    elif isinstance(msg, Forget):
        runtime.forget(msg)


def _memory_dir() -> str | None:
    shm = Path("/dev/shm")  # noqa: S108 - tmpfs: the harness's database lives in memory
    return str(shm) if shm.is_dir() else None


@contextlib.contextmanager
def harness(service: ServiceFactory, **kwargs: Any) -> Iterator[ServiceHarness]:
    h = ServiceHarness(service, **kwargs)
    try:
        yield h
    finally:
        h.close()


__all__ = ["HarnessCall", "ServiceHarness", "harness"]
