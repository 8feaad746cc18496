"""A service loaded as a plug-in by `module:Class` (`tests.integration.plugin_service:Hunt`)
in the integration tests, with its settings in `[services.hunt]`.

It routes every call to its configured destinations in turn, with the route options
the settings give: a ring timeout for each destination but the last, a diversion
reason for each after the first, the caller identity presented, a maximum duration
for the call.
"""

from __future__ import annotations

import msgspec

from twinline.services import Destination, Service, ServiceCall
from twinline.services.destination import DiversionReason


class HuntConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    destinations: list[str]
    ring_timeout: float | None = None
    diversion: DiversionReason | None = None
    max_duration: float | None = None
    caller_id: str | None = None
    caller_name: str | None = None


class HuntState(msgspec.Struct):
    routed: bool = False


class Hunt(Service[HuntState]):
    name = "hunt"
    State = HuntState
    Config = HuntConfig
    config: HuntConfig

    async def offered(self, call: ServiceCall[HuntState]) -> None:
        settings = self.config
        last = len(settings.destinations) - 1
        destinations = [
            Destination(
                number,
                ring_timeout=settings.ring_timeout if i < last else None,
                diversion=settings.diversion if i > 0 else None,
            )
            for i, number in enumerate(settings.destinations)
        ]
        call.state.routed = True
        call.route(
            *destinations,
            max_duration=settings.max_duration,
            caller_id=settings.caller_id,
            caller_name=settings.caller_name,
        )
