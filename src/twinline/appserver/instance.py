"""A call instance's replication logic, sans-IO: checkpoint, acknowledge, release.

Primary::

    event --> handler run --> checkpoint(v) --> standby
                                   |               |
                  commands of v held               ack(v)
                                   |               |
                                   +--> released to the switch (invariant 3)

Standby: events from the switch are buffered until a checkpoint covers them
(`event_seq`); a checkpoint replaces the mirrored state and is acknowledged at once.
With no standby the primary's checkpoint goes to the database instead, and its
commands are released when the database has it.

Roles::

    [standby] --takeover--> [primary]      (a new epoch, from the switch)

A deposed primary is not told to stop: the switch refuses its commands by epoch and,
when it reconnects, names the instances it may keep; it drops the others.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import msgspec

from twinline.link.messages import (
    Action,
    CallRecord,
    Checkpoint,
    CheckpointAck,
    Command,
    Event,
    Offered,
    TimerSpec,
)

# Tens of thousands of instances live at once, most with no timer and
# nothing unacknowledged: they share this empty rather than holding their own.
NO_TIMERS: Mapping[str, float] = MappingProxyType({})


class Role(enum.Enum):
    PRIMARY = "primary"
    STANDBY = "standby"


class CallInstance:
    __slots__ = (
        "acked",
        "buffer",
        "call",
        "commands_sent",
        "ended",
        "epoch",
        "event_seq",
        "in_database",
        "live",
        "offered",
        "pending",
        "record",
        "role",
        "standby",
        "state_bytes",
        "timers",
        "unreleased",
        "version",
    )

    def __init__(self, offered: Offered) -> None:
        self.call = offered.call
        self.epoch = offered.epoch
        self.role = Role(offered.role)
        self.offered = offered
        self.standby = offered.standby
        self.version = 0  # primary: last checkpoint made; standby: last one applied
        self.acked = 0  # primary: highest version the standby acknowledged
        self.event_seq = 0  # the last switch event the state includes
        self.buffer: tuple[Event, ...] = ()  # standby: events past the last checkpoint
        self.timers: Mapping[str, float] = NO_TIMERS
        self.commands_sent = 0
        self.unreleased: list[tuple[int, list[Command]]] = []
        self.pending: tuple[Command, ...] = ()  # standby: the checkpoint's commands not known done
        self.state_bytes = b""
        self.record = CallRecord(primaries=[offered.primary])
        self.ended = False
        self.in_database = False  # a checkpoint of it was saved there: drop it at the end
        # The primary's service state as an object, between runs (decoded from
        # `state_bytes` again after a takeover); the runner's to read and replace.
        self.live: object | None = None

    # --- primary ---------------------------------------------------------------------------
    def checkpoint(
        self,
        *,
        event_seq: int,
        state_bytes: bytes,
        timers: Mapping[str, float],
        actions: list[Action],
        record: CallRecord,
    ) -> Checkpoint:
        """Record a handler run's outcome; its commands wait for this checkpoint's ack."""
        assert self.role is Role.PRIMARY, "only a primary checkpoints"
        commands = []
        for action in actions:
            self.commands_sent += 1
            commands.append(
                Command(call=self.call, epoch=self.epoch, seq=self.commands_sent, action=action)
            )
        self.version += 1
        self.event_seq = event_seq
        self.state_bytes = state_bytes
        self.timers = dict(timers) if timers else NO_TIMERS
        self.record = record
        self.unreleased.append((self.version, commands))
        return Checkpoint(
            call=self.call,
            epoch=self.epoch,
            version=self.version,
            event_seq=event_seq,
            offered=self.offered,
            service_state=state_bytes,
            timers=[TimerSpec(n, due) for n, due in sorted(self.timers.items())],
            pending=[c for _, cs in self.unreleased for c in cs],
            commands_sent=self.commands_sent,
            record=record,
        )

    def acknowledged(self, version: int) -> list[Command]:
        """The standby (or the database) holds checkpoint `version`: the commands of
        every checkpoint up to it may go to the switch now, in order."""
        released: list[Command] = []
        while self.unreleased and self.unreleased[0][0] <= version:
            released.extend(self.unreleased.pop(0)[1])
        self.acked = max(self.acked, version)
        return released

    @property
    def waiting(self) -> int:
        """Checkpoints sent but not yet acknowledged."""
        return len(self.unreleased)

    # --- standby ---------------------------------------------------------------------------
    def buffer_event(self, event: Event) -> None:
        if event.seq > self.event_seq and all(e.seq != event.seq for e in self.buffer):
            self.buffer = (*self.buffer, event)

    def apply_checkpoint(self, cp: Checkpoint) -> CheckpointAck:
        """Mirror the primary's state; acknowledged whether new or a repeat."""
        if cp.epoch >= self.epoch and cp.version > self.version:
            self.epoch = cp.epoch
            self.version = cp.version
            self.event_seq = cp.event_seq
            self.state_bytes = cp.service_state
            self.timers = {t.name: t.due for t in cp.timers} if cp.timers else NO_TIMERS
            self.commands_sent = cp.commands_sent
            self.record = cp.record
            self.pending = tuple(cp.pending)
            self.live = None
            self.buffer = tuple(e for e in self.buffer if e.seq > cp.event_seq)
        return CheckpointAck(call=self.call, version=self.version)

    # --- takeover ----------------------------------------------------------------------------
    def promote(self, epoch: int, standby: str | None, server: str) -> list[Command]:
        """Become the call's primary. Returns the last checkpoint's pending commands,
        stamped with the new epoch, to re-send (the switch drops those it executed)."""
        self.role = Role.PRIMARY
        self.epoch = epoch
        self.live = None
        self.standby = standby
        self.record = msgspec.structs.replace(
            self.record, primaries=[*self.record.primaries, server]
        )
        resend = [msgspec.structs.replace(c, epoch=epoch) for c in self.pending]
        self.pending = ()
        return resend

    def take_buffer(self) -> list[Event]:
        """The events past the last checkpoint, in order, to replay as the new primary."""
        events = sorted(self.buffer, key=lambda e: e.seq)
        self.buffer = ()
        return events
