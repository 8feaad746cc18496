"""Prepaid calling end to end: `twinline up` as real processes, SIPp phones, service data
set up with the `twinline accounts|rates|cards` commands as an operator would.

- A calling card dialled with a wrong PIN is refused (403 Wrong PIN), and locked on the
  third (403 Card Locked), after which even the right PIN is refused: the reason
  phrases as SIPp received them, the card's state and the CDRs in the database.
- A call whose credit runs out is released on both legs when the credit it reserved is
  used up (the phones wait for the BYE), and its CDR carries what was debited: the
  whole balance, which the ledger shows.
- Twenty calls at once on one account whose balance covers five minutes, through two
  application servers reserving on the same database: ten hold half a minute each and
  talk it to the end, ten are refused (403 No Credit); the account spends exactly its
  balance, not more.
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


def start(tmp_path: Path, callee_port: int, balance: str = "0.30", settings: str = "") -> Cluster:
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
"""
        + settings,
    )
    cluster.start()
    # Service data, as an operator sets it up (the processes read it at each call).
    twinline(cluster, "accounts", "add", "acme", "--currency", "EUR", "--balance", balance,
             "--identities", "caller")  # fmt: skip
    # 6.00 a minute by the second: 0.30 buys 3 seconds, 30.00 five minutes.
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


PREPAID_CALLER = Path(__file__).resolve().parents[1] / "chaos" / "scenarios" / "uac_prepaid.xml"


def test_twenty_calls_at_once_never_spend_more_than_the_account_holds(
    tmp_path: Path, sipp: Sipp
) -> None:
    callee_port = free_port()
    callee = sipp.start_uas(
        "callee", scenario("uas_answer.xml"), port=callee_port, recv_timeout_ms=60_000
    )  # the BYE comes after half a minute
    # 30.00 covers five minutes; each call holds at most 30 s (3.00): ten calls' worth.
    cluster = start(tmp_path, callee_port, "30.00", "\n[services.prepaid]\nhold_seconds = 30\n")
    calls = tmp_path / "calls.csv"  # every call wants 40 s (80 half seconds)
    calls.write_text("SEQUENTIAL\n" + f"caller;{DESTINATION};80;\n" * 20)
    log = sipp.directory / "caller_logs.log"
    try:
        caller = sipp.run_uac(
            "caller", PREPAID_CALLER, cluster.sip_address, port=free_port(),
            calls=20, rate=20, limit=20, timeout_s=90,
            extra=("-inf", str(calls), "-trace_logs", "-log_file", str(log)),
        )  # fmt: skip
        caller.check(successful=20, created=20, context=cluster.log()[-3000:])
        callee.wait_for_calls(total=10, timeout=10)
        callee.stop()
        callee.check(successful=10, created=10, context=cluster.log()[-3000:])
    finally:
        stop(cluster)
    refused = [line for line in log.read_text().splitlines() if line.startswith("refused ")]
    assert len(refused) == 10 and all(r.endswith("403 No Credit") for r in refused), refused
    rows = cluster.query("SELECT status, cause, cost, ended_at - answered_at FROM cdrs")
    answered = [r for r in rows if r[0] == 200]
    assert len(answered) == 10 and all(cost == 3_000_000 for _, _, cost, _ in answered), rows
    assert all(29.0 <= talk < 31.0 for *_, talk in answered), rows
    assert {cause for _, cause, _, _ in answered} <= {"released", "max-duration"}, rows
    # Held by two servers at once, spent to the last cent and not one more.
    assert cluster.query("SELECT balance, reserved, open_calls FROM accounts") == [(0, 0, 0)]
    servers = cluster.query("SELECT DISTINCT primaries FROM cdrs WHERE status = 200")
    assert {p for (p,) in servers} == {"as1", "as2"}, servers
