"""Number translation, forwarding and screening end to end: `twinline up` as real
processes, SIPp as the phones, service data written with the operator's CLI.

One cluster serves the whole module (two application servers): its plan sends 0800...
to translation, 50... to forwarding and 60... to screening, and static routes send
the numbers the services route to SIPp callees on fixed ports (7N... to callee N).
Each test starts the callees it needs on their ports, so what a callee received is
what that test's calls did. Decisions are asserted by SIPp itself (each scenario
fails a call that gets another answer; the diverted callee checks the Diversion
header's form with a regexp), by the callees' call counts, and by the CDRs.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, free_port
from .sipp import Sipp, SippRun, scenario

pytestmark = pytest.mark.integration

# The callees, by role: what each route's prefix reaches.
CALLEES = ("a", "b", "c", "busy", "ringing", "diverted")
ROUTES = {
    "71": "a", "72": "b", "73": "c", "74": "busy", "75": "ringing", "76": "diverted",
    "5001": "busy", "5002": "ringing", "60": "a",
}  # fmt: skip


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {name: free_port() for name in CALLEES}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("numbers")
    sip_port = free_port()
    routes = "".join(
        f'[[routes]]\nprefix = "{prefix}"\ntarget = "127.0.0.1:{ports[callee]}"\n\n'
        for prefix, callee in ROUTES.items()
    )
    # 9...: back into the switch itself, the 9 taken off (a forwarding loop's way out).
    routes += f'[[routes]]\nprefix = "9"\ntarget = "127.0.0.1:{sip_port}"\nstrip = 1\n\n'
    # 60...: a subscriber's chain, as a carrier sells it.
    plan = "".join(
        f'[[plan]]\nservice = {service}\nnumber = "{number}"\n\n'
        for number, service in (("0800", '"translation"'), ("50", '"forwarding"'),
                                ("60", '["screening", "forwarding", "basic"]'))
    )  # fmt: skip
    cluster = Cluster(
        directory / "cluster",
        servers=2,
        callee_port=free_port(),  # the catch-all route: nothing listens there
        sip_port=sip_port,
        extra_config=routes + plan + "[services.translation]\nring_seconds = 2.0\n",
    )
    cluster.start(timeout=60)  # a loaded machine starts Python slowly
    try:
        yield cluster
    finally:
        code = cluster.stop()
    assert code == 0, cluster.log()[-4000:]
    assert "Traceback" not in cluster.log(), cluster.log()[-6000:]


def cli(cluster: Cluster, *args: str, stdin: str | None = None) -> str:
    """`twinline ARGS --config FILE`, as an operator runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "twinline", *args, "--config", str(cluster.config_path)],
        capture_output=True, text=True, input=stdin, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"twinline {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def load(cluster: Cluster, table: str, csv: str) -> None:
    path = cluster.directory / f"{table}-{time.monotonic_ns()}.csv"
    path.write_text(csv)
    cli(cluster, table, "import", str(path))


def refused_scenario(
    directory: Path, status: int, caller: str = "caller", privacy: str = "none"
) -> Path:
    """uac_refused_status.xml with its expected status, caller and Privacy filled in."""
    text = scenario("uac_refused_status.xml").read_text()
    text = text.replace("STATUS", str(status)).replace("FROM_USER", caller)
    path = directory / f"uac_refused_status_{status}_{caller}_{privacy}.xml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace("PRIVACY", privacy))
    return path


def calling_from(directory: Path, number: str, *, forwarded: bool = False) -> Path:
    """uac_call.xml (uac_forwarded.xml) with the caller's user part `number`."""
    name = "uac_forwarded.xml" if forwarded else "uac_call.xml"
    text = scenario(name).read_text().replace("<sip:caller@", f"<sip:{number}@")
    path = directory / "scenarios" / f"from_{number}_{name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


class Phones:
    """The test's SIPp processes: callees on their route's ports, callers."""

    def __init__(self, sipp: Sipp, cluster: Cluster, ports: dict[str, int]) -> None:
        self.sipp, self.cluster, self.ports = sipp, cluster, ports

    def callee(
        self, role: str, scenario_name: str, *, log: bool = False, trace: bool = False
    ) -> SippRun:
        extra: tuple[str, ...] = ()
        if log:
            extra = ("-trace_logs", "-log_file", str(self.log_of(role)))
        return self.sipp.start_uas(
            role, scenario(scenario_name), port=self.ports[role], extra=extra, trace_msg=trace
        )

    def log_of(self, role: str) -> Path:
        return self.sipp.directory / f"{role}_logs.log"

    def call(self, name: str, number: str, scenario_file: Path | str, *, calls: int = 1,
             rate: float = 10, **options: object) -> SippRun:  # fmt: skip
        path = scenario_file if isinstance(scenario_file, Path) else scenario(scenario_file)
        run = self.sipp.run_uac(
            name, path, self.cluster.sip_address, port=free_port(), calls=calls, rate=rate,
            service=number, timeout_s=60, **options,
        )  # fmt: skip
        run.check(successful=calls, created=calls, context=self.cluster.log()[-3000:])
        return run

    def refused(
        self, number: str, status: int, caller: str = "caller", privacy: str = "none"
    ) -> None:
        path = refused_scenario(self.sipp.directory / "scenarios", status, caller, privacy)
        self.call(f"refused-{number}-{status}-{caller}-{privacy}", number, path)

    def answered(self, run: SippRun, calls: int) -> None:
        """A callee answered exactly `calls` calls, all of them well."""
        run.wait_for_calls(total=calls, timeout=20)
        run.stop()
        run.check(successful=calls, created=calls, context=self.cluster.log()[-3000:])


@pytest.fixture
def phones(sipp: Sipp, cluster: Cluster, ports: dict[str, int]) -> Phones:
    return Phones(sipp, cluster, ports)


def cdrs(cluster: Cluster, callee: str, calls: int = 1) -> list[tuple[object, ...]]:
    """(status, disposition, seconds to answer) of the calls to `callee`, in order, once
    `calls` of them are written (CDRs are written in batches behind the calls)."""
    deadline = time.monotonic() + 10
    while True:
        rows = cluster.query(
            "SELECT callee, status, disposition, answered_at - started_at FROM cdrs"
            " ORDER BY started_at"
        )
        found = [row[1:] for row in rows if row[0] == callee]
        if len(found) >= calls or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


# --- number translation ---------------------------------------------------------------


def test_translation_shares_within_5_percent_over_1000_calls(phones: Phones) -> None:
    load(
        phones.cluster, "numbers",
        "number,step,target,weight\n0800100,1,7100,50\n0800100,2,7200,30\n0800100,3,7300,20\n",
    )  # fmt: skip
    callees = {role: phones.callee(role, "uas_answer.xml") for role in ("a", "b", "c")}
    phones.call("caller", "0800100", "uac_call.xml", calls=1000, rate=100, limit=200)
    counts = {}
    for role, run in callees.items():
        run.wait_for_calls(total=1, timeout=20)
        run.stop()
        counts[role] = run.stats().successful
        assert run.stats().failed == 0, run.report()
    assert sum(counts.values()) == 1000, counts
    for role, share in (("a", 0.50), ("b", 0.30), ("c", 0.20)):
        assert abs(counts[role] / 1000 - share) <= 0.05, counts


def _hhmm(at: dt.datetime) -> str:
    return at.strftime("%H:%M")


def test_translation_follows_the_time_of_day_and_holidays(phones: Phones) -> None:
    now = dt.datetime.now(dt.UTC)
    later, earlier, much_later = (now + dt.timedelta(hours=h) for h in (1, -1, 3))
    office = f"{_hhmm(earlier)}-{_hhmm(later)}"  # now is in office hours
    night = f"{_hhmm(later)}-{_hhmm(earlier)}"
    load(
        phones.cluster, "numbers",
        "number,step,target,hours,holidays\n"
        f"0800200,1,7101,{office},except\n0800200,2,7201,{night},except\n"
        "0800200,3,7301,all,only\n",
    )  # fmt: skip
    callees = {role: phones.callee(role, "uas_answer.xml") for role in ("a", "b", "c")}
    phones.call("office-hours", "0800200", "uac_call.xml")
    # Office hours move on by two hours: now is night (an import replaces both rows).
    load(
        phones.cluster, "numbers",
        "number,step,target,hours,holidays\n"
        f"0800200,1,7101,{_hhmm(later)}-{_hhmm(much_later)},except\n"
        f"0800200,2,7201,{_hhmm(much_later)}-{_hhmm(later)},except\n",
    )  # fmt: skip
    phones.call("night", "0800200", "uac_call.xml")
    # Today is a holiday (the module's other numbers apply on any day).
    cli(phones.cluster, "holidays", "add", now.date().isoformat(), "--name", "test day")
    phones.call("holiday", "0800200", "uac_call.xml")
    for run in callees.values():
        phones.answered(run, 1)  # one call each: office, night, holiday


def test_translation_overflows_on_busy_and_no_answer_and_all_busy_is_486(
    phones: Phones,
) -> None:
    load(
        phones.cluster, "numbers",
        "number,step,target,priority\n0800300,1,7400,0\n0800300,2,7102,1\n"
        "0800301,1,7401,0\n0800301,2,7402,0\n0800302,1,7500,0\n0800302,2,7103,1\n",
    )  # fmt: skip
    busy = phones.callee("busy", "uas_busy.xml")
    ringing = phones.callee("ringing", "uas_ring_cancel.xml")
    answering = phones.callee("a", "uas_answer.xml")
    phones.call("overflow-busy", "0800300", "uac_call.xml")
    phones.refused("0800301", 486)
    phones.refused("0800999", 404)  # not a translated number
    # [services.translation] ring_seconds = 2: the first rings 2 s, then the next.
    phones.call("overflow-no-answer", "0800302", "uac_call.xml")
    phones.answered(answering, 2)
    phones.answered(ringing, 1)
    busy.wait_for_calls(total=3, timeout=20)
    busy.stop()
    assert busy.stats().successful == 3, busy.report()  # one overflowed, two all busy
    ((_, disposition, setup),) = cdrs(phones.cluster, "0800302")
    assert disposition == "answered" and 2.0 <= float(str(setup)) < 6.0, setup


# --- forwarding -------------------------------------------------------------------------


def test_forwarding_on_busy_gives_181_and_diversion(phones: Phones) -> None:
    cli(phones.cluster, "forwarding", "add", "5001", "busy", "--target", "7601")
    busy = phones.callee("busy", "uas_busy.xml")
    diverted = phones.callee("diverted", "uas_diverted.xml", log=True, trace=True)
    # uac_forwarded.xml fails the call unless a 181 comes before the answer.
    phones.call("caller", "5001", "uac_forwarded.xml", duration_ms=200)
    phones.answered(diverted, 1)
    busy.stop()
    assert busy.stats().successful == 1, busy.report()
    log = phones.log_of("diverted").read_text()
    assert "Diversion: <sip:5001@127.0.0.1:" in log, log
    assert ">;reason=user-busy;counter=1" in log, log
    # The caller sent Max-Forwards: 70; the forwarded INVITE has one hop less.
    invite = (phones.sipp.directory / "diverted_messages.log").read_text()
    assert "\nMax-Forwards: 69\n" in invite, invite


def test_forwarding_after_the_no_answer_time(phones: Phones) -> None:
    cli(phones.cluster, "forwarding", "add", "5002", "no-answer", "--target", "7602",
        "--ring-seconds", "2")  # fmt: skip
    ringing = phones.callee("ringing", "uas_ring_cancel.xml")
    diverted = phones.callee("diverted", "uas_diverted.xml", log=True)
    phones.call("caller", "5002", "uac_forwarded.xml", duration_ms=200)
    phones.answered(diverted, 1)
    phones.answered(ringing, 1)  # rang, then cancelled by the switch
    log = phones.log_of("diverted").read_text()
    assert "Diversion: <sip:5002@127.0.0.1:" in log and "reason=no-answer;counter=1" in log, log
    ((status, disposition, setup),) = cdrs(phones.cluster, "5002")
    assert disposition == "answered" and 2.0 <= float(str(setup)) < 6.0, (status, setup)


def test_hunting_rings_the_list_in_order(phones: Phones) -> None:
    load(
        phones.cluster, "forwarding",
        "subscriber,kind,step,target,ring_seconds\n"
        "5003,hunt,1,7503,1\n5003,hunt,2,7403,5\n5003,hunt,3,7603,5\n",
    )  # fmt: skip
    ringing = phones.callee("ringing", "uas_ring_cancel.xml", trace=True)
    busy = phones.callee("busy", "uas_busy.xml", trace=True)
    diverted = phones.callee("diverted", "uas_diverted.xml", log=True)
    phones.call("caller", "5003", "uac_forwarded.xml", duration_ms=200)
    phones.answered(diverted, 1)
    phones.answered(ringing, 1)
    phones.answered(busy, 1)
    assert "reason=follow-me;counter=1" in phones.log_of("diverted").read_text()
    # The first step rang its second before the second step was tried.
    first, second = (_first_invite(phones.sipp, role) for role in ("ringing", "busy"))
    assert second - first >= 0.9, (first, second)
    ((_, disposition, setup),) = cdrs(phones.cluster, "5003")
    assert disposition == "answered" and float(str(setup)) >= 1.0


def _first_invite(sipp: Sipp, role: str) -> float:
    """When a callee received its first INVITE (SIPp's message trace: each message
    follows a line of dashes and its local date and time)."""
    lines = (sipp.directory / f"{role}_messages.log").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("INVITE "):
            stamp = next(s for s in reversed(lines[:i]) if s.startswith("-----"))
            return dt.datetime.fromisoformat(stamp.strip("- ")).timestamp()
    raise AssertionError(f"no INVITE in {role}'s trace")


def test_a_forwarding_loop_is_stopped(phones: Phones) -> None:
    # 5004 forwards to 95004: the switch's route 9 brings the call back to it as 5004,
    # with a Diversion naming 5004. The forwarding service stops it there.
    cli(phones.cluster, "forwarding", "add", "5004", "always", "--target", "95004")
    phones.refused("5004", 482)
    # Two calls at the switch: the caller's, and its diversion come back, refused there
    # (not after running round until Max-Forwards was used up).
    assert [row[0] for row in cdrs(phones.cluster, "5004", calls=2)] == [482, 482]
    # And within one call: two plans that forward to each other.
    load(
        phones.cluster, "forwarding",
        "subscriber,kind,target\n5005,always,5006\n5006,always,5005\n",
    )  # fmt: skip
    phones.refused("5005", 482)


# --- screening ------------------------------------------------------------------------


def test_blocked_and_anonymous_callers_are_refused_with_their_codes_in_a_chain(
    phones: Phones,
) -> None:
    load(
        phones.cluster, "screening",
        "subscriber,kind,prefix\n6001,block,33\n6001,reject-anonymous,\n*,allow,3315\n"
        "6002,block,33\n",
    )  # fmt: skip
    cli(phones.cluster, "forwarding", "add", "6002", "always", "--target", "7602")
    allowed = phones.callee("a", "uas_answer.xml")
    diverted = phones.callee("diverted", "uas_diverted.xml", log=True)
    phones.refused("6001", 603, caller="3312")
    phones.refused("6001", 433, caller="anonymous")
    phones.refused("6001", 433, caller="4420", privacy="id")
    phones.call("allowed", "6001", calling_from(phones.sipp.directory, "4420"))
    # The operator's allow list beats the callee's block of 33.
    phones.call("operator-allowed", "6001", calling_from(phones.sipp.directory, "331500"))
    phones.answered(allowed, 2)
    # Screening, then forwarding: a blocked caller is not forwarded; another is.
    phones.refused("6002", 603, caller="3312")
    phones.call("forwarded", "6002", calling_from(phones.sipp.directory, "4420", forwarded=True))
    phones.answered(diverted, 1)
    assert "Diversion: <sip:6002@" in phones.log_of("diverted").read_text()
