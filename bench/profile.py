"""The two modes of a run, and every number that shapes one.

The full mode is what the issue asks for (30-second confirmation steps, two rounds,
takeover with 1,000, 5,000 and 20,000 calls, memory at 20,000 calls) and fits in
about 35 minutes on a 2-core machine. The quick mode runs every part with short
steps and small counts, to check the harness end to end in a few minutes; its
figures are labelled as such and are not the benchmark.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    # --- capacity: the same stepping for every element
    rounds: int  # each element is measured this many times, interleaved; median reported
    hold_ms: int  # how long each call stays up between 200 and BYE
    probe_s: float  # one search step at one rate lasts this long
    confirm_s: float  # the rate found must carry this long (the issue: 30 s)
    pause_s: float  # quiet time between steps, so one step's tail is not the next's load
    start_rate: float  # calls/s of the first step without a hint
    min_rate: float  # below this the element is reported as "< min_rate"
    max_rate: float  # above this the load tool, not the element, is the limit
    resolution: float  # bisection stops when the bracket is this tight (0.1: 10 %)
    max_probes: int  # search steps at most, before the confirmation
    confirm_attempts: int  # each failed confirmation backs off 10 % and tries again
    p99_limit_ms: float  # a step fails when the 99th percentile of setup time is above
    # --- takeover and memory
    takeover_runs: tuple[tuple[int, int], ...]  # (established calls, how many runs)
    prepaid_takeover_runs: tuple[tuple[int, int], ...]  # the same, every call prepaid
    memory_calls: int
    ramp_rate: float  # calls/s used to establish calls (lower when an element is slower)
    long_hold_s: int  # how long established calls stay up, at most


FULL = Profile(
    name="full",
    rounds=2,
    hold_ms=1000,
    probe_s=4.0,
    confirm_s=30.0,
    pause_s=2.0,
    start_rate=50.0,
    min_rate=5.0,
    max_rate=4000.0,
    resolution=0.1,
    max_probes=12,
    confirm_attempts=4,
    p99_limit_ms=200.0,
    takeover_runs=((1000, 3), (5000, 3), (20000, 2)),
    prepaid_takeover_runs=((5000, 3),),
    memory_calls=20000,
    ramp_rate=500.0,
    long_hold_s=900,
)

QUICK = Profile(
    name="quick",
    rounds=1,
    hold_ms=1000,
    probe_s=2.0,
    confirm_s=5.0,
    pause_s=1.0,
    start_rate=100.0,
    min_rate=5.0,
    max_rate=2000.0,
    resolution=0.4,
    max_probes=7,
    confirm_attempts=3,
    p99_limit_ms=200.0,
    takeover_runs=((1000, 1),),
    prepaid_takeover_runs=((1000, 1),),
    memory_calls=1000,
    ramp_rate=400.0,
    long_hold_s=300,
)

PROFILES = {p.name: p for p in (FULL, QUICK)}


def as_dict(profile: Profile) -> dict[str, object]:
    return asdict(profile)
