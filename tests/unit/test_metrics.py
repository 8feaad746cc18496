"""The metrics plumbing: the cores' histograms and the families a scrape builds."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from twinline.metrics import Families, Field, make_registry
from twinline.metrics_histogram import Histogram


def test_histogram_counts_each_value_in_its_bucket_and_reports_them_cumulatively() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 5)]
    assert h.count == 5 and h.total == pytest.approx(5.65)


def test_histogram_bounds_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing"):
        Histogram((1.0, 0.5))


@dataclass
class Stats:
    offered: int = 0
    answered: int = 0
    rejected: int = 0
    queue: int = 0
    by_method: dict[str, int] = field(default_factory=dict)
    setup: Histogram = field(default_factory=lambda: Histogram((1.0,)))
    added_later: int = 0


FIELDS = {
    "offered": Field("t_attempts", "attempts"),
    "answered": Field("t_calls", "calls", labels={"result": "answered"}),
    "rejected": Field("t_calls", "calls", labels={"result": "rejected"}),
    "queue": Field("t_queue", "queue", kind="gauge"),
    "by_method": Field("t_requests", "requests", key_label="method"),
    "setup": Field("t_setup_seconds", "setup"),
}


def scrape(stats: Stats) -> dict[str, float]:
    def fill(families: Families) -> None:
        families.stats(stats, FIELDS, prefix="t_stats")

    text = generate_latest(make_registry(fill)).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def test_a_stats_dataclass_becomes_counters_gauges_labelled_families_and_histograms() -> None:
    stats = Stats(offered=7, answered=5, rejected=2, queue=3, by_method={"INVITE": 7, "BYE": 5})
    stats.setup.observe(0.5)
    got = scrape(stats)
    assert got["t_attempts_total"] == 7
    assert got["t_calls_total{result=answered}"] == 5
    assert got["t_calls_total{result=rejected}"] == 2
    assert got["t_queue"] == 3
    assert got["t_requests_total{method=INVITE}"] == 7
    assert got["t_requests_total{method=BYE}"] == 5
    assert got["t_setup_seconds_bucket{le=1.0}"] == 1
    assert got["t_setup_seconds_count"] == 1
    # A counter nobody described yet is still exported, under the prefix.
    assert got["t_stats_added_later_total"] == 0
    # The standard process metrics come along.
    assert "process_resident_memory_bytes" in got


def test_a_failing_collector_leaves_the_scrape_working() -> None:
    def fill(families: Families) -> None:
        families.counter("t_ok", "fine", 1)
        raise RuntimeError("boom")

    text = generate_latest(make_registry(fill)).decode()
    assert "process_cpu_seconds_total" in text


def test_checkpoint_lag_times_the_latest_checkpoint_of_each_call_to_its_ack() -> None:
    from twinline.metrics_appserver import CheckpointLag

    lag = CheckpointLag()
    lag.sent("as2", "c1", 1, now=10.0)
    lag.acknowledged("c1", 1, now=10.004)
    lag.sent("as2", "c2", 1, now=11.0)
    lag.sent("as2", "c2", 2, now=11.5)  # sent again before the first ack
    lag.acknowledged("c2", 1, now=11.6)  # an old ack: still waiting for version 2
    assert lag.waiting == 1
    lag.acknowledged("c2", 2, now=11.52)
    lag.sent("as3", "c3", 1, now=12.0)
    lag.peer_lost("as3")  # its acks will never come
    assert lag.waiting == 0
    assert lag.histogram.count == 2
    assert lag.histogram.total == pytest.approx(0.024)
