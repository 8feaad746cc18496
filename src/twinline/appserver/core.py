"""An application server's call instances and their replication, sans-IO.

`ReplicationCore` takes what arrives (link messages from the switch and the peers, a
timer tick, the outcome of a service handler run, the completion of a database
operation) with a wall-clock `now`, and answers with *actions* in `core.actions`,
which its adapter carries out and empties (`take_actions()`). It owns no socket, task
or clock: a unit test drives it step by step.

    Offered/Event/TimerDue --> queue per call --> RunHandler --> run_done(outcome)
                                                                     |
                            checkpoint v --> ToPeer(standby) or SaveCheckpoint(db)
                                                                     |
                     ack(v) / saved(v) --> the commands of v go ToSwitch (invariant 3)

One input per call at a time, in arrival order; at most `max_running` calls with a
handler run or a database save under way at once (a takeover hands a server thousands
of calls in one burst: were they all to run in one loop iteration, its heartbeats
would be late enough for the switch to declare it dead).

Taking a call over (`Takeover`, a standby becoming primary) and adopting one
(`Adopt`, a call whose primary and standby were both lost, from its last database
checkpoint) are one path: start from the newest checkpoint held (or from the offer),
re-send its commands the switch has not executed, replay every event of the switch's
past it, re-arm the timers (overdue ones fire at once, after the replay), then report
`Owned`. Service handlers replay exactly because a run is named by its input, not by
its place in the call's history (see `run_id`).
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec

from twinline.appserver.instance import CallInstance, Role
from twinline.link.messages import (
    Action,
    Adopt,
    CallRecord,
    Checkpoint,
    CheckpointAck,
    Command,
    Drop,
    Event,
    Finished,
    Forget,
    LiveInstance,
    Offered,
    Owned,
    Protect,
    Takeover,
)
from twinline.store.records import Cdr
from twinline.timers import Timer, TimerHeap

# How many dropped calls a server remembers, to refuse late checkpoints for them: far
# more than can be in flight on a peer link, a few MB at most.
GONE_MEMORY = 100_000

# Calls whose handler runs (or database saves) may be under way at once.
MAX_RUNNING = 64


# --- what a call's queue holds ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimerDue:
    name: str
    due: float


@dataclass(frozen=True, slots=True)
class Refresh:
    """Send the standby (or the database) a full checkpoint: a new standby, or none."""


@dataclass(frozen=True, slots=True)
class TakenOver:
    """The replay of a takeover is done: tell the switch."""

    epoch: int


Input = Offered | Event | TimerDue | Refresh | TakenOver
Handled = Offered | Event | TimerDue  # the inputs a service handler runs for


def run_id(item: Handled) -> str:
    """The name of a handler run, from what it handles alone: the same on the primary
    and on a standby that replays it, in whatever order, so the idempotency keys of its
    side effects are too (invariant 5)."""
    if isinstance(item, Offered):
        return "offer"
    if isinstance(item, Event):
        return f"e{item.seq}"
    return f"t:{item.name}@{item.due:.6f}"


# --- actions for the adapter ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToSwitch:
    message: msgspec.Struct


@dataclass(frozen=True, slots=True)
class ToPeer:
    server: str
    message: msgspec.Struct


@dataclass(frozen=True, slots=True)
class RunHandler:
    """Run the call's service for `item`; answer with `run_done(call, outcome)`."""

    instance: CallInstance
    item: Handled
    run: str  # run_id(item)
    now: float  # the input's time: the event's at the switch, the timer's due time


@dataclass(frozen=True, slots=True)
class SaveCheckpoint:
    """Save `checkpoint` in the database (no standby holds it); answer `saved()`."""

    checkpoint: Checkpoint
    data: bytes  # the checkpoint, encoded


@dataclass(frozen=True, slots=True)
class LoadCheckpoint:
    """Adopting a call: fetch its database checkpoint; answer `loaded()`."""

    call: str


@dataclass(frozen=True, slots=True)
class WriteCdr:
    """The call is over: make its CDR durable (and drop its database checkpoint);
    answer `cdr_written()`."""

    cdr: Cdr
    drop_checkpoint: bool


CoreAction = ToSwitch | ToPeer | RunHandler | SaveCheckpoint | LoadCheckpoint | WriteCdr


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What a handler run produced."""

    state_bytes: bytes
    timers: Mapping[str, float]
    actions: list[Action]
    record: CallRecord
    released: bool = False  # it handled `released`: the call is over
    error: bool = False


@dataclass(slots=True)
class CoreStats:
    handler_runs: int = 0
    handler_errors: int = 0
    checkpoints_sent: int = 0
    checkpoints_to_database: int = 0  # no standby, or no link to it
    checkpoints_applied: int = 0
    commands_released: int = 0
    commands_resent: int = 0  # pending commands re-sent after a takeover
    events_replayed: int = 0
    takeovers: int = 0
    adoptions: int = 0  # calls adopted from the database after losing both instances
    cdrs_written: int = 0


def _due_by(timers: Mapping[str, float], at: float) -> TimerDue | None:
    """The earliest of `timers` due at or before `at`, if any."""
    if not timers:
        return None
    name, due = min(timers.items(), key=lambda t: (t[1], t[0]))
    return TimerDue(name, due) if due <= at else None


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


class _Phase(enum.Enum):
    IDLE = "idle"  # nothing under way; not in the ready queue
    READY = "ready"  # waiting for a free slot
    BUSY = "busy"  # a handler run, a save or a load under way


@dataclass(slots=True, eq=False)
class _Calls:
    """A call's inputs waiting their turn, and what is under way for it."""

    queue: deque[Input] = field(default_factory=deque)
    phase: _Phase = _Phase.IDLE
    loading: bool = False  # adoption: waiting for the database checkpoint


class ReplicationCore:
    def __init__(self, name: str, *, database: bool = True, max_running: int = MAX_RUNNING) -> None:
        self.name = name
        self.database = database  # checkpoints with no standby go to the database
        self.max_running = max_running
        self.instances: dict[str, CallInstance] = {}
        self.peers_up: set[str] = set()
        self.actions: list[CoreAction] = []
        self.stats = CoreStats()
        self.timers = TimerHeap()
        self._calls: dict[str, _Calls] = {}
        self._ready: deque[str] = deque()
        self._running = 0
        self._armed: dict[str, list[Timer]] = {}
        self._gone: dict[str, int] = {}  # calls let go of, with their epoch then
        self._adopting: dict[str, Adopt] = {}
        self._encoder = msgspec.msgpack.Encoder()

    # --- the adapter's side ---------------------------------------------------------------
    def take_actions(self) -> list[CoreAction]:
        actions, self.actions = self.actions, []
        return actions

    def next_deadline(self) -> float | None:
        return self.timers.next_deadline()

    def tick(self, now: float) -> None:
        """Fire the timers due at `now`."""
        self.timers.fire_due(now)

    def counts(self) -> tuple[int, int]:
        primary = sum(1 for i in self.instances.values() if i.role is Role.PRIMARY)
        return primary, len(self.instances) - primary

    # --- from the switch --------------------------------------------------------------------
    def welcome(self, live: list[LiveInstance]) -> int:
        """The switch named the instances it counts on; drop every other one (a restart,
        or a primary deposed while frozen or cut off). Returns how many were dropped."""
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
            self._drop(msg.call)
            inst = CallInstance(msg)
            self.instances[msg.call] = inst
        if inst.role is Role.PRIMARY:
            self._enqueue(inst, msg)

    def event(self, ev: Event) -> None:
        inst = self.instances.get(ev.call)
        if inst is None:
            return  # an instance we dropped (the call ended, or we were told to)
        if inst.role is Role.PRIMARY:
            self._enqueue(inst, ev)
        else:
            inst.buffer_event(ev)

    def takeover(self, msg: Takeover) -> bool:
        """Become the call's primary: re-send, replay, re-arm, re-protect, report."""
        inst = self.instances.get(msg.call)
        if inst is None or inst.role is Role.PRIMARY:
            return False  # nothing to take over from; the switch sees no Owned
        self.stats.takeovers += 1
        self._assume(inst, msg.epoch, msg.standby, msg.executed, msg.events)
        return True

    def adopt(self, msg: Adopt) -> None:
        """Both instances of a call were lost: become its primary from its database
        checkpoint (if any) and the switch's events."""
        self.stats.adoptions += 1
        self._drop(msg.call)
        offered = msgspec.structs.replace(
            msg.offered, epoch=msg.epoch, role="primary", primary=self.name, standby=msg.standby
        )
        inst = CallInstance(offered)
        inst.role = Role.STANDBY  # until `_assume` promotes it
        inst.epoch = 0  # so that any database checkpoint applies
        self.instances[msg.call] = inst
        if not self.database:
            self._assume(inst, msg.epoch, msg.standby, msg.executed, msg.events)
            return
        self._adopting[msg.call] = msg
        calls = self._calls.setdefault(msg.call, _Calls())
        calls.loading = True
        self.actions.append(LoadCheckpoint(msg.call))

    def loaded(self, call: str, data: bytes | None) -> None:
        """The database checkpoint of a call being adopted (None: it has none)."""
        msg = self._adopting.pop(call, None)
        inst = self.instances.get(call)
        calls = self._calls.get(call)
        if calls is not None:
            calls.loading = False
        if msg is None or inst is None or inst.role is not Role.STANDBY:
            return
        if data is not None:
            inst.apply_checkpoint(msgspec.msgpack.decode(data, type=Checkpoint))
            inst.in_database = True
        self._assume(inst, msg.epoch, msg.standby, msg.executed, msg.events)

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

    # --- from the peers -------------------------------------------------------------------------
    def peer_up(self, server: str) -> None:
        """The peer link to `server` is up: refill the standbys held there, which may
        have missed checkpoints while it was down."""
        self.peers_up.add(server)
        for inst in self.instances.values():
            if inst.role is Role.PRIMARY and inst.standby == server and inst.version:
                self._enqueue(inst, Refresh())

    def peer_lost(self, server: str) -> None:
        """The peer link to `server` closed: checkpoints sent there may never be
        acknowledged. Primaries backed up there checkpoint again, which goes to the
        database while the link is down, so their held commands go out."""
        self.peers_up.discard(server)
        for inst in self.instances.values():
            if inst.role is Role.PRIMARY and inst.standby == server and inst.waiting:
                self._enqueue(inst, Refresh())

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
        if inst.role is not Role.STANDBY or cp.call in self._adopting:
            return
        self.stats.checkpoints_applied += 1
        ack = inst.apply_checkpoint(cp)
        if sender in self.peers_up:
            self.actions.append(ToPeer(sender, ack))

    def acknowledged(self, ack: CheckpointAck) -> None:
        inst = self.instances.get(ack.call)
        if inst is None or inst.role is not Role.PRIMARY:
            return
        self._release(inst.acknowledged(ack.version))

    def forget(self, msg: Forget) -> None:
        inst = self.instances.get(msg.call)
        if inst is not None and inst.role is Role.STANDBY:
            self._drop(msg.call)

    # --- completions from the adapter -----------------------------------------------------------
    def run_done(self, run: RunHandler, outcome: RunOutcome) -> None:
        """The handler run `run` asked for finished with `outcome`."""
        call, item = run.instance.call, run.item
        inst = self.instances.get(call)
        if inst is not run.instance or inst.role is not Role.PRIMARY:
            self._next(call)  # dropped or deposed while it ran: its outcome is void
            return
        self.stats.handler_runs += 1
        if outcome.error:
            self.stats.handler_errors += 1
        if outcome.released:
            assert isinstance(item, Event)
            self._finish(inst, outcome.record, item)
            return
        event_seq = item.seq if isinstance(item, Event) else inst.event_seq
        self._checkpoint(
            inst, event_seq=event_seq, state_bytes=outcome.state_bytes, timers=outcome.timers,
            actions=outcome.actions, record=outcome.record,
        )  # fmt: skip

    def saved(self, call: str, version: int) -> None:
        """The database holds checkpoint `version` of `call`."""
        inst = self.instances.get(call)
        if inst is not None and inst.role is Role.PRIMARY:
            self._release(inst.acknowledged(version))
        self._next(call)

    def cdr_written(self, call: str) -> None:
        inst = self.instances.get(call)
        if inst is None:
            return
        self.stats.cdrs_written += 1
        self.actions.append(ToSwitch(Finished(call=call, epoch=inst.epoch)))
        if inst.standby is not None and inst.standby in self.peers_up:
            self.actions.append(ToPeer(inst.standby, Forget(call=call)))
        self._drop(call)
        self._next(call)

    # --- takeover and adoption --------------------------------------------------------------
    def _assume(
        self,
        inst: CallInstance,
        epoch: int,
        standby: str | None,
        executed: int,
        events: list[Event],
    ) -> None:
        resend = [c for c in inst.promote(epoch, standby, self.name) if c.seq > executed]
        self.stats.commands_resent += len(resend)
        self._release(resend)
        if inst.version == 0:
            self._enqueue(inst, inst.offered)  # no decision was checkpointed: decide again
        replay = {e.seq: e for e in inst.take_buffer()}
        replay.update((e.seq, e) for e in events if e.seq > inst.event_seq)
        self.stats.events_replayed += len(replay)
        for seq in sorted(replay):
            self._enqueue(inst, replay[seq])
        if inst.version == 0 or replay:
            self._enqueue(inst, TakenOver(epoch))  # owned once caught up
        else:
            # Nothing to catch up on: the call is ours now. Re-protecting it (its state to
            # the new standby, or to the database) follows; the switch counts that apart.
            self.actions.append(ToSwitch(Owned(call=inst.call, epoch=epoch)))
            self._enqueue(inst, Refresh())
        self._arm_timers(inst)  # overdue ones fire at once, after the replay

    # --- a call's queue -----------------------------------------------------------------------
    def _enqueue(self, inst: CallInstance, item: Input) -> None:
        calls = self._calls.get(inst.call)
        if calls is None:
            calls = self._calls[inst.call] = _Calls()
        calls.queue.append(item)
        if calls.phase is _Phase.IDLE and not calls.loading:
            calls.phase = _Phase.READY
            self._ready.append(inst.call)
            self._start()

    def _start(self) -> None:
        """Give free slots to ready calls, in the order they became ready."""
        while self._ready and self._running < self.max_running:
            call = self._ready.popleft()
            calls = self._calls.get(call)
            if calls is None or calls.phase is not _Phase.READY:
                continue
            calls.phase = _Phase.BUSY
            self._running += 1
            self._step(call, calls)

    def _step(self, call: str, calls: _Calls) -> None:
        """Take the call's next input that needs work outside the core; what the core
        does alone (a stale input, a refresh, `Owned`) is done on the spot."""
        while True:
            inst = self.instances.get(call)
            if not calls.queue or calls.loading or inst is None or inst.ended:
                self._idle(call, calls)
                return
            item = calls.queue.popleft()
            if isinstance(item, TakenOver):
                self.actions.append(ToSwitch(Owned(call=call, epoch=item.epoch)))
                continue
            if isinstance(item, Refresh):
                if inst.role is not Role.PRIMARY or (not inst.version and not inst.state_bytes):
                    continue  # nothing decided yet: the first run's checkpoint will do
                if self._checkpoint(
                    inst, event_seq=inst.event_seq, state_bytes=inst.state_bytes,
                    timers=inst.timers, actions=[], record=inst.record, step=False,
                ):  # fmt: skip
                    return  # waiting for the database
                continue
            if inst.role is not Role.PRIMARY:
                continue
            if isinstance(item, Event):
                if item.seq <= inst.event_seq:
                    continue  # replayed already (a takeover raced the switch's event)
                early = _due_by(inst.timers, item.at)
                if early is not None:
                    # A timer due before the event happened runs first, live or in a
                    # replay: the primary and a standby replaying it see one order.
                    calls.queue.appendleft(item)
                    calls.queue.appendleft(early)
                    continue
                now = item.at
            elif isinstance(item, TimerDue):
                if inst.timers.get(item.name) != item.due:
                    continue  # re-armed or cancelled since
                now = item.due
            else:
                now = inst.offered.info.created
            self.actions.append(RunHandler(inst, item, run_id(item), now))
            return

    def _next(self, call: str) -> None:
        """The call's work under way finished: on to its next input, same slot."""
        calls = self._calls.get(call)
        if calls is None or calls.phase is not _Phase.BUSY:
            return
        self._step(call, calls)

    def _idle(self, call: str, calls: _Calls) -> None:
        if calls.phase is _Phase.BUSY:
            self._running -= 1
        calls.phase = _Phase.IDLE
        if (not calls.queue and not calls.loading) or call not in self.instances:
            self._calls.pop(call, None)
        self._start()

    # --- checkpoints, commands, the end ---------------------------------------------------------
    def _checkpoint(
        self,
        inst: CallInstance,
        *,
        event_seq: int,
        state_bytes: bytes,
        timers: Mapping[str, float],
        actions: list[Action],
        record: CallRecord,
        step: bool = True,
    ) -> bool:
        """Checkpoint a run's outcome and send it where it is safe. Returns True when
        the call waits for the database (`saved`); otherwise, with `step`, goes on."""
        cp = inst.checkpoint(
            event_seq=event_seq, state_bytes=state_bytes, timers=timers, actions=actions,
            record=record,
        )  # fmt: skip
        self._arm_timers(inst)
        if inst.standby is not None and inst.standby in self.peers_up:
            self.stats.checkpoints_sent += 1
            self.actions.append(ToPeer(inst.standby, cp))
        elif self.database:
            # No standby to hold it: the database does, before any command leaves.
            self.stats.checkpoints_to_database += 1
            inst.in_database = True
            self.actions.append(SaveCheckpoint(cp, self._encoder.encode(cp)))
            return True
        else:
            self._release(inst.acknowledged(cp.version))
        if step:
            self._next(inst.call)
        return False

    def _release(self, commands: list[Command]) -> None:
        for command in commands:
            self.actions.append(ToSwitch(command))
        self.stats.commands_released += len(commands)

    def _finish(self, inst: CallInstance, record: CallRecord, ev: Event) -> None:
        """The call is over: its CDR is durable before the standby lets go of its copy."""
        inst.ended = True
        self._cancel_timers(inst.call)
        info = inst.offered.info
        cdr = Cdr(
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
            cost=record.cost,
            currency=record.currency or None,
        )
        self.actions.append(WriteCdr(cdr, drop_checkpoint=inst.in_database))

    # --- timers -------------------------------------------------------------------------------
    def _arm_timers(self, inst: CallInstance) -> None:
        self._cancel_timers(inst.call)
        if not inst.timers:
            return
        self._armed[inst.call] = [
            self.timers.schedule(due, self._timer_callback(inst, TimerDue(name, due)))
            for name, due in inst.timers.items()
        ]

    def _timer_callback(self, inst: CallInstance, due: TimerDue) -> Callable[[float], None]:
        def fire(now: float) -> None:
            if inst.role is Role.PRIMARY and self.instances.get(inst.call) is inst:
                self._enqueue(inst, due)

        return fire

    def _cancel_timers(self, call: str) -> None:
        for timer in self._armed.pop(call, ()):
            timer.cancel()

    def _drop(self, call: str) -> None:
        self._cancel_timers(call)
        self._adopting.pop(call, None)
        inst = self.instances.pop(call, None)
        if inst is not None:
            self._gone[call] = inst.epoch
            if len(self._gone) > GONE_MEMORY:
                del self._gone[next(iter(self._gone))]  # the oldest
        calls = self._calls.get(call)
        if calls is not None:
            calls.queue.clear()
            calls.loading = False
            if calls.phase is _Phase.READY:
                calls.phase = _Phase.IDLE  # skipped when it surfaces in the ready queue
            if calls.phase is _Phase.IDLE:
                del self._calls[call]
