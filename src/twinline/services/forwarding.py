"""Call forwarding and follow-me: unconditional, on busy, on no answer, when
unavailable, and hunting through a list.

At the offer the service reads the forwarding plans (`forwarding` table, `twinline
forwarding ...`) of the callee and of every party it forwards to, a few diversions deep,
and keeps them in the call's state: each later decision is a function of that state
and the switch's events, so a standby that replays them decides the same.

The party being called (first the callee) is rung by its plan:

- `always`: not rung at all; the call goes to the target (reason `unconditional`);
- `hunt`: its list is rung in order, each step for its `ring_seconds` (reason
  `follow-me` for every step but the party itself), the switch moving on when a step
  is busy, unreachable or rings out;
- otherwise the party itself, for `ring_seconds` of its `no-answer` rule if it has one.

When that fails (a hunt list: its last step), busy (486, 600) goes to its `busy`
target (reason `user-busy`), no answer to its `no-answer` target (`no-answer`), not
registered or unreachable (480, 408, 5xx) to its `unavailable` target (`unavailable`);
the target is then the party called, and its own plan applies. Anything else, or no
rule for it: the caller hears the failure.

Each diversion goes out with the switch's route option `diversion`: the target's INVITE
carries a Diversion header (or History-Info, `[services.forwarding] history_info`)
naming the diverting party and the reason, its Max-Forwards one less than the caller's,
and the caller hears `181 Call Is Being Forwarded`.

Loops stop with `482 Loop Detected` when a plan leads back to a party the call was
diverted from, in this call or before it arrived (its Diversion or History-Info names
the party), and with `483 Too Many Hops` past `max_diversions` diversions (those the
call arrived with count) or when the caller's Max-Forwards leaves no hop to divert
with (1 or less).
"""

from __future__ import annotations

from typing import Any

import msgspec

from twinline.link.messages import DiversionReason
from twinline.services.api import Service, ServiceCall
from twinline.services.destination import Destination
from twinline.services.parties import diversion_history, hops_left
from twinline.store.base import Tx
from twinline.store.servicedata import ForwardingPlan, HuntStep, find_forwarding

BUSY = frozenset({486, 600})
UNAVAILABLE = frozenset({408, 480, 500, 502, 503, 504})
NO_ANSWER = "No Answer"  # the switch's reason phrase when a destination rings out
MAX_PLANS = 16  # plans read at the offer at most (the parties a call can reach)


class ForwardingSettings(msgspec.Struct, forbid_unknown_fields=True):
    """`[services.forwarding]`."""

    max_diversions: int = 5  # diversions a call may go through, ours and earlier ones
    history_info: bool = False  # History-Info (RFC 7044) rather than Diversion


class ForwardingState(msgspec.Struct):
    plans: dict[str, ForwardingPlan] = {}  # read at the offer, by subscriber
    party: str = ""  # who is being called now: whose plan applies when it fails
    diverted: list[str] = []  # the parties this service diverted the call from, in order
    arrived_from: list[str] = []  # the parties it was diverted from before it arrived
    earlier: int = 0  # diversions the call had when it arrived
    hunting: bool = False  # the party's hunt list is being rung (for the record)
    outcome: str = ""  # how the service ended it, when it did (loop, hops...)


def read_plans(tx: Tx, subscriber: str) -> dict[str, ForwardingPlan]:
    """The plans of `subscriber` and of the parties its plan reaches, breadth first,
    at most MAX_PLANS."""
    plans: dict[str, ForwardingPlan] = {}
    queue, seen = [subscriber], {subscriber}
    while queue and len(plans) < MAX_PLANS:
        party = queue.pop(0)
        plan = find_forwarding(tx, party)
        if plan is None:
            continue
        plans[party] = plan
        for target in (plan.always, plan.busy, plan.no_answer, plan.unavailable):
            if target is not None and target not in seen:
                seen.add(target)
                queue.append(target)
    return plans


def _hunt_step(
    step: HuntStep, party: str, reason: DiversionReason | None, diverted_from: str | None
) -> Destination:
    """One step of `party`'s hunt list: rung for its time; a step other than the party
    itself is a diversion (follow-me, unless the call reached the party diverted)."""
    if step.target == party and reason is None:
        return Destination(step.target, ring_timeout=float(step.ring_seconds))
    return Destination(
        step.target,
        ring_timeout=float(step.ring_seconds),
        diversion=reason or "follow-me",
        diverted_from=diverted_from or party,
    )


class Forwarding(Service[ForwardingState]):
    name = "forwarding"
    State = ForwardingState
    Config = ForwardingSettings

    def __init__(self, store: Any = None, config: ForwardingSettings | None = None) -> None:
        super().__init__(store, config or ForwardingSettings())
        self.settings: ForwardingSettings = self.config

    async def offered(self, call: ServiceCall[ForwardingState]) -> None:
        state = call.state
        subscriber = call.info.callee
        state.plans = await call.read(lambda tx: read_plans(tx, subscriber))
        if subscriber not in state.plans:
            if not call.chained:
                call.route(subscriber)
            return
        history = diversion_history(call.info)
        state.earlier = history.count
        state.arrived_from = list(history.diverted_from)
        if subscriber in state.arrived_from:
            self._stop(call, 482, "Loop Detected")  # it was forwarded from here before
            return
        self._call(call, subscriber, None)

    async def route_failed(
        self, call: ServiceCall[ForwardingState], status: int, reason: str
    ) -> None:
        state = call.state
        plan = state.plans.get(state.party)
        state.hunting = False  # a hunt's failure is its last step's: the rules below apply
        if plan is None:
            self._give_up(call, status, reason)
        elif status in BUSY and plan.busy:
            self._divert(call, plan.busy, "user-busy")
        elif status == 480 and reason == NO_ANSWER and plan.no_answer:
            self._divert(call, plan.no_answer, "no-answer")
        elif status in UNAVAILABLE and reason != NO_ANSWER and plan.unavailable:
            self._divert(call, plan.unavailable, "unavailable")
        else:
            self._give_up(call, status, reason)

    # --- decisions ------------------------------------------------------------------------
    def _divert(
        self, call: ServiceCall[ForwardingState], target: str, reason: DiversionReason
    ) -> None:
        """Forward the call from the party being called to `target`."""
        state = call.state
        if target == state.party or target in state.diverted or target in state.arrived_from:
            self._stop(call, 482, "Loop Detected")
            return
        if state.earlier + len(state.diverted) + 1 > self.settings.max_diversions:
            self._stop(call, 483, "Too Many Hops")
            return
        hops = hops_left(call.info)
        if hops is not None and hops <= 1:
            self._stop(call, 483, "Too Many Hops")  # the diverted INVITE could go nowhere
            return
        state.diverted.append(state.party)
        self._call(call, target, reason)

    def _call(
        self, call: ServiceCall[ForwardingState], party: str, reason: DiversionReason | None
    ) -> None:
        """Call `party` by its plan; `reason`: why the call was diverted to it."""
        state = call.state
        state.party = party
        plan = state.plans.get(party)
        if plan is not None and plan.always:
            self._divert(call, plan.always, "unconditional")
            return
        diverted_from = state.diverted[-1] if reason else None
        history_info = self.settings.history_info or None
        if plan is not None and plan.hunt:
            state.hunting = True
            call.route(
                *(_hunt_step(step, party, reason, diverted_from) for step in plan.hunt),
                history_info=history_info,
            )
            return
        ring = plan.no_answer_seconds if plan is not None and plan.no_answer else None
        call.route(
            Destination(party, ring_timeout=float(ring) if ring else None),
            diversion=reason,
            diverted_from=diverted_from,
            history_info=history_info,
        )

    def _stop(self, call: ServiceCall[ForwardingState], status: int, reason: str) -> None:
        call.state.outcome = f"{status} {reason}"
        call.reject(status, reason)

    def _give_up(self, call: ServiceCall[ForwardingState], status: int, reason: str) -> None:
        if not call.chained:
            call.reject(status, reason)
