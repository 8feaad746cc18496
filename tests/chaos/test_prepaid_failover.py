"""Prepaid under failure: calls billed exactly once while servers are killed.

Two application servers; every call is prepaid and holds credit for 10 s of talk at
most. 500 calls of random durations from 20 accounts, five of which hold a minute of
talk in all, far less than their calls want: their calls are released when the credit
they hold runs out, or refused when parallel calls hold or spent what is left
(403 No Credit, counted). The callee rings 2 s before it answers. Meanwhile the primary
server of live calls is killed (kill -9), then restarted, again and again: at random
moments and, every other time, when a poor account's call is about to run out of
credit, so calls are caught in setup, ringing, talking, at the credit's release and at
the final debit (counted per phase from the CDRs).

At the end, from the database: each account's balance is its opening balance minus the
sum of its CDRs' costs, exactly; one CDR per call and at most one debit, equal to the
CDR's cost; no balance below zero and no hold left; no call talked more than 1 s past
the credit its reservation bought. From SIPp: no failed call on either side, and the
refusals it logged are the CDRs' 403 No Credit, one for one.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from integration.switchproc import free_port
from twinline.services.rating import Tariff, duration_for

from .conftest import Chaos
from .harness import ChaosCluster, scenario, uas_done

pytestmark = pytest.mark.integration

CALLS = 500
RATE = 10  # calls a second
ACCOUNTS = 20
POOR = 5  # accounts with credit for less than their calls
RICH_BALANCE = Decimal("50.00")
POOR_BALANCE = Decimal("0.60")  # 60 s at 0.60 a minute
TARIFF = Tariff(per_minute=Decimal("0.60"), initial=1, increment=1)
# How long a call talks, in half seconds: 1 to 8 s, a poor account's 4 to 15 s (its
# credit runs out during some of them).
TICKS = {False: (2, 16), True: (8, 30)}
UNITS = Decimal(10) ** 6  # money in the database: millionths

# A call holds credit for 10 s of talk at most (0.10): a rich account's calls (8 s at
# most) never run out, a poor account's longer calls run out of what they hold, and
# its parallel calls are refused once its balance is held or spent.
PLAN = """
[[plan]]
service = "prepaid"
number = "33"

[services.prepaid]
hold_seconds = 10
"""


def identity(i: int) -> str:
    return f"4470000{i:04d}"


def seed(cluster: ChaosCluster, directory: Path) -> dict[str, Decimal]:
    """Accounts and the rate, imported from CSV files as an operator would."""
    opening = {f"acct{i:02d}": POOR_BALANCE if i < POOR else RICH_BALANCE for i in range(ACCOUNTS)}
    accounts = directory / "accounts.csv"
    accounts.write_text(
        "id,currency,balance,identities\n"
        + "".join(f"{a},EUR,{b},{identity(i)}\n" for i, (a, b) in enumerate(opening.items()))
    )
    rates = directory / "rates.csv"
    rates.write_text(
        f"plan,prefix,currency,per_minute,increments\ndefault,33,EUR,{TARIFF.per_minute},1/1\n"
    )
    for table, path in (("accounts", accounts), ("rates", rates)):
        done = cluster.cli(table, "import", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
    return opening


@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_prepaid_calls_are_billed_exactly_once_while_servers_are_killed(
    chaos: Chaos, backend: str, request: pytest.FixtureRequest
) -> None:
    rng = random.Random()
    run_seed = rng.randrange(1 << 32)
    rng.seed(run_seed)
    chaos.m.note(f"prepaid ({backend}): seed", run_seed)
    database: dict[str, str] = {}
    if backend == "postgresql":  # the test session's PostgreSQL, a new database
        pg = request.getfixturevalue("pg_database")
        database = {"database_url": pg.url, "database_password": pg.password}
    cluster = chaos.cluster(servers=2, extra_config=PLAN, **database)
    directory = chaos.directory
    opening = seed(cluster, directory)
    injection = directory / "calls.csv"
    injection.write_text(
        "SEQUENTIAL\n"
        + "".join(
            f"{identity(a)};33{rng.randrange(10**9):09d};{rng.randint(*TICKS[a < POOR])};\n"
            for a in (rng.randrange(ACCOUNTS) for _ in range(CALLS))
        )
    )
    sipp_log = chaos.sipp.directory / "prepaid_logs.log"
    callee = chaos.sipp.start_uas(
        "callee", scenario("uas_ring_answer.xml"), port=cluster.callee_port,
        transport=cluster.sipp_transport, recv_timeout_ms=60_000, timeout_s=200,
    )  # fmt: skip
    caller = chaos.sipp.start_uac(
        "prepaid", scenario("uac_prepaid.xml"), cluster.sip_address, port=free_port(),
        transport=cluster.sipp_transport, calls=CALLS, rate=RATE, timeout_s=150,
        extra=("-inf", str(injection), "-trace_logs", "-log_file", str(sipp_log)),
    )  # fmt: skip

    # Kill the primary of live calls at random moments while calls come and go; every
    # other kill aims at the moment a poor account's call runs out of credit.
    kills: list[str] = []
    killed_at: list[float] = []
    watch = CreditWatch(cluster, {identity(i) for i in range(POOR)})
    stop_at = time.monotonic() + CALLS / RATE + 4
    while caller.running and time.monotonic() < stop_at:
        aimed = watch.next_end(rng) if len(kills) % 2 else None
        if aimed is None:
            time.sleep(rng.uniform(0.3, 2.5))
        status = cluster.api()
        up = [s for s in status["servers"] if s["state"] == "up"]
        victims = [s for s in up if s["primary"] > 0]
        if aimed is not None:
            victims = [s for s in victims if s["name"] == aimed] or victims
        if len(up) < 2 or not victims:
            continue
        victim = rng.choice(victims)
        at = cluster.kill(victim["name"])
        kills.append(f"{victim['name']}@{at:.3f} ({victim['primary']} primaries)")
        killed_at.append(at)
        cluster.wait_takeover(victim["name"], at, timeout=15)
        cluster.wait_exited(int(victim["pid"]))
        cluster.restart(victim["name"])
        cluster.wait_state(victim["name"], "up", timeout=30)
    chaos.m.note("prepaid: kills", len(kills))
    context = f"seed {run_seed}; kills: {', '.join(kills)}"
    assert len(kills) >= 5, context

    caller.finish()
    refusals = [line for line in _read(sipp_log).splitlines() if line.startswith("refused ")]
    reached = CALLS - len(refusals)
    uas_done(callee, reached, timeout=30)
    ctx = f"{context}\n--- cluster log (tail) ---\n{cluster.log_tail()}"
    # A refusal ends the caller's call normally (it is logged): anything else failing,
    # on either side, is a failed call.
    caller.check(successful=CALLS, created=CALLS, context=ctx)
    callee.check(successful=reached, created=reached, context=ctx)
    reasons = Counter(line.rpartition("SIP/2.0 403 ")[2] for line in refusals)
    chaos.m.note("prepaid: refused", dict(reasons))
    assert set(reasons) <= {"No Credit"}, f"{reasons}\n{context}"

    cdrs, distinct, active = cluster.settled_counts(CALLS)
    assert (cdrs, distinct, active) == (CALLS, CALLS, 0), f"{cdrs} {distinct} {active}\n{ctx}"
    check_money(cluster, opening, len(refusals), context)
    phases = phases_hit(cluster, killed_at)
    chaos.m.note("prepaid: calls caught by a kill, by phase", phases)
    assert all(phases.values()), f"a phase no kill caught: {phases}\n{context}"


class CreditWatch:
    """When a poor account's answered call will run out of credit, as seen from the
    switch's calls table (answered first seen, polled) and the call's reservation."""

    def __init__(self, cluster: ChaosCluster, poor: set[str]) -> None:
        self.cluster = cluster
        self.poor = poor
        self.answered: dict[str, float] = {}  # call -> when first seen answered

    def _calls(self) -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{self.cluster.http_port}/api/calls?limit=1000"
        with urllib.request.urlopen(url, timeout=5) as resp:
            calls: list[dict[str, Any]] = json.loads(resp.read())["calls"]
            return calls

    def next_end(self, rng: random.Random, within: float = 6.0) -> str | None:
        """Wait until about the moment the next such call runs out of credit (up to
        `within` seconds); return the name of its primary then, or None if none came."""
        deadline = time.time() + within
        while time.time() < deadline:
            now = time.time()
            primaries = {}
            for c in self._calls():
                if c["answered"] and c["caller"] in self.poor:
                    self.answered.setdefault(c["id"], now)
                    primaries[c["id"]] = c["primary"]
            holds = self.cluster.query(
                "SELECT call_id, amount FROM reservations WHERE released_at IS NULL"
            )
            ends = []
            for call, amount in holds:
                if call in primaries:
                    credit = duration_for(TARIFF, Decimal(amount) / UNITS) or 0
                    ends.append((self.answered[call] + credit, primaries[call]))
            soon = [(end, server) for end, server in ends if now < end < deadline]
            if soon:
                end, server = min(soon)
                time.sleep(max(0.0, end + rng.uniform(-0.3, 0.3) - time.time()))
                return str(server)
            time.sleep(0.2)
        return None


def phases_hit(cluster: ChaosCluster, kills: list[float]) -> dict[str, int]:
    """How many calls each kill caught in each phase, from the CDRs' times (the switch's
    clock): in setup or ringing, talking, and ending (released within the half second
    before the kill: its debit and CDR under way), and calls whose credit ran out within
    half a second of a kill."""
    rows = cluster.query("SELECT started_at, answered_at, ended_at, cause FROM cdrs")
    hit = {"setup or ringing": 0, "talking": 0, "ending (debit, CDR)": 0, "credit's end": 0}
    for at in kills:
        for started, answered, ended, cause in rows:
            if started <= at < (answered or ended):
                hit["setup or ringing"] += 1
            elif answered is not None and answered <= at < ended:
                hit["talking"] += 1
            elif ended <= at < ended + 0.5:
                hit["ending (debit, CDR)"] += 1
            if cause in ("released", "max-duration") and ended - 0.5 <= at < ended + 0.5:
                hit["credit's end"] += 1
    return hit


def check_money(
    cluster: ChaosCluster, opening: dict[str, Decimal], refused: int, context: str
) -> None:
    accounts = {
        a: (Decimal(balance) / UNITS, reserved, open_calls)
        for a, balance, reserved, open_calls in cluster.query(
            "SELECT id, balance, reserved, open_calls FROM accounts"
        )
    }
    owner = {i: a for a, i in cluster.query("SELECT account_id, identity FROM account_identities")}
    rows = cluster.query(
        "SELECT c.call_id, c.caller, c.status, c.cause, c.cost, c.currency,"
        " c.answered_at, c.ended_at, c.primaries, r.amount, r.released_at"
        " FROM cdrs c LEFT JOIN reservations r ON r.call_id = c.call_id"
    )
    debits = dict(cluster.query("SELECT call_id, count(*) FROM ledger WHERE kind = 'debit'"
                                " GROUP BY call_id"))  # fmt: skip
    debited = dict(cluster.query("SELECT call_id, -amount FROM ledger WHERE kind = 'debit'"))
    spent: Counter[str] = Counter()
    causes: Counter[str] = Counter()
    problems: list[str] = []
    overruns: list[float] = []
    taken_over = 0
    for call, caller, status, cause, cost, currency, answered, ended, primaries, hold, done in rows:
        causes[cause] += 1
        taken_over += "," in primaries
        if status == 403:
            if cause != "403 No Credit" or hold is not None or cost is not None:
                problems.append(f"{call}: refused as {cause}, hold {hold}, cost {cost}")
            continue
        if hold is None or done is None or currency != "EUR" or cost is None:
            problems.append(f"{call}: hold {hold} released {done} cost {cost} {currency}")
            continue
        spent[owner[caller]] += cost
        if debits.get(call, 0) != (1 if cost else 0) or debited.get(call, 0) != cost:
            problems.append(
                f"{call}: cost {cost}, {debits.get(call, 0)} debits of {debited.get(call)}"
            )
        if answered is not None:
            credit = duration_for(TARIFF, Decimal(hold) / UNITS)
            assert credit is not None
            overruns.append(ended - answered - credit)
    refused_cdrs = sum(1 for r in rows if r[2] == 403)
    if refused_cdrs != refused:
        problems.append(f"SIPp logged {refused} refusals, the CDRs say {refused_cdrs}")
    for account, start in opening.items():
        balance, reserved, open_calls = accounts[account]
        if balance != start - Decimal(spent[account]) / UNITS:
            problems.append(
                f"{account}: balance {balance} != {start} - {Decimal(spent[account]) / UNITS}"
            )
        if balance < 0 or reserved or open_calls:
            problems.append(
                f"{account}: balance {balance}, reserved {reserved}, {open_calls} calls"
            )
    worst = max(overruns, default=0.0)
    cluster_note = (
        f"causes {dict(causes)}; {taken_over} calls taken over; worst overrun {worst:.3f} s"
    )
    print(f"CHAOS prepaid: {cluster_note}", flush=True)
    if worst > 1.0:
        problems.append(f"a call outlived its credit by {worst:.3f} s")
    assert not problems, "\n".join(problems[:30]) + f"\n{cluster_note}\n{context}"
    assert taken_over > 0, f"no call was taken over: {cluster_note}\n{context}"
    assert causes["released"] + causes["max-duration"] > 0, f"no credit ran out: {cluster_note}"


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
