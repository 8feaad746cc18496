"""Fixtures for the chaos tests: one ``Chaos`` per test, torn down whatever happens.

``chaos.cluster(servers=2, transport="udp", ctl={...})`` starts a ``twinline up``;
``chaos.sipp`` starts SIPp runs (files under the test's tmp_path/sipp);
``chaos.proxy(target)`` a cutting proxy; ``chaos.m.note(key, value)`` reports a
figure. At teardown SIPp goes first (no new calls while the cluster stops), then
the proxies, then every cluster (frozen servers thawed, restarted ones stopped,
stragglers killed by pid). A failing test gets the tail of every cluster's log
attached to its report; the figures of every test are summed up at the end of
the session (also without ``-s``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from integration.certs import Certs
from integration.sipp import Sipp, sipp_binary
from integration.switchproc import free_port

from .harness import ChaosCluster, CutProxy, Measurements, stats_now

_CHAOS = pytest.StashKey["Chaos"]()
_RESULTS: list[Measurements] = []


@dataclass
class Chaos:
    directory: Path
    sipp: Sipp
    m: Measurements
    clusters: list[ChaosCluster] = field(default_factory=list)
    proxies: list[CutProxy] = field(default_factory=list)

    def cluster(
        self,
        servers: int = 2,
        *,
        transport: str = "udp",
        ctl: dict[str, str] | None = None,
        link_port: int | None = None,
        link_tls: Certs | None = None,
        extra_config: str = "",
        database_url: str = "",
        database_password: str = "",
    ) -> ChaosCluster:
        cluster = ChaosCluster(
            directory=self.directory / f"cluster{len(self.clusters) + 1}",
            servers=servers,
            callee_port=free_port(),
            sip_port=free_port(),
            link_port=link_port or free_port(),
            http_port=free_port(),
            transport=transport,
            ctl=dict(ctl or {}),
            link_tls=link_tls,
            extra_config=extra_config,
            database_url=database_url,
            database_password=database_password,
        )
        self.clusters.append(cluster)
        cluster.start()
        return cluster

    def proxy(self, target: tuple[str, int]) -> CutProxy:
        proxy = CutProxy(target)
        self.proxies.append(proxy)
        return proxy.start()

    def close(self) -> list[str]:
        problems: list[str] = []
        self.sipp.close()
        for proxy in self.proxies:
            proxy.close()
        for cluster in self.clusters:
            problems += cluster.teardown()
        return problems


@pytest.fixture(scope="session")
def sipp_path() -> str:
    path = sipp_binary()
    if path is None:
        pytest.skip("SIPp is not installed (Debian package sip-tester)")
    return path


@pytest.fixture
def chaos(sipp_path: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Chaos]:
    m = Measurements(request.node.name)
    state = Chaos(tmp_path, Sipp(sipp_path, tmp_path / "sipp"), m)
    request.node.stash[_CHAOS] = state
    try:
        yield state
    finally:
        problems = state.close()
        if m.values:
            _RESULTS.append(m)
        # A process that would not stop is a finding, but the test's own verdict
        # (and its message) comes first: only report it here if the test passed.
        report = getattr(request.node, "_chaos_call_report", None)
        if problems and report is not None and report.passed:
            pytest.fail("teardown: " + "; ".join(problems), pytrace=False)
        elif problems:
            print("CHAOS teardown problems: " + "; ".join(problems))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item._chaos_call_report = report  # type: ignore[attr-defined]
    state = item.stash.get(_CHAOS, None)
    if state is not None and report.failed and report.when == "call":
        for cluster in state.clusters:
            report.sections.append(
                (f"{cluster.directory.name} log (tail)", cluster.log_tail(12000))
            )
        for run in state.sipp.runs:
            if run.running:  # still going (stopped at teardown): what it says so far
                stats = stats_now(run)
                text = f"{' '.join(run.command)}\nrunning; stats: {stats and stats.summary()}"
                report.sections.append((f"SIPp {run.name}", text))
            else:
                report.sections.append((f"SIPp {run.name}", run.report()))
    return report


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("chaos measurements")
    for m in _RESULTS:
        terminalreporter.write_line(str(m))
