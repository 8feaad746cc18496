"""The basic call: connect the caller to what was dialled, as the routing plan says."""

from __future__ import annotations

import msgspec

from twinline.services.api import Service, ServiceCall


class BasicState(msgspec.Struct):
    routed: bool = False


class BasicCall(Service[BasicState]):
    name = "basic"
    State = BasicState

    async def offered(self, call: ServiceCall[BasicState]) -> None:
        call.state.routed = True
        call.route(call.info.callee)
