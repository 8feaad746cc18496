"""The public service harness, and exactly-once replay through it: a takeover or an
adoption injected at every step of a call, with the checkpoints of that step lost,
applies every side effect once, under the same key, with the same result."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from examples.metered_call import SCHEMA, MeteredCall

from twinline.config import ConfigError, PlanEntry, load_config_text
from twinline.link.messages import CallInfo, Reject, Release, Route
from twinline.services.api import Service, ServiceCall
from twinline.services.basic import BasicCall
from twinline.services.chain import ChainService
from twinline.services.testing import HarnessCall, ServiceHarness
from twinline.store import Tx
from twinline.switch.arbiter import ServicePlan

INFO_UTC = CallInfo(caller="alice", callee="bob")


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
        assert call.commands == [Route(["bob"], max_duration=300)]
        assert balance(h) == (1000, 300)
        h.progress(call)
        h.answer(call)
        assert h.timers(call) == {"warn": h.now + 290, "exhausted": h.now + 300}
        h.advance(290)
        notes = h.query(lambda tx: tx.fetchall("SELECT note FROM meter_notes"))
        assert notes == [{"note": "10 s left"}]
        h.advance(10)  # the reservation is used up: the service releases the call
        assert call.commands == [Route(["bob"], max_duration=300), Release()]
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


# --- chains ------------------------------------------------------------------------------


class Gate(Service[TimerAndEvent]):
    """Refuses one caller, passes the others on."""

    name = "gate"
    State = TimerAndEvent

    async def offered(self, call: ServiceCall[TimerAndEvent]) -> None:
        if call.info.caller == "mallory":
            call.reject(603, "Decline")
        elif not call.chained:
            call.route(call.info.callee)


def metered_chain(store: Any) -> ChainService:
    return ChainService([Gate(store), MeteredCall(store), BasicCall(store)])


def test_a_chain_passes_the_call_on_until_a_member_decides() -> None:
    with ServiceHarness(metered_chain, data=accounts(1000)) as h:
        assert h.name == "gate>metered>basic"
        refused = h.offer(caller="mallory", callee="bob")
        assert refused.commands == [Reject(603, "Decline")]
        assert h.effects() == []  # the gate decided: metered never ran
        call = h.offer(caller="alice", callee="bob")
        # metered authorized and limited the call; basic routed it, with the limit.
        assert call.commands == [Route(["bob"], max_duration=300.0)]
        h.answer(call)
        assert sorted(h.timers(call)) == ["metered:exhausted", "metered:warn"]
        h.advance(300)
        assert call.commands[-1] == Release()
        keys = [e.key for e in h.effects()]
        assert f"{call.id}/offer/metered/reserve" in keys
        assert f"{call.id}/e2/metered/debit" in keys
        assert balance(h) == (700, 0)


def test_a_chain_replays_exactly_after_a_takeover_at_every_step() -> None:
    def run(fail_at: int | None) -> tuple[list[tuple[str, str | None]], list[Any]]:
        with ServiceHarness(metered_chain, data=accounts(1000)) as h:
            call: HarnessCall | None = None
            for i, step in enumerate([None, *RUN_OUT]):
                if i == fail_at:
                    h.hold_peer()
                if call is None:
                    call = h.offer(caller="alice", callee="bob")
                else:
                    assert step is not None
                    step(h, call)
                if i == fail_at:
                    h.fail_primary(call)
                    h.release_peer()
            assert call is not None and call.cdr is not None
            return [(e.key, e.result) for e in h.effects()], call.commands

    clean = run(None)
    for fail_at in range(len(RUN_OUT) + 1):
        assert run(fail_at) == clean, f"takeover at step {fail_at}"


def test_a_plan_chains_services_and_names_an_unknown_member() -> None:
    config = load_config_text('[[plan]]\nservice = "basic"\nnumber = "1"\n')
    assert ServicePlan(config.plan).resolve("100", "alice") == "basic"
    with pytest.raises(ConfigError, match=r"plan\[0\]\.service\[1\]: 'nope' is not a service"):
        load_config_text('[[plan]]\nservice = ["basic", "nope"]\n')
    with pytest.raises(ConfigError, match=r"plan\[0\]\.service\[1\]: 'basic' appears twice"):
        load_config_text('[[plan]]\nservice = ["basic", "basic"]\n')
    chained = PlanEntry(service=["screening", "basic"], number="1")
    assert ServicePlan([chained]).resolve("100", "alice") == "screening>basic"


# --- deterministic helpers -------------------------------------------------------------------


def test_random_draws_replay_the_same_and_split_by_their_weights() -> None:
    def draw(call_id: str, run: str) -> list[float]:
        call = ServiceCall(call_id, INFO_UTC, TimerAndEvent(), now=0.0, run=run, timers={},
                           store=None)  # fmt: skip
        return [call.random("split"), call.random("split"), call.random("other")]

    assert draw("c1", "offer") == draw("c1", "offer")  # a replay draws the same
    first, second, other = draw("c1", "offer")
    assert len({first, second, other}) == 3
    assert draw("c1", "e2") != draw("c1", "offer")
    shares = [draw(f"c{n}", "offer")[0] < 0.3 for n in range(4000)]
    assert 0.27 < sum(shares) / len(shares) < 0.33


def test_local_time_is_now_in_the_services_time_zone() -> None:
    call = ServiceCall("c1", INFO_UTC, TimerAndEvent(), now=1_700_000_000.0, run="offer",
                       timers={}, store=None, timezone="Europe/Paris")  # fmt: skip
    paris = call.local_time()
    assert (paris.hour, paris.minute, paris.utcoffset()) == (23, 13, dt.timedelta(hours=1))
    assert call.local_time("UTC").hour == 22
    assert call.local_time("America/New_York").hour == 17
