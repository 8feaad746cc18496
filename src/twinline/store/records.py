"""The records the store keeps and returns: frozen msgspec Structs, one per table.

Times are wall-clock seconds since the Unix epoch (floats), like the deadlines in a
checkpoint, so a record written by one process means the same to every other one.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Literal

import msgspec

Role = Literal["primary", "standby"]

# What a parameter of a SQL statement may be; the same set maps onto PostgreSQL types.
SqlValue = None | int | float | str | bytes

# A statement with its parameters, in the store's portable style: `?` placeholders
# (qmark); a backend whose driver wants another style (asyncpg: `$1`) converts them.
Statement = tuple[str, Sequence[SqlValue]]


class _Record(msgspec.Struct, frozen=True, kw_only=True):
    pass


class ActiveCall(_Record, frozen=True):
    """A call the switch holds, as operators see it (the switch owns the live truth)."""

    call_id: str
    caller: str
    callee: str
    service: str
    primary_server: str
    standby_server: str | None  # None: the call runs unprotected (no other live server)
    epoch: int
    state: str  # the switch's call state, e.g. "setup", "ringing", "answered"
    started_at: float
    updated_at: float


class Cdr(_Record, frozen=True):
    """The call detail record: exactly one per call, written when the call ends."""

    call_id: str
    caller: str
    callee: str
    service: str
    started_at: float
    answered_at: float | None  # None: the call was never answered
    ended_at: float
    disposition: str  # e.g. "answered", "busy", "no-answer", "rejected", "failed"
    status: int  # the final SIP status of the call's setup (200, 486, 487, ...)
    cause: str  # why it ended, in words: "caller hung up", "credit exhausted", ...
    # The servers that were primary for the call, in order (more than one after a
    # takeover), and the servers that held its standby, in order.
    primaries: tuple[str, ...]
    standby_servers: tuple[str, ...]
    epoch: int  # the call's epoch when it ended
    # What the call cost, as its service recorded it (prepaid: what was debited), in
    # `currency`; None: the call was not charged by a service.
    cost: Decimal | None = None
    currency: str | None = None


class Placement(_Record, frozen=True):
    """One placement of one call instance: where its primary or standby lived, per epoch."""

    call_id: str
    server: str
    role: Role
    epoch: int
    at: float


class Checkpoint(_Record, frozen=True):
    """A call's replicated state, saved in the database when no standby holds it."""

    call_id: str
    epoch: int
    version: int
    data: bytes
    saved_at: float


class SideEffect(_Record, frozen=True):
    """The record that a side effect (a debit, a notification) was applied, and once."""

    key: str  # the idempotency key: call and step, e.g. "call-17/debit/3"
    call_id: str
    kind: str  # what it was: "debit", "cdr", ...
    applied_at: float
    result: str | None  # what the first application produced, for a replay to reuse
