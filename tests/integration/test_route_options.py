"""Route options end to end, from a plug-in service to SIPp phones.

`twinline up` runs as real processes with one application server whose plan sends
calls to 5... to a service loaded by `module:Class` from this package
(plugin_service.Hunt, settings in `[services.hunt]`). The service routes to the
numbers its settings give, with their route options; routes send 1... and 2... to
two SIPp callees. Assertions come from SIPp (each side's scenario, including a regexp
check of the Diversion header at the callee) and from the CDRs in the database. The
last test kills the only application server (SIGKILL) once the call is answered: the
switch alone ends it at its maximum duration.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .cluster import Cluster, free_port
from .sipp import Sipp, SippRun, scenario

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "tests.integration.plugin_service:Hunt"
DIALLED = "5000"


@pytest.fixture
def callees() -> dict[str, int]:
    return {"first": free_port(), "second": free_port()}


def start(tmp_path: Path, ports: dict[str, int], settings: str) -> Cluster:
    cluster = Cluster(
        tmp_path / "cluster",
        servers=1,
        callee_port=ports["second"],
        env={"PYTHONPATH": str(ROOT)},
        extra_config=f"""
[[routes]]
prefix = "1"
target = "127.0.0.1:{ports["first"]}"

[[routes]]
prefix = "2"
target = "127.0.0.1:{ports["second"]}"

[[plan]]
service = "{PLUGIN}"
number = "5"

[services.hunt]
{settings}
""",
    )
    cluster.start(timeout=60.0)  # a busy test machine starts Python processes slowly
    return cluster


def finish(cluster: Cluster, *runs: SippRun) -> list[tuple[object, ...]]:
    """Stop the cluster and return the one call's CDR (cause, service, answered_at -
    started_at, ended_at - answered_at)."""
    try:
        for run in runs:
            run.wait_for_calls(total=1, timeout=20)
            run.stop()
            run.check(successful=1, created=1, context=cluster.log()[-3000:])
    finally:
        code = cluster.stop()
    assert code == 0, cluster.log()[-4000:]
    assert "Traceback" not in cluster.log(), cluster.log()[-6000:]
    return cluster.query(
        "SELECT cause, service, disposition, answered_at - started_at, ended_at - answered_at"
        " FROM cdrs"
    )


def caller(sipp: Sipp, cluster: Cluster, scenario_name: str, **options: object) -> SippRun:
    run = sipp.run_uac(
        "caller", scenario(scenario_name), cluster.sip_address, port=free_port(),
        calls=1, rate=1, service=DIALLED, timeout_s=60, **options,
    )  # fmt: skip
    run.check(successful=1, created=1, context=cluster.log()[-3000:])
    return run


def test_a_ring_timeout_shorter_than_the_global_one_moves_on_to_the_next_destination(
    tmp_path: Path, sipp: Sipp, callees: dict[str, int]
) -> None:
    # The first callee rings until it is cancelled; switch.no_answer_timeout is 60 s.
    first = sipp.start_uas("first", scenario("uas_ring_cancel.xml"), port=callees["first"])
    second = sipp.start_uas("second", scenario("uas_answer.xml"), port=callees["second"])
    cluster = start(tmp_path, callees, 'destinations = ["1000", "2000"]\nring_timeout = 2.0')
    try:
        caller(sipp, cluster, "uac_call.xml", duration_ms=500)
    finally:
        cdrs = finish(cluster, first, second)
    ((cause, service, disposition, setup, _),) = cdrs
    assert (cause, service, disposition) == ("caller-bye", PLUGIN, "answered")
    # Answered by the second callee after the first rang for its 2 s, not 60.
    assert 1.95 <= setup < 10.0, setup


def test_diversion_and_caller_identity_on_the_callees_invite_and_181_at_the_caller(
    tmp_path: Path, sipp: Sipp, callees: dict[str, int]
) -> None:
    # The first is busy: the service's route goes on to the second, diverted.
    first = sipp.start_uas("first", scenario("uas_busy.xml"), port=callees["first"])
    log = sipp.directory / "second_logs.log"
    second = sipp.start_uas(
        "second", scenario("uas_diverted.xml"), port=callees["second"],
        extra=("-trace_logs", "-log_file", str(log)),
    )  # fmt: skip
    settings = """destinations = ["1000", "2000"]
diversion = "user-busy"
caller_id = "+15550100"
caller_name = "Help Desk"
"""
    cluster = start(tmp_path, callees, settings)
    try:
        # uac_forwarded.xml fails the call unless a 181 comes before the answer.
        caller(sipp, cluster, "uac_forwarded.xml", duration_ms=200)
    finally:
        cdrs = finish(cluster, first, second)
    ((cause, _, disposition, _, _),) = cdrs
    assert (cause, disposition) == ("caller-bye", "answered")
    # The callee's regexp passed (check_it); the value names the dialled number
    # and the service's reason.
    diversion = log.read_text()
    assert f"Diversion: <sip:{DIALLED}@127.0.0.1:" in diversion, diversion
    assert ">;reason=user-busy;counter=1" in diversion, diversion
    # And the caller identity the service chose, in P-Asserted-Identity and From.
    assert 'P-Asserted-Identity:  "Help Desk" <sip:+15550100@127.0.0.1:' in diversion, diversion
    assert 'From:  "Help Desk" <sip:+15550100@127.0.0.1:' in diversion, diversion


def test_the_switch_ends_an_answered_call_at_its_maximum_duration(
    tmp_path: Path, sipp: Sipp, callees: dict[str, int]
) -> None:
    # Neither phone hangs up: both wait for the switch's BYE.
    second = sipp.start_uas("second", scenario("uas_answer.xml"), port=callees["second"])
    cluster = start(tmp_path, callees, 'destinations = ["2000"]\nmax_duration = 2.0')
    try:
        caller(sipp, cluster, "uac_callee_bye.xml", recv_timeout_ms=20000)
    finally:
        cdrs = finish(cluster, second)
    ((cause, _, disposition, _, talk),) = cdrs
    assert (cause, disposition) == ("max-duration", "answered")
    # (The CDR's times are wall-clock stamps of the events; the switch times the call
    # on its monotonic clock: they agree to within milliseconds.)
    assert 1.95 <= talk < 3.0, talk


def test_the_maximum_duration_holds_with_every_application_server_gone(
    tmp_path: Path, sipp: Sipp, callees: dict[str, int]
) -> None:
    # One application server, killed once the call is answered: the switch alone
    # still ends the call at its maximum duration.
    second = sipp.start_uas("second", scenario("uas_answer.xml"), port=callees["second"])
    cluster = start(tmp_path, callees, 'destinations = ["2000"]\nmax_duration = 8.0')
    try:
        (pid,) = [s["pid"] for s in cluster.status()["servers"]]
        run = sipp.start_uac(
            "caller", scenario("uac_callee_bye.xml"), cluster.sip_address, port=free_port(),
            calls=1, rate=1, service=DIALLED, timeout_s=60, recv_timeout_ms=30000,
        )  # fmt: skip
        time.sleep(3.0)  # the callee answers at once
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        run.finish()
        run.check(successful=1, created=1, context=cluster.log()[-3000:])
    finally:
        try:
            second.wait_for_calls(total=1, timeout=20)
            second.stop()
            second.check(successful=1, created=1)
        finally:
            cluster.stop()
    assert "application server as1 lost" in cluster.log(), cluster.log()[-3000:]
    ((cause, disposition, answered_at, ended_at),) = cluster.query(
        "SELECT cause, disposition, answered_at, ended_at FROM cdrs"
    )
    # Answered before the only server died, ended after, at its 8 s.
    assert (cause.split(" ")[0], disposition) == ("max-duration", "answered"), cause
    assert answered_at < killed_at < ended_at, (answered_at, killed_at, ended_at)
    assert 7.95 <= ended_at - answered_at < 9.0, ended_at - answered_at
