"""The public service harness, and exactly-once replay through it: a takeover or an
adoption injected at every step of a call, with the checkpoints of that step lost,
applies every side effect once, under the same key, with the same result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from examples.metered_call import SCHEMA, MeteredCall

from twinline.link.messages import Reject, Release, Route
from twinline.services.api import Service, ServiceCall
from twinline.services.testing import HarnessCall, ServiceHarness
from twinline.store import Tx


def accounts(seconds: int) -> Callable[[Tx], None]:
    def setup(tx: Tx) -> None:
        for sql in SCHEMA:
            tx.execute(sql)
        tx.execute("INSERT INTO meter_accounts (caller, seconds) VALUES ('alice', ?)", (seconds,))

    return setup


def balance(h: ServiceHarness) -> tuple[int, int]:
    row = h.query(lambda tx: tx.fetchone("SELECT seconds, reserved FROM meter_accounts"))
    return int(row["seconds"]), int(row["reserved"])


def test_a_metered_call_reserves_routes_warns_and_debits_once() -> None:
    with ServiceHarness(MeteredCall, data=accounts(1000)) as h:
        call = h.offer(caller="alice", callee="bob")
        assert call.commands == [Route(["bob"])]
        assert balance(h) == (1000, 300)
        h.progress(call)
        h.answer(call)
        assert h.timers(call) == {"warn": h.now + 290, "exhausted": h.now + 300}
        h.advance(290)
        notes = h.query(lambda tx: tx.fetchall("SELECT note FROM meter_notes"))
        assert notes == [{"note": "10 s left"}]
        h.advance(10)  # the reservation is used up: the service releases the call
        assert call.commands == [Route(["bob"]), Release()]
        assert call.state == "finished"
        assert balance(h) == (700, 0)
        [debit] = h.effects("debit")
        assert debit.result == "300"
        assert call.cdr is not None and call.cdr.cause == "released"
        assert call.cdr.disposition == "answered"


def test_a_caller_without_credit_is_refused() -> None:
    with ServiceHarness(MeteredCall, data=accounts(0)) as h:
        call = h.offer(caller="alice", callee="bob")
        assert call.commands == [Reject(403, "No Credit")]
        assert call.cdr is not None and call.cdr.status == 403
        assert h.effects("debit") == []


def test_side_effect_keys_name_the_input_not_the_order_of_runs() -> None:
    """The reproduction of issue 9: keys made of a run counter differed between a
    primary that ran a due timer first and a standby that replayed the event first."""
    with ServiceHarness(MeteredCall, data=accounts(1000)) as h:
        call = h.offer()
        h.answer(call)
        h.advance(290)
        h.release(call)
        keys = sorted(e.key for e in h.effects())
        warn_due = call.events[0].at + 290
        assert keys == sorted(
            [
                "h1/offer/reserve",
                f"h1/t:warn@{warn_due:.6f}/warn",
                "h1/e2/debit",
            ]
        )


# --- takeover and adoption at every step ------------------------------------------------

Step = Callable[[ServiceHarness, HarnessCall], None]


def hang_up_at(seconds: float) -> list[Step]:
    return [
        lambda h, c: h.progress(c),
        lambda h, c: h.answer(c),
        lambda h, c: h.advance(seconds / 2),
        lambda h, c: h.advance(seconds / 2),
        lambda h, c: h.release(c),
    ]


RUN_OUT: list[Step] = [
    lambda h, c: h.progress(c),
    lambda h, c: h.answer(c),
    lambda h, c: h.advance(100),
    lambda h, c: h.advance(190),  # the warning
    lambda h, c: h.advance(10),  # credit exhausted: released by the service
]

SCRIPTS = {"hang-up": hang_up_at(121.5), "run-out": RUN_OUT}


def play(
    script: list[Step], *, fail_at: int | None = None, how: str = "takeover"
) -> tuple[list[tuple[str, str | None]], tuple[int, int], HarnessCall]:
    with ServiceHarness(MeteredCall, data=accounts(1000)) as h:
        steps: list[Step] = [lambda h, c: None, *script]
        call: HarnessCall | None = None
        for i, step in enumerate(steps):
            if i == fail_at:
                h.hold_peer()  # this step's checkpoints never reach the standby
            if call is None:
                call = h.offer(caller="alice", callee="bob")
            else:
                step(h, call)
            if i == fail_at:
                if how == "takeover":
                    h.fail_primary(call)
                else:
                    h.lose_both(call)
                h.release_peer()
        assert call is not None
        effects = [(e.key, e.result) for e in h.effects()]
        return effects, balance(h), call


@pytest.mark.parametrize("how", ["takeover", "adoption"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_failure_at_any_step_applies_each_effect_once_with_the_same_result(
    script: str, how: str
) -> None:
    steps = SCRIPTS[script]
    expected, expected_balance, clean = play(steps)
    assert clean.cdr is not None
    for fail_at in range(len(steps) + 1):
        effects, money, call = play(steps, fail_at=fail_at, how=how)
        assert effects == expected, f"{how} at step {fail_at}"
        assert money == expected_balance, f"{how} at step {fail_at}"
        assert call.cdr is not None and call.cdr.disposition == clean.cdr.disposition
        assert call.commands == clean.commands, f"{how} at step {fail_at}"


# --- a due timer and a buffered event, in both orders --------------------------------------


class TimerAndEvent(msgspec.Struct):
    seen: list[str] = []


class Ledger(Service[TimerAndEvent]):
    """Writes one row per input it handles; the row's result is what it had seen."""

    name = "ledger"
    State = TimerAndEvent

    async def offered(self, call: ServiceCall[TimerAndEvent]) -> None:
        call.set_timer("t", after=5)
        call.route(call.info.callee)

    async def progress(self, call: ServiceCall[TimerAndEvent], status: int) -> None:
        await self._note(call, "progress")

    async def timer(self, call: ServiceCall[TimerAndEvent], name: str) -> None:
        await self._note(call, "timer")

    async def _note(self, call: ServiceCall[Any], what: str) -> None:
        call.state.seen.append(what)
        seen = ",".join(call.state.seen)
        await call.once(what, lambda tx: seen, returns=str)


@pytest.mark.parametrize("event_after", [4.0, 5.0, 6.0])
def test_a_due_timer_and_a_buffered_event_replay_in_time_order(event_after: float) -> None:
    def run(fail: bool) -> list[tuple[str, str | None]]:
        with ServiceHarness(Ledger) as h:
            call = h.offer()
            h.hold_peer()
            h.advance(event_after)  # the timer fires first if it is due by then
            h.progress(call)
            h.advance(10)  # ... or after the event
            if fail:
                h.fail_primary(call)
            h.release_peer()
            return [(e.key.split("/", 1)[1], e.result) for e in h.effects()]

    clean = run(fail=False)
    assert len(clean) == 2
    # A timer due at or before the event's time runs before it.
    first = min(clean, key=lambda e: len(e[1] or ""))[0]
    assert first.startswith("t:" if event_after >= 5.0 else "e1")
    assert run(fail=True) == clean
