"""Route options as a service gives them: `ServiceCall.route`'s destinations and
keywords, checked and turned into the switch's `Route` command.

    call.route("alice", ring_timeout=20)                       # one option for all
    call.route(Destination("alice", ring_timeout=20),          # or per destination
               Destination("bob", diversion="no-answer"), max_duration=3600)

A keyword applies to every destination that does not set the same option itself.
A bad value raises ValueError naming the option, in the handler that gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import get_args

import msgspec

from twinline.link.messages import BAD_DESTINATION, DiversionReason, Route, RouteOption

__all__ = ["Destination", "DiversionReason", "route_action"]


@dataclass(frozen=True, slots=True)
class Destination:
    """One destination of a route with options of its own (None: not set here)."""

    to: str  # a registered user name or a number, resolved by the switch's plan
    ring_timeout: float | None = None  # seconds it may ring; default switch.no_answer_timeout
    caller_id: str | None = None  # the caller's number (user part) it is shown
    caller_name: str | None = None  # the caller's display name it is shown
    diversion: DiversionReason | None = None  # RFC 5806 reason: the call is forwarded
    diverted_from: str | None = None  # who forwards it; default the number dialled
    history_info: bool | None = None  # History-Info rather than Diversion


_OPTIONS = tuple(f.name for f in fields(Destination) if f.name != "to")
_NO_OPTION = RouteOption()
_REASONS: tuple[str, ...] = get_args(DiversionReason)


def route_action(
    destinations: Sequence[str | Destination],
    *,
    max_duration: float | None = None,
    **common: object,
) -> Route:
    """The `Route` for `ServiceCall.route(*destinations, **options)`."""
    if not destinations:
        raise ValueError("route() needs at least one destination")
    if max_duration is not None and not max_duration > 0:
        raise ValueError(f"route(): max_duration must be greater than 0, not {max_duration}")
    unknown = set(common) - set(_OPTIONS)
    if unknown:
        raise TypeError(f"route() got unknown options: {', '.join(sorted(unknown))}")
    names: list[str] = []
    options: list[RouteOption] = []
    for d in destinations:
        dest = Destination(d) if isinstance(d, str) else d
        if not isinstance(dest.to, str) or not dest.to or BAD_DESTINATION.search(dest.to):
            raise ValueError(f"route(): {dest.to!r} is not a destination")
        chosen = {k: v for k, v in common.items() if v is not None}
        chosen.update((k, getattr(dest, k)) for k in _OPTIONS if getattr(dest, k) is not None)
        if not chosen:
            names.append(dest.to)
            options.append(_NO_OPTION)
            continue
        diversion = chosen.get("diversion")
        if diversion is not None and diversion not in _REASONS:
            raise ValueError(
                f"route(): diversion: {diversion!r} is not a reason (one of {', '.join(_REASONS)})"
            )
        timeout = chosen.get("ring_timeout")
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"route(): ring_timeout must be greater than 0, not {timeout!r}")
        try:
            option = msgspec.convert(chosen, RouteOption)
        except msgspec.ValidationError as e:
            message, _, where = str(e).rpartition(" - at `$.")
            raise ValueError(f"route(): {where.rstrip('`') or dest.to}: {message or e}") from None
        names.append(dest.to)
        options.append(option)
    while options and options[-1] == _NO_OPTION:
        options.pop()  # a plain route stays as small on the wire as it always was
    if max_duration is None:
        return Route(names, options)  # (msgspec leaves a default off only if it is the same object)
    return Route(names, options, float(max_duration))
