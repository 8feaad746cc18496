"""An application server's metrics: its runtime's counters, instances, links, database.

Read at scrape time (see `twinline.metrics`) from the runtime's `stats` object, which
the runtime keeps on its own; a service whose object has a `stats` dataclass gets its
counters exported as `twinline_service_<field>_total{service="NAME"}`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from twinline.metrics import Families, Field, Fields, store_metrics
from twinline.metrics_histogram import Histogram

if TYPE_CHECKING:
    from twinline.appserver.server import AppServerProcess

CHECKPOINTS_HELP = (
    "Checkpoints by what became of them: sent to the standby, to the database, applied"
)

RUNTIME_FIELDS: Fields = {
    "handler_runs": Field("twinline_handler_runs", "Service handler runs (offer, event, timer)"),
    "handler_errors": Field("twinline_handler_errors", "Service handler runs that raised"),
    "checkpoints_sent": Field("twinline_checkpoints", CHECKPOINTS_HELP, labels={"outcome": "sent"}),
    "checkpoints_to_database": Field(
        "twinline_checkpoints", CHECKPOINTS_HELP, labels={"outcome": "database"}
    ),
    "checkpoints_applied": Field(
        "twinline_checkpoints", CHECKPOINTS_HELP, labels={"outcome": "applied"}
    ),
    "commands_released": Field("twinline_commands_sent", "Commands sent to the switch"),
    "commands_resent": Field(
        "twinline_commands_resent", "Pending commands re-sent after a takeover"
    ),
    "events_replayed": Field("twinline_events_replayed", "Buffered events replayed at takeover"),
    "takeovers": Field("twinline_instance_takeovers", "Standby instances that became primary"),
    "adoptions": Field(
        "twinline_adoptions", "Calls adopted from the database after losing both instances"
    ),
    "cdrs_written": Field("twinline_cdrs_written", "Call detail records written"),
}


# Seconds from a checkpoint sent to its standby's acknowledgement.
ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_TRACKED = 100_000  # calls whose last checkpoint awaits its ack; past it, start over


class CheckpointLag:
    """How far behind the standbys are: the time from a checkpoint sent to its ack, and
    how many calls' latest checkpoints are not acknowledged yet. One entry per call
    (its latest checkpoint), kept by the process's link edge, never by the core."""

    def __init__(self) -> None:
        self.histogram = Histogram(ACK_BUCKETS)
        self._sent: dict[str, tuple[str, int, float]] = {}  # call -> (peer, version, at)

    def sent(self, peer: str, call: str, version: int, now: float) -> None:
        if len(self._sent) >= MAX_TRACKED:
            self._sent.clear()
        self._sent[call] = (peer, version, now)

    def acknowledged(self, call: str, version: int, now: float) -> None:
        entry = self._sent.get(call)
        if entry is not None and entry[1] <= version:
            del self._sent[call]
            if entry[1] == version:
                self.histogram.observe(now - entry[2])

    def peer_lost(self, peer: str) -> None:
        self._sent = {c: e for c, e in self._sent.items() if e[0] != peer}

    @property
    def waiting(self) -> int:
        return len(self._sent)


def appserver_collector(process: AppServerProcess) -> Callable[[Families], None]:
    def fill(families: Families) -> None:
        runtime = process.runtime
        families.stats(runtime.stats, RUNTIME_FIELDS, prefix="twinline_appserver")
        primary, standby = runtime.counts()
        for role, n in (("primary", primary), ("standby", standby)):
            families.gauge("twinline_instances", "Call instances held, by role", n, {"role": role})
        families.counter(
            "twinline_messages_dropped_to_switch",
            "Messages for the switch dropped while the call tracking link was down",
            process.dropped_to_switch,
        )
        ctl = process.ctl
        families.gauge(
            "twinline_link_up",
            "1 while the link to a peer is established",
            int(ctl is not None and ctl.endpoint.established),
            {"link": "ctl", "peer": "switch"},
        )
        for peer in process.config.appservers:
            if peer.name == process.name:
                continue
            link = process.peers.get(peer.name)
            families.gauge(
                "twinline_link_up",
                "",
                int(link is not None and link.endpoint.established),
                {"link": "peer", "peer": peer.name},
            )
        process.loop_lag.add_to(families)
        lag = process.checkpoint_lag
        families.histogram(
            "twinline_checkpoint_ack_seconds",
            "From a checkpoint sent to the standby to its acknowledgement",
            lag.histogram,
        )
        families.gauge(
            "twinline_checkpoints_unacknowledged",
            "Calls whose latest checkpoint the standby has not acknowledged yet",
            lag.waiting,
        )
        for name, service in sorted(process.services.items()):
            stats = getattr(service, "stats", None)
            if stats is not None and dataclasses.is_dataclass(stats):
                families.stats(stats, {}, prefix="twinline_service", labels={"service": name})
        store_metrics(families, getattr(process.store, "stats", None))

    return fill
