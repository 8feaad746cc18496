"""A histogram the sans-IO cores can keep: bucket counts, a sum and a count, no I/O.

The cores observe one value per call (setup time, duration) or per takeover, never
per SIP message; the metrics endpoint reads the buckets at scrape time and turns
them into a Prometheus histogram (`twinline.metrics`). Keeping prometheus-client out
of the cores keeps them importable and steppable in unit tests with nothing else.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

# Seconds. Call setup on a B2BUA spans milliseconds (an answering UA on the same host)
# to a minute (a phone ringing until it is answered).
SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Seconds. From a test's short calls to the hours a conference may last.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
# Seconds. A takeover's design target is well under a second for thousands of calls.
TAKEOVER_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Seconds. One database operation or batch commit.
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


@dataclass(slots=True, eq=False)
class Histogram:
    """Counts of observations at or below each upper bound (the last bucket is +Inf)."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("histogram bounds must be increasing")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it) as Prometheus wants them."""
        out: list[tuple[str, int]] = []
        running = 0
        for bound, n in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def _le(bound: float) -> str:
    return repr(float(bound))
