"""Rating: the cost of a duration, the duration a credit buys, rate periods, rounding."""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, ROUND_UP, Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twinline.services.rating import (
    Rate,
    RatePeriod,
    Rounding,
    Tariff,
    authorize,
    billable_seconds,
    billed_seconds,
    cost,
    duration_for,
    initial_cost,
    round_money,
)
from twinline.services.timeofday import (
    Window,
    format_days,
    parse_days,
    parse_hours,
    window,
)

D = Decimal


def t(per_minute: str, increments: str = "60/60", **kw: object) -> Tariff:
    initial, increment = (int(x) for x in increments.split("/"))
    return Tariff(per_minute=D(per_minute), initial=initial, increment=increment, **kw)  # type: ignore[arg-type]


# --- the vectors -----------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "expected"), [(32, "0.0036"), (57, "0.006"), (75, "0.0078")])
def test_30_6_vectors(seconds: int, expected: str) -> None:
    assert cost(t("0.006", "30/6"), seconds) == D(expected)


def test_five_cents_a_minute_is_exact() -> None:
    # The vector reads "0.05 per minute for 60 s is exactly 0.50"; one minute
    # at 0.05 is 0.05, so we check what it is about (no float residue, cents kept)
    # on the two readings that give 0.50, and on the minute itself.
    five_cents = t("0.05", "60/60", decimals=2)
    assert str(cost(five_cents, 60)) == "0.05"
    assert str(cost(five_cents, 600)) == "0.50"
    assert str(cost(t("0.50", "60/60", decimals=2), 60)) == "0.50"
    assert str(cost(t("0.05", "1/1", decimals=4), 60)) == "0.0500"


def test_the_connect_fee_is_charged_once_per_call() -> None:
    tariff = t("0.60", "60/60", connect_fee=D("0.25"), decimals=2)
    assert cost(tariff, 60) == D("0.85")
    assert cost(tariff, 600) == D("6.25")  # 10 minutes, one fee: not 10 x 0.25
    assert cost(tariff, 1) == initial_cost(tariff) == D("0.85")
    assert cost(tariff, 0) == D("0.25")  # answered, no talk: the fee alone


def test_an_initial_block_costing_more_than_the_balance_is_refused() -> None:
    tariff = t("1.20", "60/60", connect_fee=D("0.10"), decimals=2)  # first block: 1.30
    assert authorize(tariff, D("1.29")) is None
    assert duration_for(tariff, D("1.29")) == 0
    granted = authorize(tariff, D("1.30"))
    assert granted is not None
    assert granted.hold == D("1.30")
    assert granted.max_seconds == 60


def test_rounding_drift_of_the_anchors_does_not_happen() -> None:
    # CGRateS #624: 500 - 25 = 474.995. Exact fractions and one rounding: 25 is 25.
    tariff = t("0.50", "1/1", decimals=4)
    assert cost(tariff, 3000) == D(25)
    assert D(500) - cost(tariff, 3000) == D(475)


# --- increments and rounding -------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "increments", "billed"),
    [
        (0, "60/60", 0),
        (1, "60/60", 60),
        (60, "60/60", 60),
        (61, "60/60", 120),
        (1, "30/6", 30),
        (30, "30/6", 30),
        (31, "30/6", 36),
        (1, "1/1", 1),
        (59, "1/1", 59),
        (1, "0/6", 6),
        (7, "0/6", 12),
    ],
)
def test_billed_seconds(seconds: int, increments: str, billed: int) -> None:
    initial, increment = (int(x) for x in increments.split("/"))
    assert billed_seconds(seconds, initial, increment) == billed


@pytest.mark.parametrize(
    ("duration", "seconds"), [(0.0, 0), (0.4, 0), (0.5, 1), (59.999, 60), (60.003, 60), (60.5, 61)]
)
def test_billable_seconds_round_the_measured_duration(duration: float, seconds: int) -> None:
    assert billable_seconds(duration) == seconds


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        (Rounding.UP, "0.0013"),
        (Rounding.HALF_UP, "0.0013"),
        (Rounding.HALF_EVEN, "0.0012"),
        (Rounding.DOWN, "0.0012"),
    ],
)
def test_rounding_rules_on_a_half(rounding: Rounding, expected: str) -> None:
    # 0.0075 per minute for 10 s is 0.00125: exactly half a unit of the 4th decimal.
    assert cost(t("0.0075", "1/1", rounding=rounding), 10) == D(expected)


_DECIMAL_MODES = {
    Rounding.UP: ROUND_UP,
    Rounding.HALF_UP: ROUND_HALF_UP,
    Rounding.HALF_EVEN: ROUND_HALF_EVEN,
}


@given(
    st.integers(-(10**9), 10**9),
    st.integers(1, 10**6),
    st.integers(0, 6),
    st.sampled_from(list(_DECIMAL_MODES)),
)
def test_round_money_agrees_with_decimal_quantize(
    num: int, den: int, decimals: int, rounding: Rounding
) -> None:
    # 28 significant digits: exact for the halves, and far closer than any denominator
    # up to 10**6 lets a value come to a half without being one.
    exact = D(num) / D(den)
    want = exact.quantize(D(1).scaleb(-decimals), rounding=_DECIMAL_MODES[rounding])
    assert round_money(Fraction(num, den), decimals, rounding) == want


def test_bad_tariffs_are_refused() -> None:
    with pytest.raises(ValueError, match="increment"):
        t("0.01", "60/0")
    with pytest.raises(ValueError, match="decimals"):
        t("0.01", "60/60", decimals=7)
    with pytest.raises(ValueError, match="more than 6 decimals"):
        t("0.0000001")
    with pytest.raises(ValueError, match="negative"):
        t("-0.01")


# --- the duration a credit buys ----------------------------------------------------------


def test_duration_for_ends_on_a_billed_block() -> None:
    tariff = t("0.006", "30/6")
    assert duration_for(tariff, D("0.0036")) == 36
    assert duration_for(tariff, D("0.0037")) == 36
    assert duration_for(tariff, D("0.0029")) == 0  # the initial 30 s cost 0.003
    assert duration_for(t("0", "60/60"), D(0)) is None  # free: no limit by credit


def test_authorize_holds_at_most_the_asked_time() -> None:
    tariff = t("0.60", "60/60", decimals=2)
    granted = authorize(tariff, D(100), hold_seconds=300)
    assert granted is not None
    assert (granted.hold, granted.max_seconds) == (D("3.00"), 300)
    short = authorize(tariff, D("1.50"), hold_seconds=300)
    assert short is not None
    assert (short.hold, short.max_seconds) == (D("1.20"), 120)


tariffs = st.builds(
    Tariff,
    per_minute=st.decimals(min_value=D("0.000001"), max_value=D(5), places=6),
    connect_fee=st.decimals(min_value=D(0), max_value=D(1), places=6),
    initial=st.sampled_from([0, 1, 30, 60]),
    increment=st.sampled_from([1, 6, 30, 60]),
    decimals=st.integers(0, 6),
    rounding=st.sampled_from(list(Rounding)),
)


@given(tariffs, st.integers(0, 100_000), st.integers(0, 100_000))
def test_cost_is_monotonic_in_duration(tariff: Tariff, a: int, b: int) -> None:
    low, high = min(a, b), max(a, b)
    assert cost(tariff, low) <= cost(tariff, high)


@given(tariffs, st.decimals(min_value=D(0), max_value=D(1000), places=6))
def test_duration_for_is_the_longest_affordable(tariff: Tariff, credit: Decimal) -> None:
    seconds = duration_for(tariff, credit)
    assert seconds is not None  # per_minute > 0
    if seconds == 0:
        assert initial_cost(tariff) > credit
    else:
        assert cost(tariff, seconds) <= credit < cost(tariff, seconds + 1)
    granted = authorize(tariff, credit)
    if granted is not None:
        assert granted.hold <= credit
        assert granted.max_seconds == seconds


# --- rate periods ------------------------------------------------------------------------

PARIS = ZoneInfo("Europe/Paris")


def paris(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=PARIS).timestamp()


def test_the_period_in_force_at_the_answer_prices_the_call() -> None:
    rate = Rate(
        prefix="33",
        currency="EUR",
        time_zone="Europe/Paris",
        tariff=t("0.10", "60/60", decimals=2),
        periods=(
            RatePeriod(window=window("mon-fri", "08:00-18:00"), per_minute=D("0.20")),
            RatePeriod(
                window=window("sat,sun", "all"), per_minute=D("0.05"), connect_fee=D("0.01")
            ),
        ),
    )
    # Monday 2 November 2026, 09:30 in Paris (08:30 UTC): peak.
    assert rate.tariff_at(paris(2026, 11, 2, 9, 30)).per_minute == D("0.20")
    # Monday 07:59 Paris: before the peak: the base price.
    assert rate.tariff_at(paris(2026, 11, 2, 7, 59)).per_minute == D("0.10")
    # Sunday: weekend, with its connect fee; the increments and rounding stay the rate's.
    sunday = rate.tariff_at(paris(2026, 11, 1, 12))
    assert (sunday.per_minute, sunday.connect_fee, sunday.decimals) == (D("0.05"), D("0.01"), 2)
    # 17:30 UTC is 18:30 in Paris in November: off-peak although 17:30 < 18:00.
    assert rate.tariff_at(datetime(2026, 11, 2, 17, 30, tzinfo=ZoneInfo("UTC")).timestamp()) == (
        rate.tariff
    )


def test_a_window_past_midnight_belongs_to_the_day_it_starts() -> None:
    night = Window(days=parse_days("fri"), start=22 * 60, end=6 * 60)
    assert night.contains(datetime(2026, 11, 6, 23, 0))  # Friday 23:00
    assert night.contains(datetime(2026, 11, 7, 5, 59))  # Saturday 05:59
    assert not night.contains(datetime(2026, 11, 7, 6, 0))
    assert not night.contains(datetime(2026, 11, 6, 5, 0))  # Friday morning: Thursday's night


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("sat,sun", {5, 6}),
        ("fri-mon", {4, 5, 6, 0}),
        ("all", set(range(7))),
        ("Mon,Wed-Fri", {0, 2, 3, 4}),
    ],
)
def test_days(text: str, days: set[int]) -> None:
    assert parse_days(text) == days
    assert parse_days(format_days(frozenset(days))) == days


def test_bad_times_are_refused_with_what_to_write() -> None:
    with pytest.raises(ValueError, match="unknown day"):
        parse_days("mon-fry")
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hours("8-18")
    with pytest.raises(ValueError, match="24:00"):
        parse_hours("08:00-24:30")
    with pytest.raises(ValueError, match="whole day"):
        parse_hours("08:00-08:00")
