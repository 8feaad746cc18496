"""Every process's Prometheus endpoint, scraped while SIPp makes calls and after.

`twinline up` runs as real processes, SIPp plays caller and callee, and the counters
each process exports are checked against what SIPp did: calls, SIP messages (with
SIPp's own retransmissions), instances, checkpoints, CDRs, and a takeover after an
application server is killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, free_port
from .scrape import Scrape, scrape
from .sipp import Sipp, SippRun, sipp_binary

pytestmark = pytest.mark.integration

CALLS = 300
RATE = 60
HOLD_MS = 2000


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    binary = sipp_binary()
    if binary is None:
        pytest.skip("SIPp is not installed (Debian package sip-tester)")
    runner = Sipp(binary, tmp_path / "sipp")
    yield runner
    runner.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster", servers=2, callee_port=free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        code = cluster.stop()
    assert code == 0, cluster.log()[-4000:]
    assert "Traceback" not in cluster.log(), cluster.log()[-6000:]


def start_calls(
    cluster: Cluster, sipp: Sipp, calls: int, hold_ms: int = HOLD_MS
) -> tuple[SippRun, SippRun]:
    uas = sipp.start_uas("callee", "uas", port=cluster.callee_port)
    uac = sipp.start_uac(
        "caller", "uac", cluster.sip_address, port=free_port(), calls=calls, rate=RATE,
        limit=1000, service="1000", duration_ms=hold_ms, timeout_s=120,
    )  # fmt: skip
    return uas, uac


def scrape_all(cluster: Cluster) -> dict[str, Scrape]:
    return {name: scrape(url) for name, url in cluster.metrics_urls().items()}


def eventually(check: Callable[[], None], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_every_process_counts_what_sipp_did(cluster: Cluster, sipp: Sipp) -> None:
    uas, uac = start_calls(cluster, sipp, CALLS)
    live_seen = 0
    while uac.running:
        sw = scrape(cluster.metrics_urls()["switch"])
        live = sw.total("twinline_calls_live")
        if live >= 50:
            # Each live call has a primary and a standby, as the switch counts them.
            assert sw.total("twinline_appserver_calls", role="primary") == live
            assert sw.total("twinline_appserver_calls", role="standby") == live
            live_seen = max(live_seen, int(live))
        time.sleep(0.5)
    uac.finish()
    caller = uac.check(successful=CALLS, created=CALLS, context=cluster.log()[-4000:])
    assert live_seen >= 50, "no scrape while calls were live"

    def settled() -> None:
        m = scrape_all(cluster)
        assert sum(m[s].total("twinline_instances") for s in ("as1", "as2")) == 0
        assert sum(m[s].value("twinline_cdrs_written_total") for s in ("as1", "as2")) == CALLS

    eventually(settled)
    callee = uas.stats()
    m = scrape_all(cluster)
    sw = m["switch"]

    # Calls, as the caller made them.
    assert sw.value("twinline_call_attempts_total") == CALLS
    assert sw.value("twinline_calls_total", result="answered") == CALLS
    for result in ("rejected", "cancelled", "overload"):
        assert sw.value("twinline_calls_total", result=result) == 0
    assert sw.value("twinline_calls_completed_total") == CALLS
    assert sw.total("twinline_calls_live") == 0
    assert sw.value("twinline_calls_unprotected") == 0
    assert sw.value("twinline_call_setup_seconds_count") == CALLS
    assert sw.value("twinline_call_duration_seconds_count") == CALLS
    mean = sw.value("twinline_call_duration_seconds_sum") / CALLS
    assert HOLD_MS / 1000 - 0.1 <= mean <= HOLD_MS / 1000 + 1.0, mean

    # SIP: INVITE, ACK and BYE from the caller (and whatever it retransmitted); 180,
    # 200 and 200 (to the BYE) from the callee (and what it retransmitted).
    requests = {
        method: sw.value("twinline_sip_requests_received_total", method=method)
        for method in ("INVITE", "ACK", "BYE")
    }
    assert sum(requests.values()) == 3 * CALLS + caller.retransmissions, requests
    assert requests["INVITE"] >= CALLS and requests["BYE"] >= CALLS
    responses = sw.total("twinline_sip_responses_received_total")
    assert responses == 3 * CALLS + callee.retransmissions
    assert sw.value("twinline_sip_responses_received_total", code="180") == CALLS
    assert sw.total("twinline_sip_parse_errors_total") == 0
    received = sw.value("twinline_sip_retransmissions_total", direction="received")
    assert received <= caller.retransmissions

    # The arbiter: one route command executed per call, none refused, no takeover.
    assert sw.value("twinline_commands_total", outcome="executed") >= CALLS
    assert sw.value("twinline_commands_total", outcome="stale_epoch") == 0
    assert sw.value("twinline_takeover_calls_total") == 0
    assert sw.value("twinline_takeover_seconds_count") == 0
    for server in ("as1", "as2"):
        assert sw.value("twinline_appserver_state", server=server, state="up") == 1
        assert sw.value("twinline_link_up", peer=server) == 1
        assert 0 <= sw.value("twinline_link_heartbeat_age_seconds", peer=server) < 1.0
    assert sw.value("twinline_db_writes_total") > 0
    batches = sw.value("twinline_db_operation_seconds_count", kind="batch")
    assert batches == sw.value("twinline_db_batches_total") > 0

    # The application servers: both worked, every checkpoint sent was applied.
    sent = sum(m[s].value("twinline_checkpoints_total", outcome="sent") for s in ("as1", "as2"))
    applied = sum(
        m[s].value("twinline_checkpoints_total", outcome="applied") for s in ("as1", "as2")
    )
    assert sent >= CALLS and applied == sent
    acked = sum(m[s].value("twinline_checkpoint_ack_seconds_count") for s in ("as1", "as2"))
    assert CALLS <= acked <= sent
    assert sum(m[s].value("twinline_checkpoints_unacknowledged") for s in ("as1", "as2")) == 0
    for server, other in (("as1", "as2"), ("as2", "as1")):
        a = m[server]
        assert a.value("twinline_handler_runs_total") >= CALLS / 2 * 0.8
        assert a.value("twinline_handler_errors_total") == 0
        assert a.value("twinline_link_up", link="ctl") == 1
        assert a.value("twinline_link_up", link="peer", peer=other) == 1
        assert a.value("twinline_event_loop_lag_seconds_count") > 0
        assert a.value("process_resident_memory_bytes") > 0


def test_a_killed_server_shows_as_a_takeover(cluster: Cluster, sipp: Sipp) -> None:
    _, uac = start_calls(cluster, sipp, 300, hold_ms=4000)
    urls = cluster.metrics_urls()
    deadline = time.monotonic() + 20
    while (
        scrape(urls["switch"]).value("twinline_appserver_calls", server="as1", role="primary") < 30
    ):
        assert time.monotonic() < deadline, "calls did not build up"
        time.sleep(0.2)
    status_url = f"http://127.0.0.1:{cluster.http_port}/api/status"
    with urllib.request.urlopen(status_url, timeout=5) as resp:
        pid = next(s["pid"] for s in json.load(resp)["servers"] if s["name"] == "as1")
    os.kill(pid, signal.SIGKILL)

    def taken_over() -> None:
        sw = scrape(urls["switch"])
        assert sw.value("twinline_appserver_state", server="as1", state="down") == 1
        assert sw.value("twinline_takeovers_total", reason="failure") == 1

    eventually(taken_over)
    uac.finish()
    uac.check(successful=300, created=300, context=cluster.log()[-4000:])
    sw = scrape(urls["switch"])
    assert sw.value("twinline_link_up", peer="as1") == 0
    assert sw.value("twinline_takeovers_total", reason="handover") == 0
    assert sw.value("twinline_takeover_seconds_count") == 1
    assert sw.value("twinline_takeover_seconds_sum") < 1.0
    moved = sw.value("twinline_takeover_calls_total")
    assert moved >= 30
    as2 = scrape(urls["as2"])
    assert as2.value("twinline_instance_takeovers_total") == moved
    assert as2.value("twinline_link_up", link="peer", peer="as1") == 0


def test_the_grafana_dashboard_and_the_docs_name_only_metrics_that_exist(cluster: Cluster) -> None:
    exported: set[str] = set()
    for s in scrape_all(cluster).values():
        exported |= set(s.samples)
    docs = Path(__file__).resolve().parents[2] / "docs"
    for name in ("grafana-dashboard.json", "operations.md"):
        text = (docs / name).read_text()
        named = set(re.findall(r"\b(twinline_[a-z_]+[a-z])\b", text))
        # Families the docs write with a placeholder or as a prefix are not names.
        named = {n for n in named if not n.endswith(("_", "_service")) and "<" not in n}
        missing = {n for n in named if not {n, f"{n}_total", f"{n}_count"} & exported}
        assert not missing, f"{name} names metrics no process exports: {sorted(missing)}"
