"""An application server's call instances, driven by link messages.

The runtime runs service handlers (they are async: a service may read the database),
one event at a time per call, and turns each run into a checkpoint through the call's
`CallInstance`. Messages leave through two callables, `to_switch(msg)` and
`to_peer(server, msg) -> bool` (False when there is no link to that server), so the
runtime knows nothing of sockets and tests drive it directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from twinline.appserver.instance import CallInstance, Role
from twinline.link.messages import (
    CallRecord,
    Checkpoint,
    CheckpointAck,
    Drop,
    Event,
    Finished,
    Forget,
    LiveInstance,
    Offered,
    Owned,
    Protect,
    Reject,
    Release,
    Takeover,
)
from twinline.services.api import Service, ServiceCall
from twinline.store.base import Store
from twinline.store.records import Cdr

log = logging.getLogger("twinline.appserver")

# How many dropped calls a server remembers, to refuse late checkpoints for them: far
# more than can be in flight on a peer link, a few MB at most.
GONE_MEMORY = 100_000

# Calls whose handler runs may be under way at once. A takeover hands a server
# thousands of calls in one burst: were they all to run, each loop iteration would run
# thousands of handler steps, and the heartbeats waiting behind them would be late
# enough for the switch to declare this server dead. The others wait their turn.
MAX_RUNNING = 64

ToSwitch = Callable[[msgspec.Struct], None]
ToPeer = Callable[[str, msgspec.Struct], bool]


@dataclass(frozen=True, slots=True)
class TimerDue:
    name: str
    due: float


@dataclass(frozen=True, slots=True)
class Refresh:
    """Send the standby a full checkpoint (a new standby, or none any more)."""


@dataclass(frozen=True, slots=True)
class TakenOver:
    """The replay of a takeover is done: tell the switch."""

    epoch: int


Input = Offered | Event | TimerDue | Refresh | TakenOver


@dataclass(slots=True)
class RuntimeStats:
    handler_runs: int = 0
    handler_errors: int = 0
    checkpoints_sent: int = 0
    checkpoints_to_database: int = 0  # no standby, or no link to it
    checkpoints_applied: int = 0
    commands_released: int = 0
    commands_resent: int = 0  # pending commands re-sent after a takeover
    events_replayed: int = 0
    takeovers: int = 0
    cdrs_written: int = 0


def disposition(record: CallRecord, cause: str) -> str:
    if record.answered_at:
        return "answered"
    if cause == "cancelled":
        return "cancelled"
    if record.status in (486, 600):
        return "busy"
    if record.status in (408, 480):
        return "no-answer"
    if record.status == 404:
        return "unknown-number"
    return "failed"


class AppServerRuntime:
    def __init__(
        self,
        name: str,
        services: dict[str, Service[Any]],
        store: Store | None,
        *,
        to_switch: ToSwitch,
        to_peer: ToPeer,
        wall: Callable[[], float],
    ) -> None:
        self.name = name
        self.services = services
        self.store = store
        self.to_switch = to_switch
        self.to_peer = to_peer
        self.wall = wall
        self.instances: dict[str, CallInstance] = {}
        self._states: dict[str, msgspec.Struct] = {}  # a primary's live service state
        self._queues: dict[str, deque[Input]] = {}
        self._timers: dict[str, dict[str, asyncio.TimerHandle]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = asyncio.Semaphore(MAX_RUNNING)
        # Calls this server let go of, with their epoch then, oldest first.
        self._gone: dict[str, int] = {}
        self._encoder = msgspec.msgpack.Encoder()
        self.stats = RuntimeStats()

    # --- counts for heartbeats and status ------------------------------------------------
    def counts(self) -> tuple[int, int]:
        primary = sum(1 for i in self.instances.values() if i.role is Role.PRIMARY)
        return primary, len(self.instances) - primary

    # --- from the switch -------------------------------------------------------------------
    def welcome(self, live: list[LiveInstance]) -> int:
        """The switch told us which instances it counts on; drop every other one (a
        restart, or a primary deposed while it was frozen or cut off). Returns how
        many were dropped."""
        keep = {li.call: li for li in live}
        stale = []
        for call, inst in self.instances.items():
            li = keep.get(call)
            if (
                li is None
                or li.role != inst.role.value
                or (li.epoch > inst.epoch and li.role == "primary")
            ):
                stale.append(call)
        for call in stale:
            self._drop(call)
        return len(stale)

    def offered(self, msg: Offered) -> None:
        inst = self.instances.get(msg.call)
        if inst is None or (msg.role == "standby" and inst.role is Role.PRIMARY):
            inst = CallInstance(msg)
            self._drop(msg.call)
            self.instances[msg.call] = inst
        if inst.role is Role.PRIMARY:
            self._enqueue(inst, msg)

    def takeover(self, msg: Takeover) -> bool:
        """Become the call's primary: re-send, replay, re-arm, re-protect, report."""
        inst = self.instances.get(msg.call)
        if inst is None or inst.role is Role.PRIMARY:
            return False  # nothing to take over from; the switch sees no Owned
        self.stats.takeovers += 1
        resend = [
            c for c in inst.promote(msg.epoch, msg.standby, self.name) if c.seq > msg.executed
        ]
        self._states.pop(inst.call, None)  # decoded again from the checkpoint
        self.stats.commands_resent += len(resend)
        self._release(inst, resend)
        if inst.version == 0:
            self._enqueue(inst, inst.offered)  # no decision was checkpointed: decide again
        replay = inst.take_buffer()
        self.stats.events_replayed += len(replay)
        for ev in replay:
            self._enqueue(inst, ev)
        if inst.version == 0 or replay:
            self._enqueue(inst, TakenOver(msg.epoch))  # owned once caught up
        else:
            # Nothing to catch up on: the call is ours now. Re-protecting it (its state to
            # the new standby, or to the database) follows; the switch counts that apart.
            self.to_switch(Owned(call=inst.call, epoch=msg.epoch))
            self._enqueue(inst, Refresh())
        self._arm_timers(inst)  # overdue ones fire at once, after the replay
        return True

    def protect(self, msg: Protect) -> None:
        inst = self.instances.get(msg.call)
        if inst is None or inst.role is not Role.PRIMARY or msg.epoch != inst.epoch:
            return
        inst.standby = msg.standby
        # Commands held for the old standby's ack go out once the new one (or the
        # database) holds this checkpoint.
        self._enqueue(inst, Refresh())

    def drop(self, msg: Drop) -> None:
        self._drop(msg.call)

    def peer_lost(self, server: str) -> None:
        """The peer link to `server` closed: checkpoints sent there may never be
        acknowledged. Primaries backed up there checkpoint again, which goes to the
        database while the link is down, so their held commands go out."""
        for inst in self.instances.values():
            if inst.role is Role.PRIMARY and inst.standby == server and inst.waiting:
                self._enqueue(inst, Refresh())

    def peer_up(self, server: str) -> None:
        """The peer link to `server` is back: refill the standbys held there, which
        may have missed checkpoints while it was down."""
        for inst in self.instances.values():
            if inst.role is Role.PRIMARY and inst.standby == server and inst.version:
                self._enqueue(inst, Refresh())

    def event(self, ev: Event) -> None:
        inst = self.instances.get(ev.call)
        if inst is None:
            return  # an instance we dropped (the call ended, or we were told to)
        if inst.role is Role.PRIMARY:
            self._enqueue(inst, ev)
        else:
            inst.buffer_event(ev)

    # --- from the peers ---------------------------------------------------------------------
    def checkpoint(self, sender: str, cp: Checkpoint) -> None:
        inst = self.instances.get(cp.call)
        if inst is None:
            if cp.epoch <= self._gone.get(cp.call, -1):
                # A late checkpoint for a call we let go of (a deposed primary catching
                # up after a freeze): creating an instance for it would leak one.
                return
            # The checkpoint overtook the switch's Offered (they travel different links).
            inst = CallInstance(cp.offered)
            inst.role = Role.STANDBY
            self.instances[cp.call] = inst
        if inst.role is not Role.STANDBY:
            return
        self.stats.checkpoints_applied += 1
        self.to_peer(sender, inst.apply_checkpoint(cp))

    def acknowledged(self, ack: CheckpointAck) -> None:
        inst = self.instances.get(ack.call)
        if inst is None or inst.role is not Role.PRIMARY:
            return
        self._release(inst, inst.acknowledged(ack.version))

    def forget(self, msg: Forget) -> None:
        inst = self.instances.get(msg.call)
        if inst is not None and inst.role is Role.STANDBY:
            self._drop(msg.call)

    # --- handler runs ---------------------------------------------------------------------------
    def _enqueue(self, inst: CallInstance, item: Input) -> None:
        queue = self._queues.get(inst.call)
        if queue is not None:
            queue.append(item)  # a run is under way; it picks this up next
            return
        self._queues[inst.call] = deque([item])
        task = asyncio.get_running_loop().create_task(self._drain(inst))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, inst: CallInstance) -> None:
        queue = self._queues[inst.call]
        try:
            async with self._running:
                while queue and not inst.ended and self.instances.get(inst.call) is inst:
                    await self._run(inst, queue.popleft())
        finally:
            self._queues.pop(inst.call, None)

    async def _run(self, inst: CallInstance, item: Input) -> None:
        if isinstance(item, TakenOver):
            self.to_switch(Owned(call=inst.call, epoch=item.epoch))
            return
        service = self.services.get(inst.offered.service) or self.services["basic"]
        state = self._states.get(inst.call)
        if state is None:
            if inst.state_bytes:
                state = msgspec.msgpack.decode(inst.state_bytes, type=service.State)
            else:
                state = service.initial_state(inst.offered.info)
            self._states[inst.call] = state
        event_seq = item.seq if isinstance(item, Event) else inst.event_seq
        if isinstance(item, Event) and item.seq <= inst.event_seq:
            return  # replayed already (a takeover raced the switch's event)
        now = (
            item.at
            if isinstance(item, Event)
            else item.due
            if isinstance(item, TimerDue)
            else inst.offered.info.created
        )
        timers = dict(inst.timers)
        if isinstance(item, TimerDue):
            if timers.get(item.name) != item.due:
                return  # re-armed or cancelled since
            del timers[item.name]
        call = ServiceCall(
            inst.call, inst.offered.info, state, now=now, event_seq=event_seq,
            step=inst.version + 1, timers=timers, writes_done=set(inst.writes_done),
            store=self.store,
        )  # fmt: skip
        record = inst.record
        released = False
        self.stats.handler_runs += 1
        try:
            if isinstance(item, Refresh):
                pass  # no handler: the checkpoint below is the point
            elif isinstance(item, Offered):
                await service.offered(call)
            elif isinstance(item, TimerDue):
                await service.timer(call, item.name)
            elif item.kind == "progress":
                await service.progress(call, item.status)
            elif item.kind == "answered":
                record = msgspec.structs.replace(record, answered_at=item.at)
                await service.answered(call)
            elif item.kind == "route_failed":
                record = msgspec.structs.replace(record, status=item.status, reason=item.reason)
                await service.route_failed(call, item.status, item.reason)
            elif item.kind == "released":
                released = True
                await service.released(call, item.cause)
        except Exception:  # a service's bug must not take the server or other calls down
            self.stats.handler_errors += 1
            log.exception("call %s: service %s failed handling %s", inst.call, service.name, item)
            # Whatever the run asked for is void; the call must not hang unanswered.
            call.actions = [Release()] if record.answered_at else [Reject(500, "Service Error")]
        for action in call.actions:
            if isinstance(action, Reject):
                record = msgspec.structs.replace(record, status=action.status, reason=action.reason)
        self._states[inst.call] = call.state  # a handler may have replaced the object
        if released:
            assert isinstance(item, Event)
            await self._finish(inst, record, item)
            return
        cp = inst.checkpoint(
            event_seq=event_seq,
            state_bytes=self._encoder.encode(call.state),
            timers=call.timers,
            actions=call.actions,
            writes_done=call.writes_done,
            record=record,
        )
        self._arm_timers(inst)
        if inst.standby is not None and self.to_peer(inst.standby, cp):
            self.stats.checkpoints_sent += 1
            return  # the commands go out when the standby acknowledges
        # No standby to hold it: the database does, before any command leaves.
        if self.store is not None:
            await self.store.save_checkpoint(
                inst.call, inst.epoch, cp.version, self._encoder.encode(cp)
            )
        self.stats.checkpoints_to_database += 1
        self._release(inst, inst.acknowledged(cp.version))

    def _release(self, inst: CallInstance, commands: list[Any]) -> None:
        for command in commands:
            self.to_switch(command)
        self.stats.commands_released += len(commands)

    async def _finish(self, inst: CallInstance, record: CallRecord, ev: Event) -> None:
        """The call is over: its CDR is durable before the standby lets go of its copy."""
        inst.ended = True
        self._cancel_timers(inst.call)
        info = inst.offered.info
        if self.store is not None:
            self.store.write_cdr(
                Cdr(
                    call_id=inst.call,
                    caller=info.caller,
                    callee=info.callee,
                    service=inst.offered.service,
                    started_at=info.created,
                    answered_at=record.answered_at or None,
                    ended_at=ev.at,
                    disposition=disposition(record, ev.cause),
                    status=record.status or (200 if record.answered_at else 0),
                    cause=ev.cause,
                    primaries=tuple(record.primaries),
                    standby_servers=(inst.standby,) if inst.standby else (),
                    epoch=inst.epoch,
                )
            )
            await self.store.flush()
            if inst.version and inst.standby is None:
                await self.store.drop_checkpoint(inst.call)
        self.stats.cdrs_written += 1
        self.to_switch(Finished(call=inst.call, epoch=inst.epoch))
        if inst.standby is not None:
            self.to_peer(inst.standby, Forget(call=inst.call))
        self._drop(inst.call)

    # --- timers -------------------------------------------------------------------------------
    def _arm_timers(self, inst: CallInstance) -> None:
        self._cancel_timers(inst.call)
        if not inst.timers:
            return
        loop = asyncio.get_running_loop()
        wall = self.wall()
        handles = {}
        for name, due in inst.timers.items():
            handles[name] = loop.call_later(
                max(0.0, due - wall), self._timer_due, inst, TimerDue(name, due)
            )
        self._timers[inst.call] = handles

    def _timer_due(self, inst: CallInstance, due: TimerDue) -> None:
        self._timers.get(inst.call, {}).pop(due.name, None)
        if inst.role is Role.PRIMARY and self.instances.get(inst.call) is inst:
            self._enqueue(inst, due)

    def _cancel_timers(self, call: str) -> None:
        for handle in self._timers.pop(call, {}).values():
            handle.cancel()

    def _drop(self, call: str) -> None:
        self._cancel_timers(call)
        inst = self.instances.pop(call, None)
        if inst is not None:
            self._gone[call] = inst.epoch
            if len(self._gone) > GONE_MEMORY:
                del self._gone[next(iter(self._gone))]  # the oldest
        self._states.pop(call, None)
