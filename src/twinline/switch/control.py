"""Who decides what happens to a call.

The switch does the SIP work of a call itself and stops for a decision only at the
points the design names: a new call, a route that failed, and the end. `CallControl`
is that boundary. `PlanControl` decides from the routing plan alone (a switch with no
application servers); the application servers' call tracking links implement the same
protocol, so the call model does not change when decisions come from a service.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twinline.switch.routing import NoRoute, RoutingPlan

if TYPE_CHECKING:
    from twinline.switch.b2bua import SwitchCore
    from twinline.switch.call import Call


class CallControl(Protocol):
    def offered(self, call: Call, now: float) -> None:
        """A new call: answer with `SwitchCore.route` or `.reject`, now or later."""

    def route_failed(self, call: Call, status: int, reason: str, now: float) -> None:
        """Every target of the last route failed: route again or reject."""

    def progress(self, call: Call, status: int, now: float) -> None:
        """The callee started ringing (reported, no decision needed)."""

    def answered(self, call: Call, now: float) -> None:
        """The callee answered (reported, no decision needed)."""

    def released(self, call: Call, now: float) -> None:
        """The call ended; `call.cause` says why."""


class PlanControl:
    """Decisions from the routing plan: route to what the number reaches, else reject."""

    def __init__(self, plan: RoutingPlan, switch: SwitchCore) -> None:
        self.plan = plan
        self.switch = switch

    def offered(self, call: Call, now: float) -> None:
        try:
            targets = self.plan.resolve(call.dialled, now)
        except NoRoute as e:
            self.switch.reject(call, e.status, e.reason, now)
            return
        self.switch.route(call, targets, now)

    def route_failed(self, call: Call, status: int, reason: str, now: float) -> None:
        self.switch.reject(call, status, reason, now)

    def progress(self, call: Call, status: int, now: float) -> None:
        pass

    def answered(self, call: Call, now: float) -> None:
        pass

    def released(self, call: Call, now: float) -> None:
        pass
