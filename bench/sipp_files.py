"""What SIPp leaves behind, read: its -trace_stat CSV, and which ports it has bound.

Shared by the benchmark (bench/load.py) and the test suite (tests/integration/sipp.py),
which both drive SIPp; the product itself never runs it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SippStats:
    """The cumulative counters of one SIPp run (the last line of its -trace_stat CSV)."""

    created: int
    incoming: int
    outgoing: int
    current: int
    successful: int
    failed: int
    retransmissions: int
    dead_call_msgs: int
    out_of_call_msgs: int
    # Every non-zero per-cause failure counter, e.g. {"FailedUnexpectedMessage": 3}.
    failure_causes: dict[str, int]
    elapsed: str
    raw: dict[str, str] = field(repr=False)

    def summary(self) -> str:
        causes = ", ".join(f"{k}={v}" for k, v in sorted(self.failure_causes.items()))
        return (
            f"created={self.created} successful={self.successful} failed={self.failed}"
            f" current={self.current} retransmissions={self.retransmissions}"
            f" dead_call_msgs={self.dead_call_msgs} out_of_call_msgs={self.out_of_call_msgs}"
            f" elapsed={self.elapsed}" + (f" causes: {causes}" if causes else "")
        )


EMPTY_STATS = SippStats(0, 0, 0, 0, 0, 0, 0, 0, 0, {}, "?", {})


class StatsError(Exception):
    """The statistics file is missing or holds no complete line."""


def parse_stats_text(text: str) -> SippStats:
    """Read SIPp's -trace_stat CSV text; the last complete line is the one used.

    A line shorter than the header (SIPp was writing it when we read) is skipped.
    """
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=";") if row]
    if not rows:
        raise StatsError("the statistics file is empty")
    header = rows[0]
    if "SuccessfulCall(C)" not in header:
        raise StatsError(f"not a SIPp statistics file (header {header[:5]!r}...)")
    complete = [row for row in rows[1:] if len(row) >= len(header)]
    if not complete:
        raise StatsError("the statistics file has a header but no complete line yet")
    values = dict(zip(header, complete[-1], strict=False))

    def count(key: str) -> int:
        value = values.get(key, "").strip()
        return int(value) if value.isdigit() else 0

    causes = {
        key.removesuffix("(C)"): count(key)
        for key in header
        if key.startswith("Failed") and key.endswith("(C)") and key != "FailedCall(C)"
        if count(key)
    }
    return SippStats(
        created=count("TotalCallCreated"),
        incoming=count("IncomingCall(C)"),
        outgoing=count("OutgoingCall(C)"),
        current=count("CurrentCall"),
        successful=count("SuccessfulCall(C)"),
        failed=count("FailedCall(C)"),
        retransmissions=count("Retransmissions(C)"),
        dead_call_msgs=count("DeadCallMsgs(C)"),
        out_of_call_msgs=count("OutOfCallMsgs(C)"),
        failure_causes=causes,
        elapsed=values.get("ElapsedTime(C)", "?"),
        raw=values,
    )


def bound_ports(proto: str) -> set[int]:
    """Local ports in /proc/net/{proto}{,6}: bound UDP sockets, listening TCP ones."""
    ports: set[int] = set()
    for name in (proto, proto + "6"):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            state = fields[3]
            if proto == "tcp" and state != "0A":  # 0A: LISTEN
                continue
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports
