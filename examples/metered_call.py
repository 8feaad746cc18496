"""A complete example service: a metered call, billed once, whatever fails.

Each caller has a balance of seconds (`meter_accounts`). At the offer the service
reserves up to five minutes of it (or refuses the call), routes the call, and once it
is answered arms two timers: a warning ten seconds before the reservation runs out and
the release when it does. At the end it debits the seconds talked, exactly once.

docs/writing-a-service.md walks through it; tests/unit/test_service_harness.py runs it
through every failure the harness can make.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec

from twinline.services.api import Service, ServiceCall
from twinline.store import Tx

RESERVE = 300  # seconds reserved per call at most
WARN_BEFORE = 10.0

SCHEMA = (
    "CREATE TABLE meter_accounts (caller TEXT PRIMARY KEY,"
    " seconds BIGINT NOT NULL CHECK (seconds >= 0),"
    " reserved BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0))",
    "CREATE TABLE meter_notes (call_id TEXT NOT NULL, note TEXT NOT NULL)",
)


class MeterState(msgspec.Struct):
    reserved: int = 0  # seconds held for this call
    answered_at: float = 0.0


def reserve(caller: str) -> Callable[[Tx], int]:
    """An effect: hold up to RESERVE seconds of the caller's balance; returns them."""

    def effect(tx: Tx) -> int:
        row = tx.fetchone(
            "SELECT seconds - reserved AS free FROM meter_accounts WHERE caller = ?", (caller,)
        )
        free = int(str(row["free"])) if row is not None else 0
        take = max(0, min(RESERVE, free))
        if take:
            tx.execute(
                "UPDATE meter_accounts SET reserved = reserved + ? WHERE caller = ?",
                (take, caller),
            )
        return take

    return effect


def settle(caller: str, reserved: int, talked: int) -> Callable[[Tx], int]:
    """An effect: debit the seconds talked and let go of the reservation."""

    def effect(tx: Tx) -> int:
        tx.execute(
            "UPDATE meter_accounts SET seconds = seconds - ?, reserved = reserved - ?"
            " WHERE caller = ?",
            (talked, reserved, caller),
        )
        return talked

    return effect


def note(call_id: str, text: str) -> Callable[[Tx], None]:
    def effect(tx: Tx) -> None:
        tx.execute("INSERT INTO meter_notes (call_id, note) VALUES (?, ?)", (call_id, text))

    return effect


class MeteredCall(Service[MeterState]):
    name = "metered"
    State = MeterState

    async def offered(self, call: ServiceCall[MeterState]) -> None:
        held = await call.once("reserve", reserve(call.info.caller), returns=int)
        if held == 0:
            call.reject(403, "No Credit")
            return
        call.state.reserved = held
        call.limit_duration(held)  # enforced by the switch too, whoever routes the call
        if not call.chained:
            call.route(call.info.callee)  # alone: route it; in a chain, a later service does

    async def answered(self, call: ServiceCall[MeterState]) -> None:
        call.state.answered_at = call.now
        call.set_timer("warn", after=call.state.reserved - WARN_BEFORE)
        call.set_timer("exhausted", after=call.state.reserved)

    async def timer(self, call: ServiceCall[MeterState], name: str) -> None:
        if name == "warn":
            await call.once("warn", note(call.id, f"{WARN_BEFORE:.0f} s left"))
        elif name == "exhausted":
            call.release()

    async def released(self, call: ServiceCall[MeterState], cause: str) -> None:
        state = call.state
        if not state.reserved:
            return  # refused at the offer: nothing held
        talked = 0
        if state.answered_at:
            talked = min(state.reserved, math.ceil(call.now - state.answered_at))
        await call.once("debit", settle(call.info.caller, state.reserved, talked), returns=int)
