"""Takeover time: from kill -9 of an application server to the last of its calls re-owned.

For each count N: twinline (switch, 2 application servers, redundancy on, SQLite),
N calls established and held through it, then ``kill -9`` of application server
``as1`` (its pid from the status API). The switch notices (the call tracking link
closes), makes each call whose primary was on as1 primary on its standby, and
records the takeover in its status: ``takeovers`` with ``started_at`` (noticed),
``completed_at`` (the last call re-owned) and ``duration_ms`` (between the two).

Reported per run, in ms from the kill (the harness's clock at the kill, the switch's
wall clock after: both ``time.time()`` on this host):

- ``takeover_ms``: kill to ``completed_at``, the figure of the issue;
- ``detect_ms``: kill to ``started_at``; ``switch_ms``: the switch's ``duration_ms``;
- the calls that were on as1, and the live calls before and 2 s after (none dropped).

The same runs with every call prepaid (``prepaid_takeover_runs``: each call holds a
reservation, and its standby holds the service's state with the grant and the credit
timer) give the takeover time with prepaid calls, and the same counts with basic calls
on PostgreSQL (``postgres``) the takeover time on PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
import urllib.error
from pathlib import Path
from typing import Any

from bench import load, memory
from bench.elements import Twinline
from bench.profile import Profile
from bench.util import RUN_ERRORS, free_port

VICTIM = "as1"


def _takeover_entry(element: Twinline) -> dict[str, Any] | None:
    try:
        status = element.status(timeout=5.0)
    except (OSError, urllib.error.URLError, ValueError):
        return None
    for entry in status.get("takeovers", []):
        if entry.get("server") == VICTIM and entry.get("completed_at") is not None:
            result: dict[str, Any] = entry
            return result
    return None


def one(
    calls: int,
    repeat: int,
    rate: float,
    profile: Profile,
    out: Path,
    *,
    read_memory: bool,
    prepaid: bool = False,
    postgres: bool = False,
) -> dict[str, Any]:
    key = ("twinline-prepaid" if prepaid else "twinline") + ("-pg" if postgres else "")
    kind = ("prepaid-" if prepaid else "") + ("pg-" if postgres else "")
    directory = out / "takeover" / f"{kind}{calls}-{repeat}"
    element = Twinline(
        key=key, label=key, directory=directory / "element", callee_port=free_port(),
        prepaid=prepaid, postgres=postgres,
    )  # fmt: skip
    element.start()
    uas = uac = None
    try:
        time.sleep(2.0)
        idle = memory.reading(element.pids())
        uas, uac = load.establish(
            directory, element.address, element.callee_port,
            calls=calls, rate=rate, hold_s=profile.long_hold_s, callers=element.callers,
        )  # fmt: skip
        time.sleep(memory.SETTLE_S)  # the last answers' checkpoints settle
        memory_result = None
        if read_memory:
            memory_result = memory.result(
                "twinline", calls, rate, idle, memory.reading(element.pids())
            )
        before = element.status()
        victim = next(s for s in before["servers"] if s["name"] == VICTIM)
        killed_at = time.time()
        os.kill(victim["pid"], signal.SIGKILL)
        entry = None
        deadline = time.monotonic() + 120
        while entry is None and time.monotonic() < deadline:
            time.sleep(0.05)
            entry = _takeover_entry(element)
        if entry is None:
            raise RuntimeError(f"no completed takeover of {VICTIM} in 120 s:\n{element.log_tail()}")
        time.sleep(2.0)
        after = element.status()
        caller = uac.stats()
        return {
            "calls": calls,
            "repeat": repeat,
            "ramp_rate": rate,
            "takeover_ms": round((entry["completed_at"] - killed_at) * 1000, 1),
            "detect_ms": round((entry["started_at"] - killed_at) * 1000, 1),
            "switch_ms": entry["duration_ms"],
            "victim_primaries": victim["primary"],
            "victim_standbys": victim["standby"],
            "calls_taken_over": entry["calls"],
            "unprotected": entry.get("unprotected"),
            "live_before": before["calls"]["live"],
            "live_after": after["calls"]["live"],
            "caller_failed": caller.failed,
            "entry": entry,
            "memory": memory_result,
        }
    finally:
        for run in (uac, uas):
            if run is not None:
                run.stop()
        element.kill()  # thousands of live calls: no graceful handover wanted here


def run_all(profile: Profile, out: Path, rates: dict[str, float]) -> dict[str, Any]:
    """Each kind's calls are set up at its own ramp rate (`__main__.ramp_rates`)."""
    basic = _runs(profile.takeover_runs, profile, out, rates["twinline"], prepaid=False)
    prepaid = _runs(
        profile.prepaid_takeover_runs, profile, out, rates["twinline-prepaid"], prepaid=True
    )
    # On PostgreSQL: the counts of the prepaid runs (5,000 calls, the target's), basic calls.
    postgres = _runs(
        profile.prepaid_takeover_runs, profile, out, rates["twinline-pg"], postgres=True
    )
    return {**basic, "prepaid": prepaid, "postgres": postgres}


def _runs(
    counts: tuple[tuple[int, int], ...],
    profile: Profile,
    out: Path,
    rate: float,
    *,
    prepaid: bool = False,
    postgres: bool = False,
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    kind = ("prepaid " if prepaid else "") + ("PostgreSQL " if postgres else "")
    for calls, repeats in counts:
        for repeat in range(1, repeats + 1):
            print(f"  takeover: {calls} {kind}calls, run {repeat} (ramp {rate:g}/s)", flush=True)
            try:
                read_memory = (
                    not prepaid and not postgres and calls == profile.memory_calls and repeat == 1
                )
                result = one(
                    calls, repeat, rate, profile, out,
                    read_memory=read_memory, prepaid=prepaid, postgres=postgres,
                )  # fmt: skip
            except RUN_ERRORS as e:
                print(f"    failed: {e!r}"[:2000], flush=True)
                runs.append({"calls": calls, "repeat": repeat, "error": str(e)[:2000]})
                continue
            print(
                f"    takeover {result['takeover_ms']} ms (noticed after {result['detect_ms']} ms,"
                f" {result['calls_taken_over']} calls); live {result['live_before']}"
                f" -> {result['live_after']}",
                flush=True,
            )
            runs.append(result)
            time.sleep(profile.pause_s)
    summary = {}
    for calls, _ in counts:
        times: list[float] = [
            r["takeover_ms"] for r in runs if r["calls"] == calls and "takeover_ms" in r
        ]
        summary[str(calls)] = {
            "runs": times,
            "median_ms": statistics.median(times) if times else None,
            "max_ms": max(times) if times else None,
        }
    return {"runs": runs, "summary": summary}
