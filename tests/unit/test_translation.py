"""Number translation through the public service harness: destinations by time, day,
holiday and caller, shares drawn by weight, overflow with the shares redistributed,
and the same choices after a takeover at any step."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from twinline.link.messages import Reject, Route, RouteOption
from twinline.services.testing import HarnessCall, ServiceHarness
from twinline.services.translation import Choice, Translation, TranslationSettings, draw
from twinline.store import Tx
from twinline.store import datatables as dt

PARIS = ZoneInfo("Europe/Paris")
TUESDAY_10H = datetime(2026, 12, 1, 10, tzinfo=PARIS).timestamp()
TUESDAY_20H = datetime(2026, 12, 1, 20, tzinfo=PARIS).timestamp()
CHRISTMAS_10H = datetime(2026, 12, 25, 10, tzinfo=PARIS).timestamp()
OFFICE = {"days": "mon-fri", "hours": "08:00-18:00", "holidays": "except"}


def numbers(*rows: dict[str, str], holidays: tuple[str, ...] = ()) -> Callable[[Tx], None]:
    def setup(tx: Tx) -> None:
        for i, row in enumerate(rows, start=1):
            values = {"number": "0800123", "step": str(i), "time_zone": "Europe/Paris", **row}
            dt.add(tx, dt.TABLES["numbers"], values, at=0.0)
        for day in holidays:
            dt.add(tx, dt.TABLES["holidays"], {"date": day}, at=0.0)

    return setup


CENTRES = numbers(
    {"target": "7001", "weight": "3", **OFFICE},
    {"target": "7002", "weight": "1", **OFFICE},
    {"target": "7003", "weight": "1", **OFFICE},
    {"target": "7009", "priority": "1", **OFFICE},  # the overflow of last resort
    {"target": "7100", "hours": "18:00-08:00"},  # nights
    {"target": "7200", "holidays": "only"},
    {"target": "7300", "caller_prefix": "3332", **OFFICE},  # the north's own centre
    holidays=("2026-12-25",),
)


def routed(call: HarnessCall) -> list[str]:
    return [d for c in call.commands if isinstance(c, Route) for d in c.destinations]


def test_an_unknown_number_is_not_found() -> None:
    with ServiceHarness(Translation, data=CENTRES, start=TUESDAY_10H) as h:
        call = h.offer(caller="33145", callee="0800999")
        assert call.commands == [Reject(404, "Not Found")]


@pytest.mark.parametrize(
    ("caller", "at", "expected"),
    [
        ("33145", TUESDAY_20H, "7100"),  # out of office hours: the night service
        ("33145", CHRISTMAS_10H, "7200"),  # a holiday, though a Friday in office hours
        ("33320", TUESDAY_10H, "7300"),  # the longest caller prefix wins
    ],
)
def test_the_destination_follows_time_holidays_and_caller(
    caller: str, at: float, expected: str
) -> None:
    with ServiceHarness(Translation, data=CENTRES, start=at) as h:
        call = h.offer(caller=caller, callee="0800123")
        assert call.commands == [Route([expected])]


def test_the_caller_prefix_is_the_asserted_identity_when_there_is_one() -> None:
    with ServiceHarness(Translation, data=CENTRES, start=TUESDAY_10H) as h:
        call = h.offer(
            caller="anonymous",
            callee="0800123",
            headers={"P-Asserted-Identity": "<sip:+33320555@trunk.example>"},
        )
        assert call.commands == [Route(["7300"])]


def test_no_destination_at_this_time_is_temporarily_unavailable() -> None:
    office_only = numbers({"target": "7001", **OFFICE})
    with ServiceHarness(Translation, data=office_only, start=TUESDAY_20H) as h:
        call = h.offer(caller="33145", callee="0800123")
        assert call.commands == [Reject(480, "Temporarily Unavailable")]


def test_draw_gives_each_destination_its_weight() -> None:
    choices = [Choice("a", 3, 0), Choice("b", 1, 0), Choice("c", 1, 0), Choice("z", 9, 1)]
    n = 10_000
    picked = Counter(choices[draw(choices, i / n)].target for i in range(n))
    assert picked == {"a": 6000, "b": 2000, "c": 2000}  # priority 1 only on overflow
    # The first busy: its share goes to those that remain, in their proportion.
    rest = choices[1:]
    picked = Counter(rest[draw(rest, i / n)].target for i in range(n))
    assert picked == {"b": 5000, "c": 5000}
    assert rest[draw(rest[2:], 0.7) + 2].target == "z"  # a priority used up: the next
    zero = [Choice("x", 0, 0), Choice("y", 0, 0)]
    assert draw(zero, 0.9) == 0  # every weight 0: in step order


def test_calls_split_by_weight() -> None:
    with ServiceHarness(Translation, data=CENTRES, start=TUESDAY_10H) as h:
        first = Counter(routed(h.offer(caller="33145", callee="0800123"))[0] for _ in range(500))
    assert set(first) == {"7001", "7002", "7003"}
    assert abs(first["7001"] / 500 - 0.6) < 0.08
    assert abs(first["7002"] / 500 - 0.2) < 0.06


def test_overflow_on_busy_no_answer_and_unreachable_then_all_busy() -> None:
    with ServiceHarness(Translation, data=CENTRES, start=TUESDAY_10H) as h:
        call = h.offer(caller="33145", callee="0800123")
        h.fail(call, 486, "Busy Here")
        h.fail(call, 480, "No Answer")
        h.fail(call, 503, "Service Unavailable")
        assert sorted(routed(call)[:3]) == ["7001", "7002", "7003"]
        assert routed(call)[3] == "7009"  # the next priority, once the first is used up
        h.fail(call, 486, "Busy Here")
        assert call.commands[-1] == Reject(486, "Busy Here")  # the last failure: busy


def test_all_busy_is_486_and_other_failures_are_the_last_one() -> None:
    with ServiceHarness(Translation, data=CENTRES, start=TUESDAY_10H) as h:
        busy = h.offer(caller="33145", callee="0800123")
        for _ in range(4):
            h.fail(busy, 600, "Busy Everywhere")
        assert len(routed(busy)) == 4 and busy.commands[-1] == Reject(486, "Busy Here")
        mixed = h.offer(caller="33145", callee="0800123")
        for status, reason in [(486, "Busy Here")] * 3 + [(480, "No Answer")]:
            h.fail(mixed, status, reason)
        assert mixed.commands[-1] == Reject(480, "No Answer")
        refused = h.offer(caller="33145", callee="0800123")
        h.fail(refused, 603, "Decline")  # a refusal for good: no overflow
        assert refused.commands[1:] == [Reject(603, "Decline")]


def test_ring_seconds_bound_each_destination() -> None:
    def factory(store: object) -> Translation:
        return Translation(store, TranslationSettings(ring_seconds=12))

    with ServiceHarness(factory, data=CENTRES, start=TUESDAY_20H) as h:
        call = h.offer(caller="33145", callee="0800123")
        assert call.commands == [Route(["7100"], [RouteOption(ring_timeout=12.0)])]


# --- a takeover or an adoption at every step of an overflow ------------------------------

OVERFLOW: list[Callable[[ServiceHarness, HarnessCall], None]] = [
    lambda h, c: h.fail(c, 486, "Busy Here"),
    lambda h, c: h.advance(20),
    lambda h, c: h.fail(c, 480, "No Answer"),
    lambda h, c: h.progress(c),
    lambda h, c: h.answer(c),
    lambda h, c: h.release(c),
]


def play(fail_at: int | None, how: str) -> HarnessCall:
    with ServiceHarness(Translation, data=CENTRES, start=TUESDAY_10H) as h:
        call: HarnessCall | None = None
        for i, step in enumerate([None, *OVERFLOW]):
            if i == fail_at:
                h.hold_peer()  # this step's checkpoints never reach the standby
            if step is None:
                call = h.offer(caller="33145", callee="0800123")
            else:
                assert call is not None
                step(h, call)
            assert call is not None
            if i == fail_at:
                h.fail_primary(call) if how == "takeover" else h.lose_both(call)
                h.release_peer()
        assert call is not None
        return call


@pytest.mark.parametrize("how", ["takeover", "adoption"])
def test_a_failure_at_any_step_of_an_overflow_chooses_the_same(how: str) -> None:
    clean = play(None, how)
    assert len(routed(clean)) == 3 and clean.cdr is not None
    assert clean.cdr.disposition == "answered"
    for fail_at in range(len(OVERFLOW) + 1):
        call = play(fail_at, how)
        assert call.commands == clean.commands, f"{how} at step {fail_at}"
        assert call.cdr is not None and call.cdr.disposition == "answered"
