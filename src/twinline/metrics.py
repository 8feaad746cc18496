"""Prometheus metrics for every twinline process, read at scrape time.

The processes count in plain dataclasses (`SwitchStats`, `ArbiterStats`,
`RuntimeStats`, `StoreStats`, ...) on their hot paths; nothing here runs per SIP
message. A scrape calls the process's collector, which reads those objects and
builds the metric families (`Families`). A stats object's fields map to metrics
through a table of `Field`s; a field missing from the table still appears, under
a name made from the table's prefix and the field's name, so counters added to a
stats class later are exported before anyone documents them.

Serving: the switch adds `GET /metrics` to its HTTP server (`switch.http`); an
application server runs `start_metrics_http` on its `metrics` address.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from twinline.metrics_histogram import Histogram

log = logging.getLogger("twinline.metrics")

# Seconds: how late the event loop ran a timer. The switch sheds new calls past 0.1 s.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_PROBE_INTERVAL = 0.1  # seconds, in processes that have no probe of their own


@dataclass(frozen=True, slots=True)
class Field:
    """How one field of a stats dataclass is exported.

    `metric` is the family's name (counters without `_total`: the client adds it);
    fields sharing a family tell themselves apart with `labels`. A mapping field
    (say requests by method) gives one sample per key, its key under `key_label`.
    """

    metric: str
    help: str
    kind: Literal["counter", "gauge"] = "counter"
    labels: Mapping[str, str] = field(default_factory=dict)
    key_label: str = "key"
    # For a mapping field: keys exported at 0 before they are counted, so that rates
    # and alerts on them have a series from the start.
    keys: tuple[str, ...] = ()


Fields = Mapping[str, Field]


class Families:
    """The metric families of one scrape, merged by name."""

    def __init__(self) -> None:
        self._by_name: dict[str, Metric] = {}

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())

    def _family(self, kind: str, name: str, help_: str, labels: Iterable[str]) -> Metric:
        family = self._by_name.get(name)
        if family is None:
            names = list(labels)
            if kind == "counter":
                family = CounterMetricFamily(name, help_, labels=names)
            elif kind == "gauge":
                family = GaugeMetricFamily(name, help_, labels=names)
            else:
                family = HistogramMetricFamily(name, help_, labels=names)
            self._by_name[name] = family
        return family

    def counter(
        self, name: str, help_: str, value: float, labels: Mapping[str, str] | None = None
    ) -> None:
        labels = labels or {}
        family = self._family("counter", name, help_, labels)
        assert isinstance(family, CounterMetricFamily)
        family.add_metric(list(labels.values()), value)

    def gauge(
        self, name: str, help_: str, value: float, labels: Mapping[str, str] | None = None
    ) -> None:
        labels = labels or {}
        family = self._family("gauge", name, help_, labels)
        assert isinstance(family, GaugeMetricFamily)
        family.add_metric(list(labels.values()), value)

    def histogram(
        self, name: str, help_: str, hist: Histogram, labels: Mapping[str, str] | None = None
    ) -> None:
        labels = labels or {}
        family = self._family("histogram", name, help_, labels)
        assert isinstance(family, HistogramMetricFamily)
        family.add_metric(list(labels.values()), hist.cumulative(), hist.total)

    def stats(
        self,
        stats: object,
        fields: Fields,
        *,
        prefix: str,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Every field of the dataclass `stats`, as `fields` says (or by its own name)."""
        base = dict(labels or {})
        for f in dataclasses.fields(stats):  # type: ignore[arg-type]
            value = getattr(stats, f.name)
            spec = fields.get(f.name) or Field(
                f"{prefix}_{f.name}", f"{type(stats).__name__}.{f.name}"
            )
            own = {**base, **spec.labels}
            if isinstance(value, Histogram):
                self.histogram(spec.metric, spec.help, value, own)
            elif isinstance(value, Mapping):
                counts = {str(k): n for k, n in value.items()}
                for key in spec.keys:
                    counts.setdefault(key, 0)
                for key, n in sorted(counts.items()):
                    self._number(spec, n, {**own, spec.key_label: key})
            elif isinstance(value, int | float):
                self._number(spec, value, own)

    def _number(self, spec: Field, value: float, labels: Mapping[str, str]) -> None:
        if spec.kind == "gauge":
            self.gauge(spec.metric, spec.help, value, labels)
        else:
            self.counter(spec.metric, spec.help, value, labels)


class ScrapeCollector(Collector):
    """A prometheus-client collector that runs `fill` at every scrape."""

    def __init__(self, fill: Callable[[Families], None]) -> None:
        self._fill = fill

    def collect(self) -> Iterable[Metric]:
        families = Families()
        try:
            self._fill(families)
        except Exception:  # a scrape must never take the process down
            log.exception("metrics collection failed")
        return list(families)


def make_registry(fill: Callable[[Families], None]) -> CollectorRegistry:
    """A registry with the process's own collector and the standard process, platform
    and garbage collector metrics (`process_resident_memory_bytes`, ...)."""
    registry = CollectorRegistry(auto_describe=False)
    for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(standard)
    registry.register(ScrapeCollector(fill))
    return registry


# --- store and event loop: shared by both kinds of process ---------------------------------

STORE_FIELDS: Fields = {
    "batches": Field("twinline_db_batches", "Batches of writes committed to the database"),
    "writes": Field("twinline_db_writes", "Batched writes committed to the database"),
    "rows": Field("twinline_db_rows", "Rows changed by committed writes"),
    "retries": Field("twinline_db_retries", "Transactions retried while the database was busy"),
    "errors": Field("twinline_db_errors", "Failed database batches and single writes"),
    "dropped": Field("twinline_db_dropped_writes", "Batched writes lost to database errors"),
    "pending": Field(
        "twinline_db_queue_depth", "Writes waiting for the database writer", kind="gauge"
    ),
    "batch_time": Field(
        "twinline_db_operation_seconds",
        "Database transactions: a batch of writes, or a group of immediate operations",
        labels={"kind": "batch"},
    ),
    "ops_time": Field(
        "twinline_db_operation_seconds",
        "Database transactions: a batch of writes, or a group of immediate operations",
        labels={"kind": "immediate"},
    ),
    "held": Field(
        "twinline_db_held_writes",
        "Batched writes held while the database is unreachable",
        kind="gauge",
    ),
}


def store_metrics(families: Families, stats: object | None) -> None:
    if stats is not None:
        families.stats(stats, STORE_FIELDS, prefix="twinline_db")


class LoopLag:
    """How late the event loop runs a timer: the best single sign of an overloaded process."""

    def __init__(self) -> None:
        self.histogram = Histogram(LAG_BUCKETS)
        self.last = 0.0

    def record(self, lag: float) -> None:
        self.last = max(lag, 0.0)
        self.histogram.observe(self.last)

    def add_to(self, families: Families) -> None:
        families.histogram(
            "twinline_event_loop_lag_seconds",
            "How late the event loop ran a timer (sampled every few tens of milliseconds)",
            self.histogram,
        )

    async def probe(self, interval: float = LAG_PROBE_INTERVAL) -> None:
        """Measure forever (a task of the process); the switch has a probe of its own."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(interval)
            self.record(loop.time() - before - interval)


# --- serving -------------------------------------------------------------------------------


def metrics_handler(
    registry: CollectorRegistry,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def get_metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        response = web.Response(body=body)
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        response.charset = "utf-8"
        return response

    return get_metrics


async def start_metrics_http(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """Serve `GET /metrics` alone (an application server); raises OSError if it cannot bind."""
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    log.info("metrics on http://%s:%s/metrics", host, port)
    return runner
