"""The prepaid service through the public harness: the real replication runtimes, a
modelled switch and a SQLite database holding accounts, rates and cards.

Rating vectors end to end (offer, answer, talk, release: the CDR's cost and the
ledger); refusals with their reason phrases; card calls and the lock on the third wrong
PIN; the credit timer; a takeover or an adoption at every step of a call billing it once;
twenty calls at once on one balance never spending more than it holds."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from twinline.config import ConfigError, load_config_text
from twinline.link.messages import Reject, Release, Route
from twinline.services.basic import BasicCall
from twinline.services.chain import ChainService
from twinline.services.prepaid import (
    CREDIT_TIMER,
    CardDial,
    Prepaid,
    PrepaidConfig,
    caller_identity,
    parse_card_dial,
)
from twinline.services.testing import START, HarnessCall, ServiceHarness
from twinline.store import Store, Tx
from twinline.store import datatables as dt
from twinline.store import servicedata as sd

D = Decimal
MOBILE = "33612345678"  # rated 0.006 a minute, 30/6
ELSEWHERE = "4420712345"  # rated 0.05 a minute, 60/60
CARD = "5550001234"
PIN = "4321"


def data(
    balance: str = "10", *, max_calls: str = "", status: str = "active", **more: str
) -> Callable[[Tx], None]:
    def setup(tx: Tx) -> None:
        add = dt.add
        add(tx, dt.TABLES["accounts"], {
            "id": "acme", "currency": "EUR", "balance": balance, "identities": "alice 33123456",
            "max_calls": max_calls, "status": status,
        }, at=START)  # fmt: skip
        add(tx, dt.TABLES["rates"], {
            "plan": "default", "prefix": "", "currency": "EUR", "per_minute": "0.05",
        }, at=START)  # fmt: skip
        add(tx, dt.TABLES["rates"], {
            "plan": "default", "prefix": "336", "currency": "EUR", "per_minute": "0.006",
            "increments": "30/6",
        }, at=START)  # fmt: skip
        add(tx, dt.TABLES["rates"], {
            "plan": "default", "prefix": "1900", "currency": "EUR", "per_minute": "0.60",
            "connect_fee": more.get("connect_fee", "0.10"), "increments": "1/1",
        }, at=START)  # fmt: skip
        add(tx, dt.TABLES["cards"], {"card": CARD, "account": "acme", "pin": PIN}, at=START)

    return setup


def prepaid(**config: Any) -> Callable[[Store], Prepaid]:
    return lambda store: Prepaid(store, PrepaidConfig(**config))


def account(h: ServiceHarness) -> sd.Account:
    found = h.query(lambda tx: sd.get_account(tx, "acme"))
    assert found is not None
    return found  # type: ignore[no-any-return]


def ledger(h: ServiceHarness) -> list[sd.LedgerEntry]:
    return h.query(lambda tx: sd.ledger(tx, "acme"))  # type: ignore[no-any-return]


def talk(h: ServiceHarness, seconds: float, *, callee: str = MOBILE, **offer: Any) -> HarnessCall:
    call = h.offer(caller=offer.pop("caller", "alice"), callee=callee, **offer)
    h.progress(call)
    h.answer(call)
    h.advance(seconds)
    h.release(call)
    return call


# --- parsing --------------------------------------------------------------------------------


def test_the_card_dialling_form() -> None:
    assert parse_card_dial("8000*5550001234*4321*+33612345678") == CardDial(
        "8000", "5550001234", "4321", "+33612345678"
    )
    assert parse_card_dial("33612345678") is None
    assert parse_card_dial("8000*555*4321") == "dial ACCESS*CARD*PIN*DESTINATION"
    assert isinstance(parse_card_dial("8000*55a*4321*336"), str)
    assert isinstance(parse_card_dial("8000*555*4321*bob"), str)


def test_who_pays_the_authenticated_user_then_the_asserted_number_then_the_caller() -> None:
    from twinline.link.messages import CallInfo

    pai = {"P-Asserted-Identity": '"Shop" <sip:+33123456@trunk.example;user=phone>'}
    assert caller_identity(CallInfo(caller="0999", callee="1", headers=pai)) == "33123456"
    tel = {"p-asserted-identity": "<tel:+4412345>"}
    assert caller_identity(CallInfo(caller="0999", callee="1", headers=tel)) == "4412345"
    assert caller_identity(CallInfo(caller="0999", callee="1")) == "0999"
    assert caller_identity(CallInfo(caller="0999", callee="1", user="alice", headers=pai)) == (
        "alice"
    )


# --- rating end to end ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("callee", "seconds", "expected"),
    [
        (MOBILE, 32, "0.0036"),  # 0.006 a minute billed 30/6
        (MOBILE, 57, "0.006"),
        (MOBILE, 75, "0.0078"),
        (ELSEWHERE, 60, "0.05"),  # 0.05 a minute, 60/60
        (ELSEWHERE, 600, "0.50"),
        (ELSEWHERE, 61, "0.10"),
        ("1900123", 125, "1.35"),  # connect fee 0.10 once, then 0.60 a minute by the second
        (MOBILE, 32.4, "0.0036"),  # the switch's milliseconds: the nearest second
    ],
)
def test_a_call_is_rated_by_its_increments_and_debited_once(
    callee: str, seconds: float, expected: str
) -> None:
    with ServiceHarness(prepaid(), data=data()) as h:
        call = talk(h, seconds, callee=callee)
        assert call.commands[0] == Route([callee], max_duration=call.commands[0].max_duration)  # type: ignore[union-attr]
        assert call.cdr is not None
        assert (call.cdr.cost, call.cdr.currency) == (D(expected), "EUR")
        entries = ledger(h)
        assert [(e.kind, e.amount) for e in entries] == [
            ("opening", D(10)),
            ("debit", -D(expected)),
        ]
        assert entries[-1].call_id == call.id
        acct = account(h)
        assert (acct.balance, acct.reserved, acct.open_calls) == (D(10) - D(expected), 0, 0)
        assert len(h.effects("debit")) == 1


def test_the_connect_fee_is_charged_once_and_an_unanswered_call_costs_nothing() -> None:
    with ServiceHarness(prepaid(), data=data()) as h:
        one = talk(h, 1, callee="1900123")
        assert one.cdr is not None and one.cdr.cost == D("0.11")  # 0.10 + 1 s at 0.60/min
        ringing = h.offer(callee="1900123")
        h.progress(ringing)
        h.advance(20)
        h.release(ringing, cause="cancelled")
        assert ringing.cdr is not None and ringing.cdr.cost == 0
        assert [e.kind for e in ledger(h)] == ["opening", "debit"]
        assert account(h).reserved == 0


def test_the_route_carries_the_credit_as_the_switchs_maximum_duration() -> None:
    # 0.30 at 0.05 a minute, 60/60: six minutes.
    with ServiceHarness(prepaid(), data=data("0.30")) as h:
        call = h.offer(callee=ELSEWHERE)
        assert call.commands == [Route([ELSEWHERE], max_duration=360.0)]
        assert account(h).reserved == D("0.30")


def test_one_call_holds_at_most_hold_seconds_of_talk() -> None:
    with ServiceHarness(prepaid(hold_seconds=120), data=data()) as h:
        call = h.offer(callee=ELSEWHERE)
        assert call.commands == [Route([ELSEWHERE], max_duration=120.0)]
        assert account(h).reserved == D("0.10")


# --- refusals -------------------------------------------------------------------------------


def test_an_initial_block_costing_more_than_the_balance_is_refused() -> None:
    with ServiceHarness(prepaid(), data=data("0.04")) as h:  # a first minute costs 0.05
        call = h.offer(callee=ELSEWHERE)
        assert call.commands == [Reject(403, "No Credit")]
        assert call.cdr is not None and (call.cdr.status, call.cdr.cost) == (403, None)
        assert account(h).reserved == 0 and h.effects("debit") == []


@pytest.mark.parametrize(
    ("setup", "offer", "reason"),
    [
        (data(), {"caller": "mallory"}, "No Account"),
        (data(status="suspended"), {}, "Account Disabled"),
        (data(), {"callee": "8000*5559999999*4321*336"}, "Unknown Card"),
    ],
)
def test_refusals_name_their_cause(
    setup: Callable[[Tx], None], offer: dict[str, str], reason: str
) -> None:
    with ServiceHarness(prepaid(), data=setup) as h:
        call = h.offer(**{"caller": "alice", "callee": MOBILE, **offer})
        assert call.commands == [Reject(403, reason)]


def test_no_rate_for_the_destination() -> None:
    def setup(tx: Tx) -> None:
        data()(tx)
        tx.execute("DELETE FROM rates WHERE prefix = ''")

    with ServiceHarness(prepaid(), data=setup) as h:
        assert h.offer(callee="4420712345").commands == [Reject(403, "No Rate For Destination")]


def test_too_many_calls_at_once() -> None:
    with ServiceHarness(prepaid(), data=data(max_calls="1")) as h:
        first = h.offer()
        assert isinstance(first.commands[0], Route)
        assert h.offer().commands == [Reject(403, "Too Many Calls")]
        h.release(first, cause="cancelled")
        assert isinstance(h.offer().commands[0], Route)


def test_a_malformed_card_dial_is_incomplete() -> None:
    with ServiceHarness(prepaid(), data=data()) as h:
        assert h.offer(callee="8000*555*4321").commands == [Reject(484, "Address Incomplete")]


def test_a_database_out_of_reach_gets_503() -> None:
    with ServiceHarness(prepaid(), data=data()) as h:
        h.loop.run_until_complete(h.store.close())
        call = h.offer()
        assert call.commands == [Reject(503, "Service Unavailable")]
        h.loop.run_until_complete(h.store.open())  # for the harness's own teardown


# --- calling cards --------------------------------------------------------------------------


def card_dial(pin: str) -> str:
    return f"8000*{CARD}*{pin}*{MOBILE}"


def test_a_card_call_is_routed_to_its_destination_and_billed_to_the_cards_account() -> None:
    with ServiceHarness(prepaid(), data=data()) as h:
        call = talk(h, 32, callee=card_dial(PIN), caller="anonymous")
        assert isinstance(call.commands[0], Route) and call.commands[0].destinations == [MOBILE]
        assert call.cdr is not None and call.cdr.cost == D("0.0036")
        assert account(h).balance == D("9.9964")


def test_a_wrong_pin_is_refused_and_the_third_locks_the_card() -> None:
    with ServiceHarness(prepaid(), data=data()) as h:
        assert h.offer(callee=card_dial("1111")).commands == [Reject(403, "Wrong PIN")]
        assert h.offer(callee=card_dial("2222")).commands == [Reject(403, "Wrong PIN")]
        assert h.offer(callee=card_dial("3333")).commands == [Reject(403, "Card Locked")]
        assert h.offer(callee=card_dial(PIN)).commands == [Reject(403, "Card Locked")]
        card = h.query(lambda tx: sd.find_card(tx, CARD))
        assert (card.status, card.failures) == ("locked", 3)
        assert account(h).reserved == 0


def test_a_right_pin_clears_the_count_of_wrong_ones() -> None:
    with ServiceHarness(prepaid(), data=data()) as h:
        for pin in ("1111", "2222", PIN, "1111", "2222"):
            h.offer(callee=card_dial(pin))
        assert h.query(lambda tx: sd.find_card(tx, CARD)).status == "active"


# --- the credit runs out --------------------------------------------------------------------


def test_the_service_releases_the_call_when_its_credit_runs_out() -> None:
    # 0.05 at 0.05 a minute: one minute, the hold and the whole balance.
    with ServiceHarness(prepaid(), data=data("0.05")) as h:
        call = h.offer(callee=ELSEWHERE)
        h.answer(call)
        assert h.timers(call) == {CREDIT_TIMER: h.now + 60}
        h.advance(59.9)
        assert call.state == "answered"
        h.advance(0.1)
        assert call.commands == [Route([ELSEWHERE], max_duration=60.0), Release()]
        assert call.cdr is not None and call.cdr.cost == D("0.05")
        acct = account(h)
        assert (acct.balance, acct.reserved) == (0, 0)


def test_a_release_past_the_credit_is_not_billed_past_it() -> None:
    """The switch's backstop or a late timer ends the call a moment after the credit:
    the platform's delay is not the caller's talk."""
    with ServiceHarness(prepaid(), data=data("0.05")) as h:
        call = h.offer(callee=ELSEWHERE)
        h.answer(call)
        h.hold_peer()
        h.now += 61.2  # the switch's max-duration, before any timer ran
        h.release(call, cause="max-duration")
        h.release_peer()
        assert call.cdr is not None and call.cdr.cost == D("0.05")
        assert account(h).balance == 0


# --- failures at every step -----------------------------------------------------------------

Step = Callable[[ServiceHarness, HarnessCall], None]

TALK: list[Step] = [
    lambda h, c: h.progress(c),
    lambda h, c: h.answer(c),
    lambda h, c: h.advance(40),
    lambda h, c: h.advance(35),
    lambda h, c: h.release(c),
]
RUN_OUT: list[Step] = [
    lambda h, c: h.progress(c),
    lambda h, c: h.answer(c),
    lambda h, c: h.advance(100),
    lambda h, c: h.advance(80),  # 180 s bought: the credit timer releases the call
]
UNANSWERED: list[Step] = [
    lambda h, c: h.progress(c),
    lambda h, c: h.advance(10),
    lambda h, c: h.fail(c, 480, "No Answer"),
]
SCRIPTS = {"talk": (TALK, "10"), "run-out": (RUN_OUT, "0.15"), "unanswered": (UNANSWERED, "10")}


def play(
    script: list[Step], balance: str, *, fail_at: int | None = None, how: str = "takeover"
) -> tuple[list[tuple[str, str | None]], sd.Account, list[sd.LedgerEntry], HarnessCall]:
    with ServiceHarness(prepaid(), data=data(balance)) as h:
        call: HarnessCall | None = None
        for i, step in enumerate([lambda h, c: None, *script]):
            if i == fail_at:
                h.hold_peer()  # this step's checkpoints never reach the standby
            if call is None:
                call = h.offer(callee=ELSEWHERE)
            else:
                step(h, call)
            if i == fail_at:
                (h.fail_primary if how == "takeover" else h.lose_both)(call)
                h.release_peer()
        assert call is not None
        effects = [(e.key, e.result) for e in h.effects()]
        entries = [e for e in ledger(h) if e.kind == "debit"]
        return effects, account(h), entries, call


@pytest.mark.parametrize("how", ["takeover", "adoption"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_a_failure_at_any_step_bills_the_call_once(script: str, how: str) -> None:
    steps, balance = SCRIPTS[script]
    expected, clean_account, clean_debits, clean = play(steps, balance)
    assert clean.cdr is not None
    for fail_at in range(len(steps) + 1):
        effects, acct, debits, call = play(steps, balance, fail_at=fail_at, how=how)
        where = f"{how} at step {fail_at}"
        assert effects == expected, where
        assert len(debits) == len(clean_debits) <= 1, where
        assert [d.amount for d in debits] == [d.amount for d in clean_debits], where
        assert (acct.balance, acct.reserved, acct.open_calls) == (
            clean_account.balance, 0, 0,
        ), where  # fmt: skip
        assert call.commands == clean.commands, where
        assert call.cdr is not None and call.cdr.cost == clean.cdr.cost, where
    if script == "run-out":
        assert clean.commands[-1] == Release() and clean.cdr.cost == D("0.15")


# --- parallel calls on one balance ----------------------------------------------------------


@pytest.mark.parametrize("hold_seconds", [60, 3600])
def test_twenty_calls_at_once_never_spend_more_than_the_balance(hold_seconds: int) -> None:
    # 0.25 at 0.05 a minute: five minutes in all.
    with ServiceHarness(prepaid(hold_seconds=hold_seconds), data=data("0.25")) as h:
        calls = [h.offer(callee=ELSEWHERE) for _ in range(20)]
        routed = [c for c in calls if isinstance(c.commands[0], Route)]
        refused = [c for c in calls if c.commands == [Reject(403, "No Credit")]]
        assert len(routed) + len(refused) == 20
        assert len(routed) == (5 if hold_seconds == 60 else 1)
        assert account(h).reserved == D("0.25")
        for call in routed:
            h.answer(call)
        h.advance(400)  # past every call's credit: the service releases them all
        assert all(c.commands[-1] == Release() for c in routed)
        costs = [c.cdr.cost for c in calls if c.cdr is not None and c.cdr.cost is not None]
        acct = account(h)
        assert sum(costs) == D("0.25") == D("0.25") - acct.balance
        assert (acct.balance, acct.reserved, acct.open_calls) == (0, 0, 0)
        assert len([e for e in ledger(h) if e.kind == "debit"]) == len(routed)


# --- in a chain -----------------------------------------------------------------------------


def chain(store: Store) -> ChainService:
    return ChainService([Prepaid(store), BasicCall(store)])


def test_in_a_chain_prepaid_authorizes_and_limits_and_the_next_service_routes() -> None:
    with ServiceHarness(chain, data=data("0.30")) as h:
        call = h.offer(callee=ELSEWHERE)
        # basic routes; the route carries prepaid's limit: six minutes of 0.05 a minute.
        assert call.commands == [Route([ELSEWHERE], max_duration=360.0)]
        h.answer(call)
        h.advance(360)  # prepaid's credit timer, in the chain
        assert call.commands[-1] == Release()
        assert call.cdr is not None and (call.cdr.cost, call.cdr.currency) == (D("0.30"), "EUR")
        assert account(h).balance == 0
        refused = h.offer(callee=ELSEWHERE)
        assert refused.commands == [Reject(403, "No Credit")]  # the chain stops there


def test_its_settings_are_checked_at_start() -> None:
    text = '[[plan]]\nservice = "prepaid"\n\n[services.prepaid]\nhold_seconds = {}\n'
    assert load_config_text(text.format(600)).services["prepaid"] == {"hold_seconds": 600}
    with pytest.raises(ConfigError, match=r"services\.prepaid\.hold_seconds"):
        load_config_text(text.format(5))


def test_the_debit_waits_for_a_database_out_of_reach_at_the_end() -> None:
    with ServiceHarness(prepaid(), data=data()) as h:
        call = h.offer(callee=ELSEWHERE)
        h.answer(call)
        h.advance(30)
        h.loop.run_until_complete(h.store.close())
        # The database comes back while the service is trying the debit again.
        h.loop.call_later(0.3, lambda: h.loop.create_task(h.store.open()))
        h.release(call)
        assert call.cdr is not None and call.cdr.cost == D("0.05")
        acct = account(h)
        assert (acct.balance, acct.reserved) == (D("9.95"), 0)
        assert len([e for e in ledger(h) if e.kind == "debit"]) == 1
