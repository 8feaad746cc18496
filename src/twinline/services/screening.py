"""Screening: the callee decides who may call, by lists of caller prefixes.

At the offer the service reads the callee's lists and the operator's (`screening`
table, `twinline screening ...`) and decides once:

- a caller the operator-wide allow list matches (emergency and service numbers) is
  allowed, whatever the callee's lists say;
- an anonymous caller (From `anonymous`, `Privacy: id`) to a callee who rejects
  anonymous calls: `433 Anonymity Disallowed` (RFC 5079);
- a caller whose longest matching prefix in the callee's lists is a block:
  `603 Decline`;
- anyone else is allowed.

An allowed call is routed to the callee when screening is the call's only service; in
a chain (screening, then forwarding, then basic) screening does not decide, and the
next service routes it. The caller's number is the network's asserted identity
(P-Asserted-Identity) when there is one, else From's: a caller who hides its number
from the callee is still screened by the number the network knows.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from twinline.services.api import Service, ServiceCall
from twinline.services.parties import caller_identity, hides_identity
from twinline.store.servicedata import Screening as Lists
from twinline.store.servicedata import digits_of, find_screening, screen

Decision = Literal["", "allow", "block", "anonymous"]

ANSWERS = {
    "block": (603, "Decline"),
    "anonymous": (433, "Anonymity Disallowed"),
}


class ScreeningState(msgspec.Struct):
    verdict: Decision = ""  # decided at the offer ("": not yet)


def decide(lists: Lists, identity: str | None, anonymous: bool) -> Decision:
    """The screening decision for a caller (`identity`: its number, None if unknown).
    The operator's allow list wins over everything; then the callee's anonymous
    rejection; then the longest matching prefix of its lists (allow on a tie)."""
    if identity is not None:
        digits = digits_of(identity)
        if any(digits.startswith(p) for p in lists.operator_allow):
            return "allow"
    if anonymous and lists.reject_anonymous:
        return "anonymous"
    if identity is None:
        return "allow"
    verdict = screen(lists, identity)
    return "allow" if verdict == "anonymous" else verdict


class ScreeningService(Service[ScreeningState]):
    name = "screening"
    State = ScreeningState

    async def offered(self, call: ServiceCall[ScreeningState]) -> None:
        callee = call.info.callee
        lists = await call.read(lambda tx: find_screening(tx, callee))
        call.state.verdict = decide(lists, caller_identity(call.info), hides_identity(call.info))
        answer = ANSWERS.get(call.state.verdict)
        if answer is not None:
            call.reject(*answer)
        elif not call.chained:
            call.route(callee)  # alone, screening connects the calls it lets through
