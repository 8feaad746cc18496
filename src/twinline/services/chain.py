"""Services chained for one call: screening, then forwarding, then basic; prepaid
around any route.

A chain is a service made of services, named by their names joined with `>`
(`screening>forwarding>basic`), as a plan entry lists them
(`service = ["screening", "forwarding", "basic"]`). It keeps each member's state, timers
and side effects apart, and hands each input to its members in order:

| input | members asked |
|---|---|
| the offer, a failed route | in order, until one decides (route, reject or release) |
| a timer | the member that set it |
| ringing, answer, release | every member, in order |

So a member that does not decide passes the call on: screening lets an allowed caller
through, prepaid authorizes and limits the duration (`limit_duration`), and a later
member routes. A member knows whether any follow it (`call.chained`): alone, it must
decide itself. The default `route_failed` rejects only in the last member.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

from twinline.link.messages import CallInfo
from twinline.services.api import Service, ServiceCall

SEPARATOR = ">"
_TIMER = ":"  # a member's timer "t" is "member:t" in the call's timers


class ChainState(msgspec.Struct):
    parts: list[bytes] = []  # each member's state, MessagePack, in the chain's order


def chain_name(names: Sequence[str]) -> str:
    return SEPARATOR.join(names)


def member_names(name: str) -> list[str]:
    return name.split(SEPARATOR)


Handler = Callable[[Service[Any], ServiceCall[Any]], Awaitable[None]]


class ChainService(Service[ChainState]):
    State = ChainState

    def __init__(self, members: Sequence[Service[Any]]) -> None:
        super().__init__(members[0].store if members else None)
        if len(members) < 2:
            raise ValueError("a chain needs at least two services")
        self.members = list(members)
        self.name = chain_name([m.name for m in members])  # type: ignore[misc]
        self.timezone = getattr(members[0], "timezone", "UTC")
        self._encoder = msgspec.msgpack.Encoder()

    def initial_state(self, info: CallInfo) -> ChainState:
        return ChainState([self._encoder.encode(m.initial_state(info)) for m in self.members])

    # --- dispatch ----------------------------------------------------------------------------
    async def offered(self, call: ServiceCall[ChainState]) -> None:
        await self._until_decided(call, lambda s, c: s.offered(c))

    async def route_failed(self, call: ServiceCall[ChainState], status: int, reason: str) -> None:
        await self._until_decided(call, lambda s, c: s.route_failed(c, status, reason))

    async def progress(self, call: ServiceCall[ChainState], status: int) -> None:
        await self._every(call, lambda s, c: s.progress(c, status))

    async def answered(self, call: ServiceCall[ChainState]) -> None:
        await self._every(call, lambda s, c: s.answered(c))

    async def released(self, call: ServiceCall[ChainState], cause: str) -> None:
        await self._every(call, lambda s, c: s.released(c, cause))

    async def timer(self, call: ServiceCall[ChainState], name: str) -> None:
        owner, _, own_name = name.partition(_TIMER)
        for i, member in enumerate(self.members):
            if member.name == owner:
                await self._run(call, i, lambda s, c: s.timer(c, own_name))
                return

    async def _until_decided(self, call: ServiceCall[ChainState], handler: Handler) -> None:
        for i in range(len(self.members)):
            await self._run(call, i, handler)
            if call.decided:
                return

    async def _every(self, call: ServiceCall[ChainState], handler: Handler) -> None:
        for i in range(len(self.members)):
            await self._run(call, i, handler)

    # --- one member's run --------------------------------------------------------------------
    async def _run(self, call: ServiceCall[ChainState], i: int, handler: Handler) -> None:
        member = self.members[i]
        prefix = f"{member.name}{_TIMER}"
        parts = call.state.parts
        state = (
            msgspec.msgpack.decode(parts[i], type=member.State)
            if i < len(parts)
            else member.initial_state(call.info)
        )
        timers = {k[len(prefix) :]: v for k, v in call.timers.items() if k.startswith(prefix)}
        sub: ServiceCall[Any] = ServiceCall(
            call.id, call.info, state, now=call.now, run=call.run, timers=timers,
            store=call.store, scope=member.name, timezone=call.timezone,
            chained=i < len(self.members) - 1, max_duration=call.max_duration,
            duration=call.duration, event=call.event,
        )  # fmt: skip
        sub.actions = call.actions  # one list: what a member decides is the call's decision
        try:
            await handler(member, sub)
        finally:
            while len(parts) <= i:
                parts.append(
                    self._encoder.encode(self.members[len(parts)].initial_state(call.info))
                )
            parts[i] = self._encoder.encode(sub.state)
            for name in [k for k in call.timers if k.startswith(prefix)]:
                del call.timers[name]
            call.timers.update((prefix + k, v) for k, v in sub.timers.items())
            call.max_duration = sub.max_duration
            if sub.cost is not None:
                call.cost = sub.cost
