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

Handlers must be deterministic given the call's state and what they handle: on a
takeover the standby replays the inputs its primary handled after the last checkpoint,
perhaps in another order (a due timer and a buffered event). So a handler reads time
from `call.now` (the input's time at the switch), draws chance from `call.random()`,
and makes side effects outside the call through `call.once(name, effect)`, whose
idempotency key is made of the call, the *input* the run handles (the offer, event N,
timer T due at D) and the effect's name: a replay in any order finds the key applied
and gets back the first application's result (invariant 5).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, overload
from zoneinfo import ZoneInfo

import msgspec

from twinline.link.messages import Action, CallInfo, Event, Reject, Release
from twinline.services.destination import Destination, DiversionReason, route_action
from twinline.store.records import Statement

if TYPE_CHECKING:
    from twinline.store.base import Store, Tx

S = TypeVar("S", bound=msgspec.Struct)
T = TypeVar("T")

_UTC = ZoneInfo("UTC")


def statements(*stmts: Statement) -> Callable[[Tx], None]:
    """An effect that runs SQL statements (`?` placeholders), for `ServiceCall.once`."""

    def effect(tx: Tx) -> None:
        for sql, params in stmts:
            tx.execute(sql, params)

    return effect


class ServiceCall(Generic[S]):
    """One call as its service sees it during one handler run."""

    __slots__ = (
        "_draws",
        "_names",
        "_store",
        "actions",
        "chained",
        "cost",
        "duration",
        "event",
        "id",
        "info",
        "max_duration",
        "now",
        "run",
        "scope",
        "state",
        "timers",
        "timezone",
    )

    def __init__(
        self,
        call_id: str,
        info: CallInfo,
        state: S,
        *,
        now: float,
        run: str,
        timers: dict[str, float],
        store: Store | None,
        scope: str = "",
        timezone: str = "UTC",
        duration: float = 0.0,
        chained: bool = False,
        max_duration: float = 0.0,
        event: Event | None = None,
    ) -> None:
        self.id = call_id
        self.info = info
        self.state = state
        self.now = now  # wall-clock time of the input at the switch (an event, a timer's due)
        # What this run handles: "offer", "e3" (event 3), "t:credit@1700000000.000000".
        self.run = run
        self.scope = scope  # the service's name in a chain, so chained keys never collide
        self.timers = timers  # name -> wall-clock deadline; the framework arms them
        self.timezone = timezone
        # In `released`: seconds from the answer to the release, as the switch measured
        # them (0: never answered). What a call is billed on.
        self.duration = duration
        self.cost: tuple[Decimal, str] | None = None  # what `record_cost` recorded
        # In a chain with services after this one: not deciding passes the call on.
        self.chained = chained
        self.max_duration = max_duration  # the call's limit so far (0: none)
        # The switch's event this run handles (None for the offer and timers): which
        # destination rang, answered or failed (`destination`), every destination's
        # outcome (`outcomes`, route_failed), the answered duration (`duration`, released).
        self.event = event
        self.actions: list[Action] = []
        self._names: dict[str, int] = {}
        self._draws = 0
        self._store = store

    @property
    def store(self) -> Store | None:
        return self._store

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

    def limit_duration(self, seconds: float) -> None:
        """Cap the answered call at `seconds`, whichever service of a chain routes it:
        every route the call is given, now or later, carries the limit, and the switch
        enforces it even with no application server left (a prepaid call's credit)."""
        if not seconds > 0:
            raise ValueError(f"limit_duration() takes a positive number, not {seconds}")
        self.max_duration = min(self.max_duration, seconds) if self.max_duration else seconds

    @property
    def decided(self) -> bool:
        """A route, reject or release was given in this run."""
        return bool(self.actions)

    def reject(self, status: int, reason: str) -> None:
        """Refuse the call (before it is answered) with a SIP final response."""
        if not 400 <= status <= 699:
            raise ValueError(f"reject() takes a 4xx, 5xx or 6xx status, not {status}")
        self.actions.append(Reject(status, reason))

    def release(self) -> None:
        """Hang up the call, in whatever phase it is."""
        self.actions.append(Release())

    def record_cost(self, amount: Decimal, currency: str) -> None:
        """What the call cost, in `currency` (ISO 4217): its CDR carries it. Record it
        from what `once` returned (the amount actually charged), so a replay records
        the same."""
        if not amount.is_finite() or amount < 0:
            raise ValueError(f"record_cost() takes an amount of 0 or more, not {amount}")
        self.cost = (amount, currency)

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
    def effect_key(self, name: str) -> str:
        """The idempotency key of this run's effect `name` (a name used again in one
        run counts: `debit`, `debit#2`)."""
        n = self._names.get(name, 0) + 1
        self._names[name] = n
        suffix = name if n == 1 else f"{name}#{n}"
        scope = f"{self.scope}/" if self.scope else ""
        return f"{self.id}/{self.run}/{scope}{suffix}"

    @overload
    async def once(self, name: str, effect: Callable[[Tx], None]) -> None: ...

    @overload
    async def once(self, name: str, effect: Callable[[Tx], T], returns: type[T]) -> T: ...

    async def once(
        self, name: str, effect: Callable[[Tx], Any], returns: type[Any] | None = None
    ) -> Any:
        """Apply `effect` (a function of a database transaction) exactly once for this
        call, input and `name`, and return its result (JSON-encodable; decoded as
        `returns`). A replay gets the first application's result back, whatever the
        database holds now, so the replaying instance decides what the first one did.
        """
        key = self.effect_key(name)
        if self._store is None:
            raise RuntimeError("this application server has no database")

        def apply(tx: Tx) -> str | None:
            result = effect(tx)
            return None if result is None else msgspec.json.encode(result).decode()

        kind = f"{self.scope}/{name}" if self.scope else name
        outcome = await self._store.once_with(key, self.id, kind, apply)
        if returns is None or outcome.result is None:
            return None
        return msgspec.json.decode(outcome.result, type=returns)

    async def read(self, query: Callable[[Tx], T]) -> T:
        """Read service data (a function of a read-only transaction). A replay may read
        what changed since: decide anything that must replay the same through `once`."""
        if self._store is None:
            raise RuntimeError("this application server has no database")
        return await self._store.read(query)

    # --- deterministic helpers -----------------------------------------------------------
    def random(self, purpose: str = "") -> float:
        """A number in [0, 1) drawn from the call, this run's input and `purpose`: a
        replay draws the same (a weighted choice splits calls as the weights say, and
        the standby that replays it chooses what the primary chose)."""
        self._draws += 1
        seed = f"{self.id}/{self.run}/{self.scope}/{purpose}/{self._draws}".encode()
        digest = hashlib.blake2b(seed, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def local_time(self, timezone: str | None = None) -> dt.datetime:
        """`now` as an aware datetime in `timezone` (default: the service's)."""
        name = timezone or self.timezone
        zone = _UTC if name == "UTC" else ZoneInfo(name)
        return dt.datetime.fromtimestamp(self.now, tz=zone)


class Service(Generic[S]):
    """Base class of services. Subclasses set `name` and `State` and override handlers."""

    name: ClassVar[str]
    State: ClassVar[type[msgspec.Struct]]
    # The type of the service's settings, `[services.NAME]`, or None if it takes none
    # (twinline.services.registry); narrow `config` in a subclass to type it.
    Config: ClassVar[type[msgspec.Struct] | None] = None

    def __init__(self, store: Store | None = None, config: Any = None) -> None:
        self.store = store
        self.config = config  # an instance of Config, checked at start

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
        By default the caller hears the callee's failure (in a chain, the services
        after this one are asked first)."""
        if not call.chained:
            call.reject(status, reason)

    async def released(self, call: ServiceCall[S], cause: str) -> None:
        """The call is over (`cause`: caller-bye, callee-bye, cancelled, rejected...)."""

    async def timer(self, call: ServiceCall[S], name: str) -> None:
        """A timer set with `set_timer` is due."""
