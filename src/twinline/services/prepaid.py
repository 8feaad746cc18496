"""Prepaid calling: authorize with a reservation, release when the credit runs out,
debit once at the end.

Who pays: the account of the caller's identity (the user who authenticated the INVITE,
else a trunk's P-Asserted-Identity, else the caller's number), or a calling card dialled
as ``ACCESS*CARD*PIN*DESTINATION`` (docs/services.md).

The call's money touches the database twice, each time in one transaction applied
exactly once (`ServiceCall.once`), so a standby that replays a run decides what the
failed primary decided:

- at the offer, ``reserve``: hold what the available credit buys (at most
  `PrepaidConfig.hold_seconds` of talk) by one guarded UPDATE, so parallel calls on one
  account never hold more than it has. The account and the destination's rate are read
  just before, outside the transaction (which holds the account's row, or on SQLite the
  whole file, until it commits); the reservation reads the account's balance and status
  again inside it. The result (the account, the rate, the hold, or a refusal) is kept
  in the call's state. A card call reads the card first, checks its PIN off the event
  loop (scrypt), then records the check and reserves in the same transaction;
- at the release, ``debit``: rate the answered duration the switch measured and settle:
  the hold released and the cost debited, one ledger row, the CDR's cost.

Between the two nothing reads the database: the credit timer (the time the hold buys
at the tariff in force at the answer) is the service's, and the switch enforces the
same limit on its own (the route's `max_duration`), should every server be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from twinline.link.messages import CallInfo
from twinline.services.api import Service, ServiceCall
from twinline.services.rating import Rate, authorize, billable_seconds, cost, duration_for
from twinline.store.errors import StoreError
from twinline.store.servicedata import (
    Cause,
    DataError,
    PayingAccount,
    Refusal,
    Settlement,
    digits_of,
    find_card,
    payer_and_rate,
    pin_checked,
    reserve,
    settle,
    verify_pin,
)

if TYPE_CHECKING:
    from twinline.store.base import Store, Tx

CREDIT_TIMER = "credit"
DEBIT_RETRY_PAUSES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)  # seconds
CARD_SEPARATOR = "*"
_URI_USER = re.compile(r"(?:sips?|tel):\+?([^@;>?]+)", re.IGNORECASE)


class PrepaidConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`[services.prepaid]`."""

    # The most talk one call holds credit for: a longer call is released when it runs
    # out. Less holds less of an account per call (more calls at once on one balance),
    # more lets a single call talk longer.
    hold_seconds: Annotated[int, msgspec.Meta(ge=10, le=86400)] = 3600


class Grant(msgspec.Struct, frozen=True, kw_only=True, tag="grant"):
    """What the offer's reservation gave the call: stored as its result, replayed as is."""

    account_id: str
    currency: str
    rate: Rate  # the destination's rate: its period at the answer prices the call
    hold: Decimal  # the credit held for the call
    max_seconds: int | None  # the talk the hold buys at the offer (None: not limited)
    card: str = ""


class PrepaidState(msgspec.Struct):
    destination: str = ""  # what is routed and rated (a card call's DESTINATION)
    grant: Grant | None = None
    refused: str = ""  # the cause of a refusal
    store_failed: bool = False  # the database could not be reached at the offer
    answered_at: float = 0.0
    credit_seconds: int | None = None  # the talk the hold buys, fixed at the answer
    exhausted: bool = False  # released by the credit timer


class CardDial(msgspec.Struct, frozen=True):
    access: str
    card: str
    pin: str
    destination: str


def parse_card_dial(dialled: str) -> CardDial | str | None:
    """``ACCESS*CARD*PIN*DESTINATION`` as its parts; None if `dialled` is not in the
    card form (no ``*``); an explanation if it has ``*`` but not that form."""
    if CARD_SEPARATOR not in dialled:
        return None
    parts = dialled.split(CARD_SEPARATOR)
    if len(parts) != 4:
        return "dial ACCESS*CARD*PIN*DESTINATION"
    access, card, pin, destination = parts
    if not all(p.isdigit() and p.isascii() for p in (access, card, pin)):
        return "the access number, card and PIN are digits"
    number = destination.removeprefix("+")
    if not (number.isdigit() and number.isascii()):
        return "the destination is a number"
    return CardDial(access, card, pin, destination)


def caller_identity(info: CallInfo) -> str:
    """Who pays for a call that is not a card call: the user who authenticated the
    INVITE, else the number a trunk asserted (P-Asserted-Identity), else the caller."""
    if info.user:
        return info.user
    for name, value in info.headers.items():
        if name.lower() == "p-asserted-identity":
            found = _URI_USER.search(value)
            if found:
                return found.group(1)
    return info.caller


# --- the two transactions -------------------------------------------------------------


class Offer(msgspec.Struct, frozen=True, kw_only=True):
    """What the offer's reservation needs to know of the call."""

    call_id: str
    destination: str
    at: float
    hold_seconds: int


class Payer(msgspec.Struct, frozen=True, kw_only=True):
    """The account that pays for a call and the destination's rate on its plan: read
    before the offer's transaction, so that it holds the account only to reserve."""

    account_id: str
    currency: str
    rate: Rate


def payer_for(
    account: PayingAccount | None, rate: Rate | None, destination: str
) -> Payer | Refusal:
    if account is None:
        return Refusal(cause=Cause.NO_ACCOUNT)
    if account.status != "active":
        return Refusal(cause=Cause.ACCOUNT_DISABLED, detail=account.status)
    if rate is None:
        return Refusal(cause=Cause.NO_RATE, detail=digits_of(destination))
    return Payer(account_id=account.id, currency=account.currency, rate=rate)


def payer_of(identity: str, destination: str) -> Callable[[Tx], Payer | Refusal]:
    def read(tx: Tx) -> Payer | Refusal:
        return payer_for(*payer_and_rate(tx, destination, identity=identity), destination)

    return read


def payer_of_account(account_id: str, destination: str) -> Callable[[Tx], Payer | Refusal]:
    def read(tx: Tx) -> Payer | Refusal:
        return payer_for(*payer_and_rate(tx, destination, account_id=account_id), destination)

    return read


def _authorize(tx: Tx, payer: Payer | Refusal, offer: Offer) -> Grant | Refusal:
    """Hold what the payer's available credit buys (the reservation re-reads the account
    and checks its status and calls again: it may have changed since it was read)."""
    if isinstance(payer, Refusal):
        return payer  # kept as the effect's result, as a reservation would be
    tariff = payer.rate.tariff_at(offer.at)

    def hold(available: Decimal) -> Decimal | None:
        granted = authorize(tariff, available, hold_seconds=offer.hold_seconds)
        return None if granted is None else granted.hold

    held = reserve(tx, payer.account_id, offer.call_id, hold, at=offer.at)
    if isinstance(held, Refusal):
        return held
    return Grant(
        account_id=payer.account_id,
        currency=payer.currency,
        rate=payer.rate,
        hold=held.amount,
        max_seconds=duration_for(tariff, held.amount),
    )


def reserve_for_identity(payer: Payer | Refusal, offer: Offer) -> Callable[[Tx], Grant | Refusal]:
    return lambda tx: _authorize(tx, payer, offer)


def reserve_for_card(
    card: str, pin_correct: bool, payer: Payer | Refusal, offer: Offer
) -> Callable[[Tx], Grant | Refusal]:
    def effect(tx: Tx) -> Grant | Refusal:
        login = pin_checked(tx, card, pin_correct)
        if isinstance(login, Refusal):
            return login
        paying = payer
        if isinstance(paying, Payer) and paying.account_id != login.account_id:
            # The card moved to another account since it was read: read that one.
            paying = payer_of_account(login.account_id, offer.destination)(tx)
        granted = _authorize(tx, paying, offer)
        if isinstance(granted, Grant):
            return msgspec.structs.replace(granted, card=card)
        return granted

    return effect


def settle_call(call_id: str, amount: Decimal, at: float) -> Callable[[Tx], Settlement]:
    """Release the call's hold and debit `amount` (see `servicedata.settle`)."""

    def effect(tx: Tx) -> Settlement:
        settled = settle(tx, call_id, amount, at=at)
        if settled is None:
            raise DataError(f"call {call_id}: settled, but it never reserved")
        return settled

    return effect


def release_hold(call_id: str, at: float) -> Callable[[Tx], None]:
    def effect(tx: Tx) -> None:
        settle(tx, call_id, Decimal(0), at=at)

    return effect


# --- the service ----------------------------------------------------------------------------


class Prepaid(Service[PrepaidState]):
    name = "prepaid"
    State = PrepaidState
    Config = PrepaidConfig

    def __init__(self, store: Store | None = None, config: Any = None) -> None:
        super().__init__(store, config)
        self.config: PrepaidConfig = config if config is not None else PrepaidConfig()

    async def offered(self, call: ServiceCall[PrepaidState]) -> None:
        state = call.state
        dial = parse_card_dial(call.info.callee)
        if isinstance(dial, str):
            call.reject(484, "Address Incomplete")
            return
        state.destination = call.info.callee if dial is None else dial.destination
        offer = Offer(
            call_id=call.id, destination=state.destination, at=call.now,
            hold_seconds=self.config.hold_seconds,
        )  # fmt: skip
        try:
            if dial is None:
                payer = await call.read(payer_of(caller_identity(call.info), offer.destination))
                effect = reserve_for_identity(payer, offer)
            else:
                found = await call.read(lambda tx: find_card(tx, dial.card))
                correct = found is not None and await asyncio.to_thread(
                    verify_pin, found.pin_hash, dial.pin
                )
                payer = (
                    Refusal(cause=Cause.UNKNOWN_CARD)
                    if found is None
                    else await call.read(payer_of_account(found.account_id, offer.destination))
                )
                effect = reserve_for_card(dial.card, correct, payer, offer)
            outcome = await call.once("reserve", effect, returns=Grant | Refusal)  # type: ignore[arg-type]
        except StoreError:
            state.store_failed = True
            call.reject(503, "Service Unavailable")  # the switch adds Retry-After
            return
        if isinstance(outcome, Refusal):
            state.refused = outcome.cause.value
            call.reject(403, outcome.cause.value)
            return
        state.grant = outcome
        if outcome.max_seconds is not None:
            call.limit_duration(outcome.max_seconds)  # every route carries it to the switch
        if dial is None and call.chained:
            return  # authorized and limited: a service after this one routes
        call.route(state.destination)

    async def answered(self, call: ServiceCall[PrepaidState]) -> None:
        state = call.state
        state.answered_at = call.now
        if state.grant is None:
            return
        # The tariff in force at the answer prices the whole call: the hold buys this
        # much of it, and never more than the switch was told at the route.
        seconds = duration_for(state.grant.rate.tariff_at(call.now), state.grant.hold)
        if state.grant.max_seconds is not None:
            seconds = (
                state.grant.max_seconds
                if seconds is None
                else min(seconds, state.grant.max_seconds)
            )
        state.credit_seconds = seconds
        if seconds is not None:
            call.set_timer(CREDIT_TIMER, at=call.now + seconds)

    async def timer(self, call: ServiceCall[PrepaidState], name: str) -> None:
        if name == CREDIT_TIMER:
            call.state.exhausted = True
            call.release()

    async def released(self, call: ServiceCall[PrepaidState], cause: str) -> None:
        state = call.state
        grant = state.grant
        if grant is None:
            if state.store_failed:
                await self._release_unknown_hold(call)
            return
        amount = Decimal(0)
        if state.answered_at:
            talked = call.duration if call.duration > 0 else call.now - state.answered_at
            seconds = billable_seconds(talked)
            # The call is not billed past its credit: a release a moment late (the
            # switch's or ours) is the platform's delay, not the caller's talk.
            if state.credit_seconds is not None:
                seconds = min(seconds, state.credit_seconds)
            amount = cost(grant.rate.tariff_at(state.answered_at), seconds)
        settled = await self._settle(call, amount)
        call.record_cost(settled.debited, grant.currency)

    async def _settle(self, call: ServiceCall[PrepaidState], amount: Decimal) -> Settlement:
        """The debit, tried again while the database is out of reach (for about a
        minute): the call's CDR waits for the database anyway, and a debit given up
        leaves the call unbilled and its hold held. A retry has its own effect key
        (`debit#2`), but `settle` applies once per call whatever the key (it claims the
        reservation first), so a retry after an ambiguous failure debits nothing twice."""
        for pause in (*DEBIT_RETRY_PAUSES, None):
            try:
                return await call.once(
                    "debit", settle_call(call.id, amount, call.now), returns=Settlement
                )
            except StoreError:
                if pause is None:
                    raise
                await asyncio.sleep(pause)
        raise AssertionError("unreachable")

    async def _release_unknown_hold(self, call: ServiceCall[PrepaidState]) -> None:
        """The offer's reservation failed on the database: it may still have committed
        (the connection was lost after it). Release whatever it held, if we can."""
        # Else `twinline accounts release CALL` frees it once the database is back.
        with contextlib.suppress(StoreError):
            await call.once("release", release_hold(call.id, call.now))
