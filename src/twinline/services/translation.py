"""Number translation: a dialled number (toll-free, premium, a company's one number)
reaches destinations chosen by time, day, holiday, caller prefix and shares.

At the offer the service reads the number's destinations that apply now to this caller
(`servicedata.translate`: time of day and day of week in each destination's time zone,
the holiday rule, the longest caller prefix) and keeps them in the call's state. It
then routes one destination at a time:

- among the destinations of the lowest priority not yet tried, one is drawn by weight
  (`call.random`, so a replay after a takeover draws the same);
- when it is busy, does not answer (`ring_seconds`) or cannot be reached, the next is
  drawn among those that remain, their shares redistributed (weights 3:1:1 and the
  first busy: the other two get half each); when a priority is used up, the next
  priority's destinations are drawn.

The caller hears `404 Not Found` for a number that is not translated, `480 Temporarily
Unavailable` when no destination applies now (out of hours, no rule for this caller),
`486 Busy Here` when every destination tried was busy, else the last failure (`480 No
Answer`...); a destination that refuses for good (`403`, `404`, `603`...) is not
overflowed: the caller hears its refusal.

In a chain, a number that is not translated passes to the next service.
"""

from __future__ import annotations

from typing import Any

import msgspec

from twinline.services.api import Service, ServiceCall
from twinline.services.parties import caller_identity
from twinline.store.servicedata import translate

# Failures a destination overflows on: busy, no answer, unreachable or overloaded.
BUSY = frozenset({486, 600})
OVERFLOW = BUSY | frozenset({408, 480, 500, 502, 503, 504})


class TranslationSettings(msgspec.Struct, forbid_unknown_fields=True):
    """`[services.translation]`."""

    # Seconds a destination may ring before the call overflows (0: the switch's
    # no_answer_timeout).
    ring_seconds: float = 0.0


class Choice(msgspec.Struct, array_like=True):
    """A destination not tried yet, as the offer found it."""

    target: str
    weight: int
    priority: int


class TranslationState(msgspec.Struct):
    remaining: list[Choice] = []  # by priority, then step
    tried: list[str] = []  # targets routed, in order
    statuses: list[int] = []  # their failures, in order
    routed: bool = False  # this service routes the call (a translated number)


def draw(remaining: list[Choice], roll: float) -> int:
    """The index in `remaining` of the destination a roll in [0, 1) picks: among the
    lowest priority, by weight (in step order if every weight there is 0)."""
    top = min(c.priority for c in remaining)
    group = [i for i, c in enumerate(remaining) if c.priority == top]
    total = sum(remaining[i].weight for i in group)
    if total <= 0:
        return group[0]
    point = roll * total
    for i in group:
        point -= remaining[i].weight
        if point < 0:
            return i
    return next(i for i in reversed(group) if remaining[i].weight > 0)  # roll rounding


class Translation(Service[TranslationState]):
    name = "translation"
    State = TranslationState
    Config = TranslationSettings

    def __init__(self, store: Any = None, config: TranslationSettings | None = None) -> None:
        super().__init__(store, config or TranslationSettings())
        self.settings: TranslationSettings = self.config

    async def offered(self, call: ServiceCall[TranslationState]) -> None:
        number, at = call.info.callee, call.now
        caller = caller_identity(call.info) or ""
        found = await call.read(lambda tx: translate(tx, number, caller, at))
        if found is None:
            if not call.chained:
                call.reject(404, "Not Found")
            return
        call.state.routed = True
        call.state.remaining = [Choice(d.target, d.weight, d.priority) for d in found]
        if not found:
            call.reject(480, "Temporarily Unavailable")
            return
        self._next(call)

    async def route_failed(
        self, call: ServiceCall[TranslationState], status: int, reason: str
    ) -> None:
        state = call.state
        if not state.routed:
            if not call.chained:
                call.reject(status, reason)
            return
        state.statuses.append(status)
        if status in OVERFLOW and state.remaining:
            self._next(call)
        elif status in OVERFLOW and all(s in BUSY for s in state.statuses):
            call.reject(486, "Busy Here")
        else:
            call.reject(status, reason)

    def _next(self, call: ServiceCall[TranslationState]) -> None:
        state = call.state
        choice = state.remaining.pop(draw(state.remaining, call.random("share")))
        state.tried.append(choice.target)
        call.route(choice.target, ring_timeout=self.settings.ring_seconds or None)
