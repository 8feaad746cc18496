"""Rating: what a call costs, and how long a credit lasts. Pure: no IO, no clock.

Money is `Decimal`, never a float. Every cost is computed exactly (as a fraction) and
rounded once, at the end, to the tariff's number of decimals by its rounding rule, so
that 500 - 25 is 475 and no drift accumulates over a call.

A call's cost, for an answered duration of `s` whole seconds::

    billed(s) = 0                                   if s == 0
              = initial                             if 0 < s <= initial
              = initial + ceil((s - initial) / increment) * increment   otherwise
    cost(s)   = round(connect_fee + per_minute * billed(s) / 60)

The connect fee is part of the one cost of the call: charged once, with its first
second (an unanswered call is not rated at all). Increments are written as
``initial/increment`` in seconds: 60/60 bills by the started minute, 30/6 bills the
first 30 seconds then by 6 seconds, 1/1 by the second.

Rate periods: a `Rate` (one destination prefix) has a base price and periods by day of
the week and time of day in its time zone (peak, off-peak, weekend). The period in
force when the call is answered prices the whole call (`Rate.tariff_at`); a call is not
split across periods, so its cost and its credit timer are fixed at the answer.
"""

from __future__ import annotations

import enum
import math
from datetime import datetime
from decimal import Decimal
from fractions import Fraction

import msgspec

from twinline.services.timeofday import Window, local_time

# Money kept by the database is an integer of millionths of the currency unit (see
# docs/services.md): no amount, price or rounding may use more decimals than this.
MAX_DECIMALS = 6
_SMALLEST = Decimal(1).scaleb(-MAX_DECIMALS)


class Rounding(enum.StrEnum):
    """How a cost is rounded to the tariff's decimals."""

    UP = "up"  # away from zero: a started fraction of the smallest unit is charged
    HALF_UP = "half-up"  # to the nearest, halves up (0.00125 -> 0.0013 at 4 decimals)
    HALF_EVEN = "half-even"  # to the nearest, halves to the even digit (banker's)
    DOWN = "down"  # towards zero: fractions of the smallest unit are given away


class Tariff(msgspec.Struct, frozen=True, kw_only=True):
    """The terms that price one call: fixed when the call is answered."""

    per_minute: Decimal
    connect_fee: Decimal = Decimal(0)
    initial: int = 60  # seconds billed for the first block (0: the first block is `increment`)
    increment: int = 60  # seconds per further block
    decimals: int = 4  # the cost is rounded to this many decimals
    rounding: Rounding = Rounding.UP

    def __post_init__(self) -> None:
        check_tariff(self)


class RatePeriod(msgspec.Struct, frozen=True, kw_only=True):
    """A price in force during a window of the week (local time of the rate)."""

    window: Window
    per_minute: Decimal
    connect_fee: Decimal = Decimal(0)


class Rate(msgspec.Struct, frozen=True, kw_only=True):
    """The price of calls to one destination prefix (the longest match wins)."""

    prefix: str
    currency: str
    tariff: Tariff  # the base price, and the increments and rounding of every period
    periods: tuple[RatePeriod, ...] = ()  # the first whose window holds the answer time wins
    time_zone: str = "UTC"
    description: str = ""

    def tariff_at(self, at: float) -> Tariff:
        """The tariff for a call answered at `at` (seconds since the epoch)."""
        return self.tariff_local(local_time(at, self.time_zone))

    def tariff_local(self, local: datetime) -> Tariff:
        for period in self.periods:
            if period.window.contains(local):
                return msgspec.structs.replace(
                    self.tariff, per_minute=period.per_minute, connect_fee=period.connect_fee
                )
        return self.tariff


class Authorization(msgspec.Struct, frozen=True, kw_only=True):
    """What a call may spend: `hold` reserved on the account buys `max_seconds` of talk
    (None: the tariff is free and time is not limited by credit)."""

    hold: Decimal
    max_seconds: int | None


# --- the arithmetic ----------------------------------------------------------------------


def check_amount(value: Decimal, what: str, *, negative: bool = False) -> Decimal:
    """`value` if it is a finite amount of at most MAX_DECIMALS decimals; ValueError else."""
    if not value.is_finite():
        raise ValueError(f"{what}: {value} is not an amount")
    if not negative and value < 0:
        raise ValueError(f"{what}: {value} is negative")
    if value != value.quantize(_SMALLEST):
        raise ValueError(f"{what}: {value} has more than {MAX_DECIMALS} decimals")
    return value


def check_tariff(t: Tariff) -> None:
    check_amount(t.per_minute, "per_minute")
    check_amount(t.connect_fee, "connect_fee")
    if t.initial < 0:
        raise ValueError(f"initial increment {t.initial} s: must be 0 or more")
    if t.increment < 1:
        raise ValueError(f"increment {t.increment} s: must be 1 or more")
    if not 0 <= t.decimals <= MAX_DECIMALS:
        raise ValueError(f"decimals {t.decimals}: must be 0 to {MAX_DECIMALS}")


def billed_seconds(seconds: int, initial: int, increment: int) -> int:
    """The seconds billed for `seconds` of talk under `initial/increment` increments."""
    if seconds < 0:
        raise ValueError(f"a duration of {seconds} s")
    if seconds == 0:
        return 0
    if seconds <= initial:
        return initial
    blocks = -(-(seconds - initial) // increment)  # ceil
    return initial + blocks * increment


def billable_seconds(duration: float) -> int:
    """The whole seconds rated for an answered duration measured by the switch: to the
    nearest second (halves up), after rounding to the millisecond, so a call released
    a few milliseconds after its credit ran out is not billed one more second."""
    if duration <= 0:
        return 0
    millis = round(duration * 1000)
    return (millis + 500) // 1000


def cost(tariff: Tariff, seconds: int) -> Decimal:
    """What `seconds` of answered talk cost, connect fee included, rounded."""
    billed = billed_seconds(seconds, tariff.initial, tariff.increment)
    exact = Fraction(tariff.connect_fee) + Fraction(tariff.per_minute) * billed / 60
    return round_money(exact, tariff.decimals, tariff.rounding)


def initial_cost(tariff: Tariff) -> Decimal:
    """The cost of the first billed block with the connect fee: the least an answered
    call costs, and so the least credit that lets a call start."""
    return cost(tariff, 1)


def duration_for(tariff: Tariff, credit: Decimal) -> int | None:
    """The longest talk, in whole seconds, whose cost is at most `credit`: 0 when not even
    the first block is affordable, None when the tariff is free (no limit by credit).

    The result always ends a billed block, so one more second costs more than `credit`.
    """
    if tariff.per_minute == 0:
        return None if cost(tariff, 1) <= credit else 0
    if cost(tariff, 1) > credit:
        return 0
    first = tariff.initial if tariff.initial > 0 else tariff.increment

    def fits(blocks: int) -> bool:
        return cost(tariff, first + blocks * tariff.increment) <= credit

    # Rounding moves a cost by less than one unit of its last decimal, so the answer
    # lies between the blocks whose exact cost is within a unit below and above the
    # credit: found in closed form, then bisected (a handful of costs, not the ~100 a
    # search from zero takes on a large balance: this runs inside the reservation's
    # transaction, which holds the account).
    unit = Fraction(1, 10**tariff.decimals)
    per_block = Fraction(tariff.per_minute) * tariff.increment / 60

    def blocks_within(limit: Fraction) -> int:
        """The most further blocks whose exact cost is at most `limit` (-1: not one)."""
        first_cost = Fraction(tariff.connect_fee) + Fraction(tariff.per_minute) * first / 60
        return max(-1, math.floor((limit - first_cost) / per_block))

    low = max(0, blocks_within(Fraction(credit) - unit))
    high = max(low + 1, blocks_within(Fraction(credit) + unit) + 1)
    if not fits(low):  # never, by the bound above; kept as the search's invariant
        low = 0
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid):
            low = mid
        else:
            high = mid
    return first + low * tariff.increment


def authorize(
    tariff: Tariff, available: Decimal, *, hold_seconds: int | None = None
) -> Authorization | None:
    """What to reserve for a new call with `available` credit: the cost of the longest
    talk it buys, at most `hold_seconds` of it; None (refuse: no credit) when the
    initial block costs more than `available`."""
    if initial_cost(tariff) > available:
        return None
    seconds = duration_for(tariff, available)
    if hold_seconds is not None and (seconds is None or seconds > hold_seconds):
        seconds = duration_for(tariff, cost(tariff, max(hold_seconds, 1)))
    if seconds is None:
        return Authorization(hold=cost(tariff, 1), max_seconds=None)
    return Authorization(hold=cost(tariff, seconds), max_seconds=seconds)


def round_money(value: Fraction, decimals: int, rounding: Rounding) -> Decimal:
    """`value` rounded to `decimals` decimals by `rounding`, exactly (the magnitude is
    rounded, so UP and HALF_UP go away from zero for a negative value, as `decimal` does)."""
    scaled = abs(value) * 10**decimals
    whole, rest = divmod(scaled.numerator, scaled.denominator)
    if rest:
        twice, den = 2 * rest, scaled.denominator
        if rounding is Rounding.UP:
            whole += 1
        elif rounding is Rounding.HALF_UP:
            whole += twice >= den
        elif rounding is Rounding.HALF_EVEN:
            whole += twice > den or (twice == den and whole % 2 == 1)
    return Decimal(-whole if value < 0 else whole).scaleb(-decimals)
