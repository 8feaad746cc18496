"""The service API: what a twinline service is written against.

A service is a class with async handlers for a call's decision points and timers. Its
per-call state is a msgspec Struct (`State`) that the framework checkpoints to the
call's standby after every handler run, and a handler's effects are *requests* that the
framework carries out only after that checkpoint is safe (design invariant 3):

    class Screening(Service[ScreeningState]):
        name = "screening"
        State = ScreeningState

        async def offered(self, call: ServiceCall[ScreeningState]) -> None:
            if call.info.caller in BLOCKED:
                call.reject(603, "Decline")
            else:
                call.route(call.info.callee)

Handlers must be deterministic given the call's state and the event: on a takeover the
standby replays the events its primary handled after the last checkpoint. So a handler
reads time from `call.now` (the event's time at the switch), never from the clock, and
makes side effects outside the call through `call.once(...)`, whose idempotency key
(call, event, step) makes a replay harmless (invariant 5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

import msgspec

from twinline.link.messages import Action, CallInfo, Reject, Release
from twinline.services.destination import Destination, DiversionReason, route_action
from twinline.store.records import Statement

if TYPE_CHECKING:
    from twinline.store.base import Store

S = TypeVar("S", bound=msgspec.Struct)


class ServiceCall(Generic[S]):
    """One call as its service sees it during one handler run."""

    __slots__ = (
        "_store",
        "_writes",
        "actions",
        "event_seq",
        "id",
        "info",
        "now",
        "state",
        "step",
        "timers",
        "writes_done",
    )

    def __init__(
        self,
        call_id: str,
        info: CallInfo,
        state: S,
        *,
        now: float,
        event_seq: int,
        step: int,
        timers: dict[str, float],
        writes_done: set[str],
        store: Store | None,
    ) -> None:
        self.id = call_id
        self.info = info
        self.state = state
        self.now = now  # wall-clock time of the event at the switch
        self.event_seq = event_seq
        # This handler run's place in the call's history: the checkpoint version it
        # produces, the same on a standby that replays it.
        self.step = step
        self.timers = timers  # name -> wall-clock deadline; the framework arms them
        self.actions: list[Action] = []
        self.writes_done = writes_done
        self._writes = 0
        self._store = store

    # --- call control ------------------------------------------------------------------
    def route(
        self,
        *destinations: str | Destination,
        ring_timeout: float | None = None,
        caller_id: str | None = None,
        caller_name: str | None = None,
        diversion: DiversionReason | None = None,
        diverted_from: str | None = None,
        history_info: bool | None = None,
        max_duration: float | None = None,
    ) -> None:
        """Connect the call to the first of `destinations` that answers: registered user
        names or numbers, resolved by the switch's routing plan, tried in turn.

        The options apply to every destination that does not set its own (a
        `Destination`): `ring_timeout` seconds before moving on, the caller identity
        shown (`caller_id`, `caller_name`), a `diversion` reason (Diversion, or
        History-Info with `history_info`, and 181 to the caller). `max_duration`
        caps the answered call, enforced by the switch (see twinline.services.destination).
        """
        route = route_action(
            destinations, max_duration=max_duration, ring_timeout=ring_timeout,
            caller_id=caller_id, caller_name=caller_name, diversion=diversion,
            diverted_from=diverted_from, history_info=history_info,
        )  # fmt: skip
        self.actions.append(route)

    def reject(self, status: int, reason: str) -> None:
        """Refuse the call (before it is answered) with a SIP final response."""
        if not 400 <= status <= 699:
            raise ValueError(f"reject() takes a 4xx, 5xx or 6xx status, not {status}")
        self.actions.append(Reject(status, reason))

    def release(self) -> None:
        """Hang up the call, in whatever phase it is."""
        self.actions.append(Release())

    # --- timers --------------------------------------------------------------------------
    def set_timer(self, name: str, *, after: float | None = None, at: float | None = None) -> None:
        """Arm (or re-arm) a named timer; it fires once, on whichever instance is
        primary when it is due (invariant 6). `after` counts from `self.now`."""
        if (after is None) == (at is None):
            raise ValueError("set_timer() takes exactly one of after= or at=")
        self.timers[name] = at if at is not None else self.now + (after or 0.0)

    def cancel_timer(self, name: str) -> None:
        self.timers.pop(name, None)

    # --- side effects outside the call -----------------------------------------------
    async def once(self, kind: str, statements: Sequence[Statement]) -> bool:
        """Apply database `statements` exactly once for this call, handler run and step.

        Returns False when they had been applied already (a replay after takeover).
        """
        self._writes += 1
        key = f"{self.id}/{self.step}/{self._writes}/{kind}"
        if key in self.writes_done:
            return False
        if self._store is None:
            raise RuntimeError("this application server has no database")
        applied: bool = await self._store.once(key, self.id, kind, list(statements))
        self.writes_done.add(key)
        return applied


class Service(Generic[S]):
    """Base class of services. Subclasses set `name` and `State` and override handlers."""

    name: ClassVar[str]
    State: ClassVar[type[msgspec.Struct]]

    def __init__(self, store: Store | None = None) -> None:
        self.store = store

    def initial_state(self, info: CallInfo) -> S:
        return self.State()  # type: ignore[return-value]

    async def offered(self, call: ServiceCall[S]) -> None:
        """A new call: route it, reject it, or start a timer. Must decide (now or on a
        timer), or the caller waits."""
        raise NotImplementedError

    async def progress(self, call: ServiceCall[S], status: int) -> None:
        """The callee is ringing (180) or playing early media (183)."""

    async def answered(self, call: ServiceCall[S]) -> None:
        """The callee answered."""

    async def route_failed(self, call: ServiceCall[S], status: int, reason: str) -> None:
        """Every destination of the last `route` failed: route elsewhere or give up.
        By default the caller hears the callee's failure."""
        call.reject(status, reason)

    async def released(self, call: ServiceCall[S], cause: str) -> None:
        """The call is over (`cause`: caller-bye, callee-bye, cancelled, rejected...)."""

    async def timer(self, call: ServiceCall[S], name: str) -> None:
        """A timer set with `set_timer` is due."""
