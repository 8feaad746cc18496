"""SIPp as the load: the callers (UAC) and the callee (UAS), and what their files say.

Every SIPp process runs in a directory of its own (its working directory, where
``-trace_rtt`` writes ``<scenario>_<pid>_rtt.csv``) and leaves there:

- ``stats.csv``: ``-trace_stat`` with a line every second (``-fd 1``) and a final
  one at exit; ``(C)`` columns are cumulative, so the last line is the total;
- ``errors.log``: ``-trace_err``, one entry per failed call or unexpected message,
  each starting with a timestamp: the failed calls' causes come from here;
- ``*_rtt.csv``: ``-trace_rtt -rtt_freq 1``, every response time (ms) of the
  scenario's timers, one line per call. With a larger ``-rtt_freq`` SIPp drops the
  last partial batch at exit (checked: 200 lines of 250 with -rtt_freq 100), so every
  value is written at once; the 99th percentile is computed from all of them;
- ``screens.log`` (``-trace_screen``) and ``stdout.log``.

Two callers, the issue's two figures per element:

- *strict*: SIPp's built-in ``uac`` scenario, which fails a call when a 180 comes
  after the 200 (its provisional receives are optional only before the 200);
- *throughput*: ``scenarios/uac_throughput.xml``, the same calls, accepting a
  provisional response at any point.

The callee is ``scenarios/uas.xml`` for every element (see its header).

Facts about SIPp 3.6.1 the harness relies on, each checked here: ``-timeout`` does
not always end a run (a UAC waiting on a message was seen running 10 minutes past
``-timeout 15s``), so every run is also bounded by the harness, which kills it;
SIGTERM ends SIPp at once and writes the final statistics line.
"""

from __future__ import annotations

import math
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.sipp_files import EMPTY_STATS, SippStats, StatsError, parse_stats_text
from bench.util import cpu_seconds, stop_process, udp_port_bound, wait_until

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
UAS_SCENARIO = SCENARIOS / "uas.xml"
THROUGHPUT_SCENARIO = SCENARIOS / "uac_throughput.xml"
SERVICE = "1000"  # the dialled number: twinline routes every number to the callee
BUFFER = 1048576  # -buff_size: 1 MiB socket buffers, so the kernel does not drop first

# Exit statuses of SIPp (sipp.hpp).
EXIT_OK = 0
EXIT_FAILED = 1


def sipp_binary() -> str:
    found = shutil.which("sipp")
    if found is None:
        raise RuntimeError("SIPp is missing (Debian package sip-tester; ./dev bench installs it)")
    return found


# --------------------------------------------------------------------------- files


def parse_stats(text: str) -> SippStats:
    """The last complete line of a ``-trace_stat`` CSV; all zeros while there is none."""
    try:
        return parse_stats_text(text)
    except StatsError:
        return EMPTY_STATS


# An entry of the error file starts with "2026-11-25<TAB>10:52:25.788371<TAB>1795...: ",
# not always at the start of a line: some entries have no newline at their end.
_ENTRY = re.compile(r"\d{4}-\d\d-\d\d\t[\d:.]+\t[\d.]+: ")
# Not a failure: the throughput scenario's hold ends with a receive timeout that jumps
# on; not a cause: a message for a call that had already failed ("Dead call"); and a
# warning at start about open files for media, which these calls do not have.
_NOT_A_CAUSE = ("jumping to label", "Dead call", "Maximum number of open sockets")
_CALL_ID = re.compile(r"(?i)call-id:? '?[^\s',]*'?,?")
_RECEIVED = re.compile(r"received '([^\r\n']*)[^']*'?", re.S)


def error_causes(text: str) -> Counter[str]:
    """Each failure entry of a SIPp error file, reduced to its cause, counted.

    "Aborting call on unexpected message for Call-Id '12-3@127.0.0.1': while
    expecting '200' (index 4), received 'SIP/2.0 180 Ringing ...'" becomes
    "Aborting call on unexpected message: while expecting '200' (index 4),
    received 'SIP/2.0 180 Ringing'": the call and the rest of the message go.
    """
    causes: Counter[str] = Counter()
    starts = [m.end() for m in _ENTRY.finditer(text)]
    ends = [*(m.start() for m in _ENTRY.finditer(text)), len(text)][1:]
    for start, end in zip(starts, ends, strict=True):
        entry = text[start:end].strip()
        if any(marker in entry for marker in _NOT_A_CAUSE):
            continue
        entry = _CALL_ID.sub("", entry).replace(" for :", ":").replace(" for  ", " ")
        entry = _RECEIVED.sub(lambda m: f"received '{m.group(1).strip()}'", entry)
        first = entry.splitlines()[0] if entry else ""
        first = re.sub(r"\s+", " ", first).replace(" :", ":").strip()
        causes[first[:200]] += 1
    return causes


def read_response_times(directory: Path) -> list[tuple[float, float]]:
    """(date in ms since SIPp started, response time in ms) of every call's timer 1."""
    values: list[tuple[float, float]] = []
    for path in sorted(directory.glob("*_rtt.csv")):
        for line in path.read_text(errors="replace").splitlines()[1:]:
            parts = line.split(";")
            if len(parts) >= 3 and parts[2].strip() == "1":
                try:
                    values.append((float(parts[0]), float(parts[1])))
                except ValueError:
                    continue
    return values


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): the smallest value with q % at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- runs


@dataclass
class SippRun:
    """One SIPp process and its directory."""

    name: str
    directory: Path
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float = 0.0
    cpu_s: float = 0.0  # its CPU time, sampled while it ran (the last sample before it ended)
    killed: bool = False

    @property
    def stats_file(self) -> Path:
        return self.directory / "stats.csv"

    @property
    def error_file(self) -> Path:
        return self.directory / "errors.log"

    def start(self) -> SippRun:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "stdout.log").open("wb") as out:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        self.started = time.monotonic()
        (self.directory / "command.txt").write_text(" ".join(self.command) + "\n")
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def sample_cpu(self) -> None:
        if self.running:
            assert self.process is not None
            self.cpu_s = max(self.cpu_s, cpu_seconds([self.process.pid]))

    def stats(self) -> SippStats:
        try:
            return parse_stats(self.stats_file.read_text(errors="replace"))
        except OSError:
            return EMPTY_STATS

    def causes(self) -> Counter[str]:
        try:
            return error_causes(self.error_file.read_text(errors="replace"))
        except OSError:
            return Counter()

    def response_times(self) -> list[tuple[float, float]]:
        return read_response_times(self.directory)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (SIPp writes its final statistics line), SIGKILL after ``grace``."""
        self.sample_cpu()
        if self.running:
            self.killed = True
        stop_process(self.process, signal.SIGTERM, grace)
        self.ended = time.monotonic()

    def wait(self, timeout: float, *, abort_on_failure: bool = False) -> None:
        """Wait for SIPp to end by itself, at most ``timeout`` seconds, sampling its CPU.

        With ``abort_on_failure``, stop it as soon as its statistics show a failed
        call: a search step that failed once has failed, and the rest would only cost
        time (its failed calls' causes are in the error file already).
        """
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            self.sample_cpu()
            if abort_on_failure and self.stats().failed > 0:
                break
            time.sleep(0.25)
        self.stop()


def _base(directory: Path, port: int, time_limit_s: float) -> list[str]:
    return [
        "-i", "127.0.0.1", "-p", str(port), "-bind_local", "-t", "u1", "-nostdin",
        "-buff_size", str(BUFFER),
        "-trace_stat", "-stf", str(directory / "stats.csv"), "-fd", "1",
        "-trace_err", "-error_file", str(directory / "errors.log"),
        "-trace_screen", "-screen_file", str(directory / "screens.log"),
        "-timeout", f"{math.ceil(time_limit_s)}s",
    ]  # fmt: skip


def start_uas(directory: Path, port: int, time_limit_s: float) -> SippRun:
    """The callee, listening on ``port``; returns once its socket is bound."""
    command = [sipp_binary(), "-sf", str(UAS_SCENARIO), *_base(directory, port, time_limit_s)]
    run = SippRun("uas", directory, command).start()
    assert run.process is not None
    if not wait_until(lambda: udp_port_bound(port) or not run.running, 10.0) or not run.running:
        run.stop()
        out = (directory / "stdout.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"SIPp UAS did not start on port {port}:\n{out}")
    return run


def throughput_scenario(directory: Path, hold_ms: int) -> Path:
    """uac_throughput.xml with its hold set to ``hold_ms`` (see the scenario's comment)."""
    text = THROUGHPUT_SCENARIO.read_text()
    pattern, hold = r'timeout="\d+" ontimeout="bye"', f'timeout="{hold_ms}" ontimeout="bye"'
    held, n = re.subn(pattern, hold, text)
    assert n == 3, "uac_throughput.xml: expected three hold receives"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "uac_throughput.xml"
    path.write_text(held)
    return path


def with_callers(directory: Path, scenario: str, callers: Path) -> list[str]:
    """The scenario with each call's caller (From) taken from ``callers``, a SIPp
    injection file (``-inf``, a line per caller): the built-in ``uac`` as SIPp itself
    prints it (``-sd uac``), or our throughput scenario; the messages are otherwise
    the same."""
    if scenario == "strict":
        # SIPp exits with 99 after printing it.
        dumped = subprocess.run(
            [sipp_binary(), "-sd", "uac"], capture_output=True, text=True, check=False, timeout=10
        )
        text = dumped.stdout
    else:
        text = (directory / "uac_throughput.xml").read_text()
    text, n = re.subn(r"From: sipp <sip:sipp@", "From: [field0] <sip:[field0]@", text)
    if n == 0:
        raise RuntimeError(f"no From header to give a caller in the {scenario} scenario")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"uac_{scenario}_callers.xml"
    path.write_text(text)
    return ["-sf", str(path), "-inf", str(callers)]


def start_uac(
    directory: Path,
    target: str,
    *,
    scenario: str,
    calls: int,
    rate: float,
    hold_ms: int,
    limit: int,
    time_limit_s: float,
    recv_timeout_ms: int = 5000,
    callers: Path | None = None,
) -> SippRun:
    """Callers placing ``calls`` calls at ``rate``/s to ``target`` (HOST:PORT).

    ``scenario`` is "strict" (SIPp's built-in uac, with -d for the hold) or
    "throughput" (our scenario, the hold written into it). ``-recv_timeout`` fails a
    call that waits longer than that for a message that has no timer of its own.
    With ``callers`` (an injection file), each call comes from the next caller in it.
    """
    from bench.util import free_port  # noqa: PLC0415 - kept next to its one use

    if scenario == "strict":
        chosen = ["-sn", "uac", "-d", str(hold_ms)]
    elif scenario == "throughput":
        chosen = ["-sf", str(throughput_scenario(directory, hold_ms))]
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    if callers is not None:
        chosen = [*with_callers(directory, scenario, callers), *chosen[2:]]
    command = [
        sipp_binary(), target, *chosen, *_base(directory, free_port(), time_limit_s),
        "-m", str(calls), "-r", f"{rate:g}", "-rp", "1000", "-l", str(limit),
        "-s", SERVICE, "-recv_timeout", str(recv_timeout_ms),
        "-trace_rtt", "-rtt_freq", "1",
    ]  # fmt: skip
    return SippRun("uac", directory, command).start()


# --------------------------------------------------------------------------- outcome


@dataclass
class Outcome:
    """What one UAC run (and its callee) did, in the terms a step is judged by."""

    rate: float
    calls: int
    created: int
    successful: int
    failed: int
    callee_failed: int
    setup_p50_ms: float | None
    setup_p99_ms: float | None
    setup_max_ms: float | None
    achieved_rate: float | None  # calls/s, from the dates of the 200s
    retransmissions: int
    causes: dict[str, int] = field(default_factory=dict)  # caller's, then "callee: ..."
    counters: dict[str, int] = field(default_factory=dict)
    uac_cpu_s: float = 0.0
    uas_cpu_s: float = 0.0
    element_cpu_s: float = 0.0
    wall_s: float = 0.0
    aborted: bool = False


def outcome(uac: SippRun, uas: SippRun | None, *, rate: float, calls: int) -> Outcome:
    stats = uac.stats()
    times = uac.response_times()
    setups = [t for _, t in times]
    achieved = None
    if len(times) >= 2:
        dates = sorted(d for d, _ in times)
        span = (dates[-1] - dates[0]) / 1000
        achieved = (len(dates) - 1) / span if span > 0 else None
    causes = dict(uac.causes())
    callee_failed = 0
    if uas is not None:
        callee = uas.stats()
        callee_failed = callee.failed
        for cause, n in uas.causes().items():
            causes[f"callee: {cause}"] = n
    return Outcome(
        rate=rate,
        calls=calls,
        created=stats.created,
        successful=stats.successful,
        failed=stats.failed,
        callee_failed=callee_failed,
        setup_p50_ms=percentile(setups, 50),
        setup_p99_ms=percentile(setups, 99),
        setup_max_ms=max(setups) if setups else None,
        achieved_rate=achieved,
        retransmissions=stats.retransmissions,
        causes=causes,
        counters=stats.failure_causes,
        uac_cpu_s=uac.cpu_s,
        uas_cpu_s=uas.cpu_s if uas is not None else 0.0,
        wall_s=(uac.ended - uac.started) if uac.ended else 0.0,
    )


# --------------------------------------------------------------------------- established calls


def established(uac: SippRun) -> int:
    """Calls answered so far (a 200 received): one response-time line each."""
    return len(uac.response_times())


def establish(
    directory: Path,
    target: str,
    callee_port: int,
    *,
    calls: int,
    rate: float,
    hold_s: int,
    settle_timeout_s: float = 60.0,
    callers: Path | None = None,
) -> tuple[SippRun, SippRun]:
    """A callee, and callers that place ``calls`` calls at ``rate``/s and hold them
    ``hold_s`` seconds; returns once every call is answered (or raises).

    The callers use the throughput scenario: a late provisional does not end a held
    call. Stop both runs when done (``stop()``); the calls end with them.
    """
    limit_s = hold_s + calls / rate + 120
    uas = start_uas(directory / "uas", callee_port, limit_s)
    uac = start_uac(
        directory / "uac",
        target,
        scenario="throughput",
        calls=calls,
        rate=rate,
        hold_ms=hold_s * 1000,
        limit=calls,
        time_limit_s=limit_s,
        recv_timeout_ms=10000,
        callers=callers,
    )
    deadline = time.monotonic() + calls / rate + settle_timeout_s
    count = 0
    while time.monotonic() < deadline:
        count = established(uac)
        if count >= calls or not uac.running or uac.stats().failed:
            break
        time.sleep(0.5)
    if count < calls:
        stats = uac.stats()
        uac.stop()
        uas.stop()
        raise RuntimeError(
            f"only {count} of {calls} calls established at {rate:g}/s"
            f" (failed {stats.failed}: {dict(uac.causes())})"
        )
    return uas, uac
