"""Memory per established call, all of an element's processes together.

Each element starts idle; the resident set sizes (RSS, /proc/PID/statm) of all its
processes are added up; N calls are established and held; after a few seconds the
sum is taken again. Per call = (loaded - idle) / N. For twinline "all processes" is
the ``twinline up`` supervisor, the switch and both application servers; its figure
with redundancy on comes from the first takeover run with as many calls (the same
cluster, the same calls, read just before the kill), which saves a run.

RSS (the issue's measure) counts memory a process took and freed but has not given
back, and counts a page shared by several processes once in each: Kamailio's workers
share one memory segment, so its RSS sum counts that segment's touched pages several
times. The proportional set size (PSS, /proc/PID/smaps_rollup) counts each shared
page once; both are recorded. Kamailio without the dialog module keeps no dialog
state: what it holds is the calls' transactions, kept a few seconds after they end
(tm's wait timer), and memory its allocator touched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import load
from bench.elements import make
from bench.profile import Profile
from bench.util import RUN_ERRORS, free_port, pss_bytes, rss_bytes

SETTLE_S = 3.0  # after the last call is answered: batched writes and checkpoints settle


def reading(pids: list[int]) -> dict[str, Any]:
    """RSS per process and the sums of RSS and PSS, now."""
    rss = {pid: rss_bytes(pid) for pid in pids}
    return {"rss": sum(rss.values()), "pss": sum(pss_bytes(p) for p in pids), "each": rss}


def result(
    key: str, calls: int, rate: float, idle: dict[str, Any], loaded: dict[str, Any]
) -> dict[str, Any]:
    return {
        "element": key,
        "calls": calls,
        "ramp_rate": rate,
        "processes": len(loaded["each"]),
        "idle_bytes": idle["rss"],
        "loaded_bytes": loaded["rss"],
        "per_call_bytes": round((loaded["rss"] - idle["rss"]) / calls, 1),
        "idle_pss_bytes": idle["pss"],
        "loaded_pss_bytes": loaded["pss"],
        "per_call_pss_bytes": round((loaded["pss"] - idle["pss"]) / calls, 1),
        "per_process_loaded": {str(pid): rss for pid, rss in loaded["each"].items()},
    }


def one(key: str, calls: int, rate: float, profile: Profile, out: Path) -> dict[str, Any]:
    directory = out / "memory" / key
    element = make(key, directory / "element", callee_port=free_port())
    element.start()
    uas = uac = None
    try:
        time.sleep(2.0)
        idle = reading(element.pids())
        uas, uac = load.establish(
            directory, element.address, element.callee_port,
            calls=calls, rate=rate, hold_s=profile.long_hold_s,
        )  # fmt: skip
        time.sleep(SETTLE_S)
        return result(key, calls, rate, idle, reading(element.pids()))
    finally:
        for run in (uac, uas):
            if run is not None:
                run.stop()
        element.kill()


def run_all(
    keys: list[str],
    profile: Profile,
    out: Path,
    rates: dict[str, float],
    already: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Every element in ``keys``, except those ``already`` measured (twinline's is
    taken in the takeover run with as many calls, just before the kill)."""
    results: dict[str, Any] = dict(already)
    for key in keys:
        if key in results:
            print(f"  memory: {key}, taken in the takeover run", flush=True)
            continue
        rate = rates[key]
        calls = profile.memory_calls
        print(f"  memory: {key}, {calls} calls (ramp {rate:g}/s)", flush=True)
        try:
            result = one(key, calls, rate, profile, out)
        except RUN_ERRORS as e:
            print(f"    failed: {e!r}"[:2000], flush=True)
            results[key] = {"element": key, "calls": calls, "error": str(e)[:2000]}
            continue
        print(
            f"    {result['per_call_bytes'] / 1024:.2f} KiB per call"
            f" ({result['idle_bytes'] >> 20} -> {result['loaded_bytes'] >> 20} MiB)",
            flush=True,
        )
        results[key] = result
        time.sleep(profile.pause_s)
    return results
