"""Days of the week and hours of the day, as service data states them: the rate periods
of a tariff, the time conditions of a number translation.

A `Window` is a set of weekdays and a span of minutes of the day, in local time:
``mon-fri 08:00-18:00``. A span whose end is not after its start runs past midnight and
belongs to the day it starts on: ``fri 22:00-06:00`` is Friday 22:00 to Saturday 06:00.
``00:00-24:00`` is the whole day. Pure: the caller converts its clock to local time
(`local_time`), so a replayed decision sees the same instant.
"""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = frozenset(range(7))
MINUTES_PER_DAY = 24 * 60

_HHMM = re.compile(r"^(\d{2}):(\d{2})$")


class Window(msgspec.Struct, frozen=True, kw_only=True):
    """Weekdays (0 is Monday) and minutes of the day [start, end) in local time."""

    days: frozenset[int] = ALL_DAYS
    start: int = 0  # minute of the day, 0..1439
    end: int = MINUTES_PER_DAY  # 1..1440; not after start: the span runs past midnight

    def contains(self, local: datetime) -> bool:
        """Whether the local time `local` falls in the window."""
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        # Past midnight: the evening part on a listed day, the morning part on the next.
        if day in self.days and minute >= self.start:
            return True
        return (day - 1) % 7 in self.days and minute < self.end

    def __str__(self) -> str:
        return f"{format_days(self.days)} {format_minute(self.start)}-{format_minute(self.end)}"


def parse_days(text: str) -> frozenset[int]:
    """``mon-fri``, ``sat,sun``, ``mon,wed-fri``, ``all``; ranges may wrap (``fri-mon``)."""
    text = text.strip().lower()
    if text in ("", "all", "*"):
        return ALL_DAYS
    days: set[int] = set()
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        a = _day(first)
        b = _day(last) if sep else a
        day = a
        while True:
            days.add(day)
            if day == b:
                break
            day = (day + 1) % 7
    return frozenset(days)


def format_days(days: frozenset[int]) -> str:
    """The shortest form `parse_days` reads back: ``all``, ``mon-fri``, ``sat,sun``."""
    if days == ALL_DAYS:
        return "all"
    parts: list[str] = []
    ordered = sorted(days)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{DAY_NAMES[ordered[i]]}-{DAY_NAMES[ordered[j]]}")
        else:
            parts.extend(DAY_NAMES[d] for d in ordered[i : j + 1])
        i = j + 1
    return ",".join(parts)


def _day(name: str) -> int:
    name = name.strip().lower()[:3]
    if name not in DAY_NAMES:
        raise ValueError(f"unknown day {name!r}: use mon, tue, wed, thu, fri, sat, sun")
    return DAY_NAMES.index(name)


def parse_minute(text: str, *, end: bool = False) -> int:
    """``HH:MM`` as a minute of the day; ``24:00`` is accepted as an end."""
    m = _HHMM.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a time of day: write HH:MM")
    hours, minutes = int(m.group(1)), int(m.group(2))
    if minutes >= 60 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59, or 24:00 as an end)")
    return hours * 60 + minutes


def format_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_hours(text: str) -> tuple[int, int]:
    """``08:00-18:00`` as (start, end) minutes; empty or ``all``: the whole day."""
    text = text.strip().lower()
    if text in ("", "all", "*"):
        return 0, MINUTES_PER_DAY
    first, sep, last = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not a span of hours: write HH:MM-HH:MM")
    start, stop = parse_minute(first), parse_minute(last, end=True)
    if start == stop:
        raise ValueError(f"{text!r} is empty: use 00:00-24:00 for the whole day")
    return start, stop


def window(days: str, hours: str) -> Window:
    """A window from its two texts, as the CLI and CSV files give them."""
    start, end = parse_hours(hours)
    return Window(days=parse_days(days), start=start, end=end)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (``Europe/Paris``); ValueError naming it if unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris"
        ) from None


def local_time(at: float, time_zone: str) -> datetime:
    """Wall-clock time `at` (seconds since the epoch) in the time zone `time_zone`."""
    return datetime.fromtimestamp(at, zone(time_zone))
