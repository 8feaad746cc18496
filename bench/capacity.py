"""Capacity: the highest call rate an element carries cleanly, by stepping and bisection.

A *step* runs the callers at one rate for a while against the element, with a fresh
callee, and passes when

- every call placed succeeded (no failed call at the caller or the callee),
- the 99th percentile of setup time (INVITE to 200 at the caller) is under the limit,
- the callers kept the rate (achieved at least 95 % of it: else the load tool, not
  the element, was the limit).

The *search* is the same for every element, with short steps first:

1. bracket: from a start rate, double while steps pass; step down while they fail
   (x0.5 when calls failed or setup took over a second, x0.75 when a few failed or
   p99 was over 400 ms, else x0.9);
2. bisect (geometric mean) until the bracket is within the resolution;
3. confirm: the best passing rate must pass a step of the full duration (30 s in the
   full mode). Short steps flatter an element whose queues grow slowly, so a failed
   confirmation steps down as above (at most to x0.75 per try) and tries again, a
   bounded number of times. The confirmed rate is the capacity; none means 0.

From a *hint* (the element's result in the round before) the search starts there
and looks at most 15 % higher (x1.15 steps). The strict search never goes above this
round's throughput figure (any step the strict caller passes, the throughput caller
passes too) and, in round 1, starts from it.

``run_all`` runs every element in every round, in interleaved order (round 1 in the
table's order, round 2 in reverse, ...), a fresh element for each search, and
reports the median of the rounds.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import load
from bench.elements import Element, make
from bench.profile import Profile
from bench.util import RUN_ERRORS, cpu_seconds, free_port

SCENARIOS = ("throughput", "strict")


@dataclass
class Step:
    rate: float
    duration_s: float
    confirm: bool
    passed: bool
    reasons: list[str]
    outcome: dict[str, Any]
    element_cpu_percent: float | None
    uac_cpu_percent: float | None


@dataclass
class Search:
    element: str
    scenario: str
    round: int
    hint: float | None
    ceiling: float | None
    capacity: float  # the confirmed rate (calls/s); 0 when none was confirmed
    at_limit: bool  # the search reached max_rate without a failure
    steps: list[Step] = field(default_factory=list)
    wall_s: float = 0.0
    log_errors: list[str] = field(default_factory=list)  # the element's own error lines
    restarts: int = 0  # after failed steps


def judge(out: load.Outcome, profile: Profile) -> list[str]:
    """Why a step failed (empty: it passed)."""
    reasons = []
    if out.failed or out.callee_failed:
        reasons.append(f"{out.failed} failed calls (callee: {out.callee_failed})")
    if out.successful < out.calls:
        reasons.append(f"{out.successful} of {out.calls} calls completed")
    if out.setup_p99_ms is None:
        reasons.append("no setup time measured")
    elif out.setup_p99_ms > profile.p99_limit_ms:
        reasons.append(f"p99 setup {out.setup_p99_ms:.0f} ms > {profile.p99_limit_ms:.0f} ms")
    if out.achieved_rate is not None and out.calls > 20 and out.achieved_rate < 0.95 * out.rate:
        reasons.append(f"callers kept only {out.achieved_rate:.0f} calls/s")
    return reasons


def step(
    *,
    element: Element,
    directory: Path,
    scenario: str,
    rate: float,
    duration_s: float,
    profile: Profile,
    confirm: bool,
) -> Step:
    """One step: a fresh callee, the callers at ``rate`` for ``duration_s``, the verdict."""
    calls = max(1, round(rate * duration_s))
    directory.mkdir(parents=True, exist_ok=True)
    limit_s = duration_s + profile.hold_ms / 1000 + 30
    uas = load.start_uas(directory / "uas", element.callee_port, limit_s + 30)
    pids = element.pids()
    cpu_before = cpu_seconds(pids)
    started = time.monotonic()
    uac = load.start_uac(
        directory / "uac",
        element.address,
        scenario=scenario,
        calls=calls,
        rate=rate,
        hold_ms=profile.hold_ms,
        limit=max(100, int(rate * (profile.hold_ms / 1000 + 3))),
        time_limit_s=limit_s,
        callers=element.callers,
    )
    uac.wait(limit_s + 10, abort_on_failure=not confirm)
    elapsed = time.monotonic() - started
    element_cpu = cpu_seconds(pids) - cpu_before if pids else None
    time.sleep(0.3)  # the last BYE's 200 reaches the callee
    uas.sample_cpu()
    uas.stop()
    out = load.outcome(uac, uas, rate=rate, calls=calls)
    out.element_cpu_s = element_cpu or 0.0
    out.aborted = uac.killed
    reasons = judge(out, profile)
    (directory / "verdict.txt").write_text("pass\n" if not reasons else "\n".join(reasons) + "\n")
    return Step(
        rate=rate,
        duration_s=duration_s,
        confirm=confirm,
        passed=not reasons,
        reasons=reasons,
        outcome=asdict(out),
        element_cpu_percent=None if element_cpu is None else round(100 * element_cpu / elapsed, 1),
        uac_cpu_percent=round(100 * uac.cpu_s / elapsed, 1) if elapsed > 0 else None,
    )


def wait_idle(element: Element, limit_s: float = 20.0) -> None:
    """Until the element's processes use under 10 % of a core (over 0.5 s), at most
    ``limit_s`` seconds: the previous step's tail is over."""
    pids = element.pids()
    if not pids:
        return
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pids)
        time.sleep(0.5)
        if cpu_seconds(pids) - before < 0.05:
            return


def _round_rate(rate: float) -> float:
    """Rates a person can read: whole calls/s, two significant digits above 100."""
    if rate >= 100:
        digits = 10 ** (int(math.log10(rate)) - 1)
        return float(round(rate / digits) * digits)
    return float(max(1, round(rate)))


def _backoff(result: Step) -> float:
    """How far to step down after a failed step: far when calls failed or setup time
    was far over the limit, a little when it was just over."""
    out = result.outcome
    failed = out["failed"] + out["callee_failed"]
    p99 = out["setup_p99_ms"]
    if failed > 0.01 * out["calls"] or p99 is None or p99 > 1000:
        return 0.5
    if failed or p99 > 400:
        return 0.75
    return 0.9


def search(
    probe: Callable[[float, float, bool], Step],
    profile: Profile,
    hint: float | None,
    ceiling: float | None = None,
) -> tuple[float, bool, list[Step]]:
    """The stepping described at the top; ``probe(rate, seconds, confirm)`` runs a step.

    ``hint``: where to start (an earlier result); the search then looks at most 15 %
    above it. ``ceiling``: a rate known to be the most it can be (the strict figure
    cannot beat the throughput one: a step the strict caller passes, the throughput
    caller passes too).
    """
    steps: list[Step] = []

    def run(rate: float, seconds: float, confirm: bool = False) -> Step:
        result = probe(rate, seconds, confirm)
        steps.append(result)
        time.sleep(profile.pause_s)
        return result

    top = min(profile.max_rate, ceiling or profile.max_rate)
    if hint:
        top = min(top, _round_rate(hint * 1.15))
    good: float | None = None  # highest passing rate
    bad: float | None = None  # lowest failing rate
    rate = _round_rate(min(hint, top)) if hint else min(profile.start_rate, top)
    grow = 1.15 if hint else 2.0
    # 1. bracket
    while len(steps) < profile.max_probes:
        result = run(rate, profile.probe_s)
        if result.passed:
            good = rate
            if bad is not None or rate >= top:
                break
            rate = _round_rate(min(rate * grow, top))
        else:
            bad = rate
            if good is not None:
                break
            rate = _round_rate(rate * _backoff(result))
            if rate < profile.min_rate:
                break
    # 2. bisect
    while good is not None and bad is not None and len(steps) < profile.max_probes:
        if bad / good <= 1 + profile.resolution:
            break
        middle = _round_rate(math.sqrt(good * bad))
        if middle in (good, bad):
            break
        if run(middle, profile.probe_s).passed:
            good = middle
        else:
            bad = middle
    at_limit = good is not None and good >= profile.max_rate
    # 3. confirm: short steps flatter an element whose queues grow slowly, so the
    # full-length step decides, stepping down as far as it failed.
    rate_to_confirm = good
    for _ in range(profile.confirm_attempts):
        if rate_to_confirm is None or rate_to_confirm < profile.min_rate:
            break
        result = run(rate_to_confirm, profile.confirm_s, True)
        if result.passed:
            return rate_to_confirm, at_limit, steps
        at_limit = False
        rate_to_confirm = _round_rate(rate_to_confirm * max(_backoff(result), 0.75))
    return 0.0, False, steps


def measure(
    key: str,
    scenario: str,
    *,
    round_no: int,
    hint: float | None,
    ceiling: float | None,
    profile: Profile,
    out: Path,
) -> Search:
    """One search for one element and scenario, with a fresh element and callee port.

    Between steps the element is left to go idle; after a failed step it is restarted,
    so that one step's overload (calls left half-way, queues, retransmissions) does not
    carry into the next.
    """
    directory = out / "capacity" / f"round{round_no}" / f"{key}-{scenario}"
    element = make(key, directory / "element", callee_port=free_port())
    started = time.monotonic()
    element.start()
    counter = iter(range(1, 1000))
    logs: list[str] = []  # the element's log of each of its lives
    restarts = 0

    def probe(rate: float, seconds: float, confirm: bool) -> Step:
        name = f"step{next(counter):02d}-{'confirm-' if confirm else ''}{rate:g}"
        result = step(
            element=element, directory=directory / name, scenario=scenario, rate=rate,
            duration_s=seconds, profile=profile, confirm=confirm,
        )  # fmt: skip
        verdict = "pass" if result.passed else "FAIL: " + "; ".join(result.reasons)
        p99 = result.outcome["setup_p99_ms"]
        print(
            f"    {key:22} {scenario:10} {rate:7g}/s x {seconds:g} s"
            f"  p99 {'-' if p99 is None else f'{p99:.0f} ms':>7}  {verdict}",
            flush=True,
        )
        if not element.running and key != "direct":
            raise RuntimeError(f"{element.label} died during a step:\n{element.log_tail()}")
        if result.passed:
            wait_idle(element)
        else:
            nonlocal restarts
            restarts += 1
            logs.append(element.log_text())
            element.stop()
            element.start()
        return result

    try:
        capacity, at_limit, steps = search(probe, profile, hint, ceiling)
    finally:
        logs.append(element.log_text())  # before the stop, whose own messages are no problem
        element.stop()
    errors = log_problems("\n".join(logs))
    return Search(
        element=key,
        scenario=scenario,
        round=round_no,
        hint=hint,
        ceiling=ceiling,
        capacity=capacity,
        at_limit=at_limit,
        steps=steps,
        wall_s=round(time.monotonic() - started, 1),
        log_errors=errors,
        restarts=restarts,
    )


_LOG_WORDS = ("Traceback", "ERROR", "CRITICAL", "WARNING")
_TIMESTAMP = re.compile(r"^[\d\-: ,.()]+")
_VOLATILE = re.compile(r"127\.0\.0\.1:\d+|\b\d+(\.\d+)?\b")


def log_problems(text: str) -> list[str]:
    """The element's own warnings and errors, alike lines merged: "12 x ...".

    Times, numbers and loopback ports are blanked so that the same event counts as one.
    """
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not any(word in line for word in _LOG_WORDS):
            continue
        key = _VOLATILE.sub("N", _TIMESTAMP.sub("", line.strip())).strip()
        counts[key] = counts.get(key, 0) + 1
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    return [f"{n} x {line[:200]}" for line, n in ordered[:12]]


def run_all(keys: list[str], profile: Profile, out: Path) -> dict[str, Any]:
    """Every element, both scenarios, ``profile.rounds`` interleaved rounds; the medians."""
    searches: list[Search] = []
    for round_no in range(1, profile.rounds + 1):
        order = keys if round_no % 2 else list(reversed(keys))
        print(f"  capacity round {round_no}: {', '.join(order)}", flush=True)
        for key in order:
            for scenario in SCENARIOS:
                # Round 2 on starts from the element's result of the round before; the
                # strict search cannot go above this round's throughput figure, and
                # starts from it in round 1.
                before = [s for s in searches if s.element == key and s.scenario == scenario]
                hint = before[-1].capacity if before and before[-1].capacity > 0 else None
                ceiling = None
                if scenario == "strict":
                    found = [s for s in searches if s.element == key and s.round == round_no]
                    if found and found[-1].capacity > 0:
                        ceiling = found[-1].capacity
                        hint = min(hint or ceiling, ceiling)
                try:
                    found_now = measure(
                        key, scenario, round_no=round_no, hint=hint, ceiling=ceiling,
                        profile=profile, out=out,
                    )  # fmt: skip
                except RUN_ERRORS as e:
                    print(f"    {key} {scenario}: search failed: {e!r}"[:2000], flush=True)
                    found_now = Search(
                        element=key, scenario=scenario, round=round_no, hint=hint,
                        ceiling=ceiling, capacity=0.0, at_limit=False,
                        log_errors=[f"search failed: {e!r}"[:500]],
                    )  # fmt: skip
                searches.append(found_now)
    return {"searches": [asdict(s) for s in searches], "summary": summarize(searches)}


def summarize(searches: list[Search]) -> dict[str, dict[str, Any]]:
    """Per element and scenario: every round's capacity and their median."""
    summary: dict[str, dict[str, Any]] = {}
    for s in searches:
        entry = summary.setdefault(s.element, {}).setdefault(
            s.scenario, {"rounds": [], "at_limit": False, "p99_ms": [], "causes": {}}
        )
        entry["rounds"].append(s.capacity)
        entry.setdefault("log_errors", []).extend(s.log_errors[:6])
        passing = [st.rate for st in s.steps if st.passed]
        entry["best_step"] = max([entry.get("best_step", 0.0), *passing])
        entry["at_limit"] = entry["at_limit"] or s.at_limit
        confirmed = [st for st in s.steps if st.confirm and st.passed]
        if confirmed:
            entry["p99_ms"].append(confirmed[-1].outcome["setup_p99_ms"])
            entry.setdefault("element_cpu_percent", []).append(confirmed[-1].element_cpu_percent)
            entry.setdefault("uac_cpu_percent", []).append(confirmed[-1].uac_cpu_percent)
        # The causes of the failed calls at the lowest failing rate of the search.
        failing = [st for st in s.steps if not st.passed and st.outcome["causes"]]
        if failing:
            lowest = min(failing, key=lambda st: st.rate)
            entry["causes"][f"round {s.round} at {lowest.rate:g}/s"] = lowest.outcome["causes"]
    for scenarios in summary.values():
        for entry in scenarios.values():
            entry["median"] = statistics.median(entry["rounds"])
    return summary
