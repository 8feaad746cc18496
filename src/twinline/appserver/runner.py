"""Runs a call's service for one input and reports what it produced.

The replication core asks for a run (`RunHandler`) and takes its outcome
(`RunOutcome`); this is the part between, the only one that awaits (a handler may read
the database or apply an effect exactly once). The runtime and the public test
harness (`twinline.services.testing`) both use it, so services are tested as they run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import msgspec

from twinline.appserver.core import RunHandler, RunOutcome, TimerDue
from twinline.link.messages import Action, Event, Offered, Reject, Release, Route
from twinline.services.api import Service, ServiceCall
from twinline.services.chain import SEPARATOR, ChainService, member_names
from twinline.store.base import Store

log = logging.getLogger("twinline.appserver")


class ServiceRunner:
    def __init__(self, services: Mapping[str, Service[Any]], store: Store | None) -> None:
        self.services = services
        self.store = store
        self._chains: dict[str, Service[Any]] = {}
        self._encoder = msgspec.msgpack.Encoder()

    def service(self, name: str) -> Service[Any] | None:
        """The service a call was offered to: one by name, or a chain of them."""
        found = self.services.get(name)
        if found is not None or SEPARATOR not in name:
            return found
        chain = self._chains.get(name)
        if chain is None:
            members = [self.services.get(n) for n in member_names(name)]
            if any(m is None for m in members):
                return None
            chain = self._chains[name] = ChainService(members)  # type: ignore[arg-type]
        return chain

    async def run(self, req: RunHandler) -> RunOutcome:
        inst, item = req.instance, req.item
        record = inst.record
        service = self.service(inst.offered.service)
        if service is None:
            # Configuration validation keeps this from happening; never run another
            # service in its place.
            log.error("call %s: no service named %r here", inst.call, inst.offered.service)
            return RunOutcome(
                state_bytes=inst.state_bytes, timers=inst.timers, record=record, error=True,
                actions=[Reject(500, "Service Unavailable")], released=_is_release(item),
            )  # fmt: skip
        state = inst.live
        if state is None:
            if inst.state_bytes:
                state = msgspec.msgpack.decode(inst.state_bytes, type=service.State)
            else:
                state = service.initial_state(inst.offered.info)
        timers = dict(inst.timers)
        if isinstance(item, TimerDue):
            del timers[item.name]
        call: ServiceCall[Any] = ServiceCall(
            inst.call, inst.offered.info, state, now=req.now, run=req.run, timers=timers,
            store=self.store, timezone=getattr(service, "timezone", "UTC"),
            duration=item.duration if isinstance(item, Event) else 0.0,
            max_duration=record.max_duration,
            event=item if isinstance(item, Event) else None,
        )  # fmt: skip
        released = False
        error = False
        try:
            if isinstance(item, Offered):
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
            error = True
            log.exception("call %s: service %s failed handling %s", inst.call, service.name, item)
            # Whatever the run asked for is void; the call must not hang unanswered.
            call.actions = [Release()] if record.answered_at else [Reject(500, "Service Error")]
        if call.cost is not None:
            record = msgspec.structs.replace(record, cost=call.cost[0], currency=call.cost[1])
        if call.max_duration != record.max_duration:
            record = msgspec.structs.replace(record, max_duration=call.max_duration)
        call.actions = [_limited(a, call.max_duration) for a in call.actions]
        for action in call.actions:
            if isinstance(action, Reject):
                record = msgspec.structs.replace(record, status=action.status, reason=action.reason)
        inst.live = call.state  # a handler may have replaced the object
        return RunOutcome(
            state_bytes=self._encoder.encode(call.state), timers=call.timers,
            actions=call.actions, record=record, released=released, error=error,
        )  # fmt: skip


def _limited(action: Action, limit: float) -> Action:
    """A route carries the call's duration limit (the shorter, when it has its own)."""
    if not limit or not isinstance(action, Route):
        return action
    if action.max_duration and action.max_duration <= limit:
        return action
    return msgspec.structs.replace(action, max_duration=limit)


def _is_release(item: object) -> bool:
    return isinstance(item, Event) and item.kind == "released"
