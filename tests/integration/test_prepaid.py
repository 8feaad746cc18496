"""Prepaid calling end to end: `twinline up` as real processes, SIPp phones, service data
set up with the `twinline accounts|rates|cards` commands as an operator would.

- A calling card dialled with a wrong PIN is refused (403 Wrong PIN), and locked on the
  third (403 Card Locked), after which even the right PIN is refused: the reason
  phrases as SIPp received them, the card's state and the CDRs in the database.
- A call whose credit runs out is released on both legs when the credit it reserved is
  used up (the phones wait for the BYE), and its CDR carries what was debited: the
  whole balance, which the ledger shows.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from .cluster import Cluster, free_port
from .sipp import Sipp, scenario

pytestmark = pytest.mark.integration

CARD = "5550001234"
PIN = "4321"
DESTINATION = "33612345678"


def start(tmp_path: Path, callee_port: int) -> Cluster:
    cluster = Cluster(
        tmp_path / "cluster",
        servers=2,
        callee_port=callee_port,
        extra_config="""
[[plan]]
service = "prepaid"
number = "8000"

[[plan]]
service = "prepaid"
number = "33"
""",
    )
    cluster.start()
    # Service data, as an operator sets it up (the processes read it at each call).
    twinline(cluster, "accounts", "add", "acme", "--currency", "EUR", "--balance", "0.30",
             "--identities", "caller")  # fmt: skip
    # 6.00 a minute by the second: 0.30 buys 3 seconds.
    twinline(cluster, "rates", "add", "default", "33", "--currency", "EUR",
             "--per-minute", "6.00", "--increments", "1/1")  # fmt: skip
    twinline(cluster, "cards", "add", CARD, "--account", "acme", "--pin", PIN)
    return cluster


def twinline(cluster: Cluster, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "twinline", *args, "--config", str(cluster.config_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"twinline {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


def stop(cluster: Cluster) -> None:
    code = cluster.stop()
    log = cluster.log()
    assert code == 0, log[-4000:]
    assert "Traceback" not in log, log[-6000:]


def test_a_card_with_a_wrong_pin_is_refused_and_locked_on_the_third(
    tmp_path: Path, sipp: Sipp
) -> None:
    cluster = start(tmp_path, free_port())
    dials = [f"8000*{CARD}*{pin}*{DESTINATION}" for pin in ("1111", "2222", "3333", PIN)]
    calls = tmp_path / "dials.csv"
    calls.write_text("SEQUENTIAL\n" + "".join(f"{d};\n" for d in dials))
    log = sipp.directory / "caller_logs.log"
    try:
        run = sipp.run_uac(
            "caller", scenario("uac_refused.xml"), cluster.sip_address, port=free_port(),
            calls=len(dials), rate=2, limit=1, timeout_s=60,
            extra=("-inf", str(calls), "-trace_logs", "-log_file", str(log)),
        )  # fmt: skip
        run.check(successful=len(dials), created=len(dials), context=cluster.log()[-3000:])
        reasons = [line.rpartition("SIP/2.0 403 ")[2] for line in log.read_text().splitlines()
                   if "SIP/2.0 403 " in line]  # fmt: skip
        assert reasons == ["Wrong PIN", "Wrong PIN", "Card Locked", "Card Locked"], reasons
        card = twinline(cluster, "cards", "show", CARD, "--json")
        assert '"status": "locked"' in card and '"failures": 3' in card, card
    finally:
        stop(cluster)
    causes = cluster.query("SELECT status, cause, cost FROM cdrs ORDER BY started_at")
    assert causes == [
        (403, "403 Wrong PIN", None), (403, "403 Wrong PIN", None),
        (403, "403 Card Locked", None), (403, "403 Card Locked", None),
    ], causes  # fmt: skip
    assert cluster.query("SELECT reserved, open_calls, balance FROM accounts") == [(0, 0, 300000)]


def test_a_call_is_released_when_its_credit_runs_out_and_its_cdr_carries_the_cost(
    tmp_path: Path, sipp: Sipp
) -> None:
    callee_port = free_port()
    callee = sipp.start_uas("callee", scenario("uas_answer.xml"), port=callee_port)
    cluster = start(tmp_path, callee_port)
    try:
        # Neither phone hangs up: both wait for the BYE of the credit's end.
        caller = sipp.run_uac(
            "caller", scenario("uac_callee_bye.xml"), cluster.sip_address, port=free_port(),
            calls=1, rate=1, service=DESTINATION, timeout_s=30, recv_timeout_ms=20000,
        )  # fmt: skip
        caller.check(successful=1, created=1, context=cluster.log()[-3000:])
        callee.wait_for_calls(total=1, timeout=10)
        callee.stop()
        callee.check(successful=1, created=1, context=cluster.log()[-3000:])
        ledger = twinline(cluster, "accounts", "ledger", "acme", "--json")
    finally:
        stop(cluster)
    ((cause, disposition, talk, cost, currency),) = cluster.query(
        "SELECT cause, disposition, ended_at - answered_at, cost, currency FROM cdrs"
    )
    # The service's credit timer and the switch's maximum duration end it at 3 s.
    assert cause in ("released", "max-duration"), cause
    assert disposition == "answered"
    assert 2.9 <= talk < 4.0, talk  # the switch measures on its own clock
    assert (Decimal(cost).scaleb(-6), currency) == (Decimal("0.30"), "EUR")
    assert cluster.query("SELECT balance, reserved, open_calls FROM accounts") == [(0, 0, 0)]
    assert '"kind": "debit"' in ledger and '"amount": "-0.30"' in ledger, ledger
