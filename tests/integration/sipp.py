"""Running SIPp as the phones, and reading what it reports.

SIPp (Debian package ``sip-tester``, 3.6.1 here) plays the callers and callees:
a UAC (``run_uac`` / ``start_uac``) places calls from an XML scenario and
finishes on its own after ``-m`` calls; a UAS (``start_uas``) answers calls in
the background until it is stopped. Every run gets its own files under one
directory: the statistics CSV (``-trace_stat``), the error log (``-trace_err``),
the final screens (``-trace_screen``) and SIPp's stdout.

Facts about SIPp 3.6.1 that this module and the scenarios rely on (each one
checked by running it; see also tests/scenarios/*.xml):

- The statistics CSV is ``;``-separated with a header line; ``-fd 1`` adds a
  line every second and SIPp adds a final line when it exits, also on SIGTERM
  (not on SIGKILL). ``(C)`` columns are cumulative: the last line is the total.
- Exit status: 0 every call succeeded, 1 at least one failed, 97 stopped by an
  internal command, 99 no call was processed, 254 its SIP port could not be
  bound, 255 another fatal error (a bad scenario; -timeout reached, with
  -timeout_error; without it, a run cut short by -timeout ends with 1).
- A UAC was seen to end with exit status 0 while calls were still in progress
  (stuck waiting for a message that had no retransmission or timeout left to
  bring it): SIPp drops such calls at the end without counting them as
  failed. So a run is only good when SuccessfulCall equals the number of
  calls placed and CurrentCall is 0; ``-recv_timeout`` makes such calls fail
  visibly (FailedTimeoutOnRecv) instead.
- A call in ``<timewait>`` still counts in CurrentCall and is counted as
  successful only when the timewait is over; a UAS given ``-m N`` exits once
  its N-th call is over, timewait included. SIGTERM ends SIPp at once (exit
  status 0 if no call failed) and the calls in progress are counted neither
  way.
- SIGUSR2 has the screens written to the -screen_file at once (SIGTERM alone
  leaves it empty). SIGUSR1 asks for a soft stop, which SIPp turns into an
  abort about ten seconds later if calls are still in progress; SIGTERM is
  the way to stop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.sipp_files import SippStats, StatsError, bound_ports, parse_stats_text

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"

# Exit statuses of SIPp (sipp.hpp: EXIT_TEST_OK, EXIT_TEST_FAILED, ...).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INTERNAL_COMMAND = 97
EXIT_NO_CALL = 99
EXIT_CANNOT_BIND = 254
EXIT_FATAL = 255

# How much of a log goes into an assertion message.
_MAX_LOG_CHARS = 6000


def sipp_binary() -> str | None:
    """The sipp executable on PATH (or $SIPP), None when there is none."""
    explicit = os.environ.get("SIPP")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    return shutil.which("sipp")


def scenario(name: str) -> Path:
    """The path of one of our scenarios, by file name (``uac_call.xml``)."""
    path = SCENARIOS / name
    if not path.is_file():
        raise FileNotFoundError(f"no scenario {name!r} in {SCENARIOS}")
    return path


def _tail(text: str, limit: int = _MAX_LOG_CHARS) -> str:
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters cut ...]\n{text[-limit:]}"


def _first_screen(screens: str) -> str:
    """The scenario screen: the first of the screens SIPp dumps with -trace_screen."""
    lines = screens.splitlines()
    for i, line in enumerate(lines[1:], start=1):
        if line.startswith("---") and "Screen" in line:
            return "\n".join(lines[:i])
    return screens


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------- stats


def parse_stats(path: Path) -> SippStats:
    if not path.exists():
        raise StatsError(f"{path} does not exist (SIPp did not start, or has no -trace_stat)")
    return parse_stats_text(_read(path))


# --------------------------------------------------------------------------- runs


@dataclass
class SippRun:
    """One SIPp process: its command, files and, once it has ended, its results."""

    name: str
    command: list[str]
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    timed_out: bool = False
    time_limit: int = 120  # its -timeout, in seconds
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def stat_file(self) -> Path:
        return self.directory / f"{self.name}_stats.csv"

    @property
    def error_file(self) -> Path:
        return self.directory / f"{self.name}_errors.log"

    @property
    def screen_file(self) -> Path:
        return self.directory / f"{self.name}_screens.log"

    @property
    def output_file(self) -> Path:
        return self.directory / f"{self.name}_stdout.log"

    @property
    def message_file(self) -> Path:
        return self.directory / f"{self.name}_messages.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stats(self) -> SippStats:
        return parse_stats(self.stat_file)

    def errors(self) -> str:
        return _read(self.error_file)

    def screens(self) -> str:
        return _read(self.screen_file)

    def report(self) -> str:
        """Everything useful about this run, for an assertion message."""
        parts = [
            f"--- SIPp {self.name}: exit status {self.returncode}"
            + (" (killed after its time limit)" if self.timed_out else "")
            + f", {self.ended_at - self.started_at:.1f} s",
            "command: " + " ".join(self.command),
            f"files: {self.directory}/{self.name}_*",
        ]
        try:
            parts.append("stats: " + self.stats().summary())
        except StatsError as e:
            parts.append(f"stats: unavailable ({e})")
        screens = self.screens()
        if screens:
            # The scenario screen (per-message counts, retransmissions,
            # timeouts, unexpected messages) is the first of the dumped screens.
            parts.append("final scenario screen:\n" + _first_screen(screens))
        errors = self.errors()
        if errors:
            parts.append("error log:\n" + _tail(errors))
        elif self.returncode not in (EXIT_OK, EXIT_FAILED, None):
            parts.append("stdout/stderr:\n" + _tail(_read(self.output_file), 3000))
        return "\n".join(parts)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end; kill it (and say so) past ``timeout`` seconds."""
        assert self.process is not None, "not started"
        try:
            self.returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.returncode = terminate(self.process)
        self.ended_at = time.monotonic()
        return self.returncode

    def finish(self) -> int:
        """Wait for a UAC to end by itself: its -timeout plus a margin, then kill it."""
        return self.wait(timeout=self.time_limit + 15)

    def stop(self, grace: float = 5.0) -> int:
        """End a background SIPp with SIGTERM (it still writes its final statistics)."""
        if self.process is None:
            raise RuntimeError("not started")
        if self.process.poll() is None:
            # SIGUSR2 has the screens written to the screen file, which SIGTERM
            # alone does not do; they show what each call was waiting for.
            self.process.send_signal(signal.SIGUSR2)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.3)
            self.returncode = terminate(self.process, grace=grace)
        else:
            self.returncode = self.process.returncode
        self.ended_at = time.monotonic()
        return self.returncode

    def wait_for_calls(self, *, total: int, timeout: float, idle: bool = True) -> SippStats | None:
        """Poll a running SIPp's statistics until ``total`` calls were created and,
        with ``idle``, none is in progress any more (timewaits included).

        Returns the last statistics read (None if there were none). The file is
        written once a second (-fd 1), so this takes up to about a second more
        than the calls themselves.
        """
        deadline = time.monotonic() + timeout
        last: SippStats | None = None
        while True:
            with contextlib.suppress(StatsError):
                last = self.stats()
            done = last is not None and last.created >= total and not (idle and last.current)
            if done or not self.running or time.monotonic() >= deadline:
                return last
            time.sleep(0.25)

    def check(
        self,
        *,
        successful: int,
        created: int | None = None,
        allow_exit: Sequence[int] = (EXIT_OK,),
        context: str = "",
    ) -> SippStats:
        """Assert a finished run: no failed call, exactly ``successful`` calls
        succeeded, none left in progress, and an expected exit status.
        """
        stats = self.stats()
        problems = []
        if self.timed_out:
            problems.append("SIPp had to be killed: it ran past its time limit")
        if self.returncode not in allow_exit:
            problems.append(f"exit status {self.returncode} (expected one of {list(allow_exit)})")
        if stats.failed:
            problems.append(f"{stats.failed} failed calls")
        if stats.successful != successful:
            problems.append(f"{stats.successful} successful calls, expected {successful}")
        if created is not None and stats.created != created:
            problems.append(f"{stats.created} calls created, expected {created}")
        if stats.current:
            problems.append(f"{stats.current} calls still in progress when SIPp stopped")
        if problems:
            header = f"SIPp {self.name}: " + "; ".join(problems)
            raise AssertionError("\n".join(x for x in (header, context, self.report()) if x))
        return stats


def terminate(process: subprocess.Popen[bytes], grace: float = 5.0) -> int:
    """SIGTERM, then SIGKILL after ``grace`` seconds; returns the exit status."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=10)


# --------------------------------------------------------------------------- ports


def wait_until_bound(
    port: int, transport: str, process: subprocess.Popen[bytes], timeout: float
) -> bool:
    """Wait until something listens on ``port`` (SIPp binds it a moment after it starts).

    Returns False if the process ended first or the time ran out. Without
    /proc (not Linux), waits half a second and hopes.
    """
    if not Path("/proc/net/udp").exists():
        time.sleep(0.5)
        return process.poll() is None
    proto = "tcp" if transport.startswith("t") else "udp"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if port in bound_ports(proto):
            return True
        time.sleep(0.02)
    return False


# --------------------------------------------------------------------------- runner


@dataclass
class Sipp:
    """Starts SIPp processes whose files all go to ``directory``.

    Background processes still running at ``close()`` are stopped with SIGTERM.
    """

    binary: str
    directory: Path
    local_ip: str = "127.0.0.1"
    runs: list[SippRun] = field(default_factory=list)

    def _command(
        self,
        name: str,
        scenario_file: Path | str,
        *,
        remote: str | None,
        port: int,
        transport: str,
        calls: int | None,
        rate: float | None,
        rate_period_ms: int | None,
        limit: int | None,
        service: str | None,
        lost: int | None,
        recv_timeout_ms: int | None,
        duration_ms: int | None,
        timeout_s: int,
        timeout_error: bool,
        trace_msg: bool,
        extra: Sequence[str],
    ) -> SippRun:
        run = SippRun(name=name, command=[], directory=self.directory, time_limit=timeout_s)
        if any(r.name == name for r in self.runs):
            raise ValueError(f"a SIPp run named {name!r} already exists in {self.directory}")
        command = [self.binary]
        if remote is not None:
            command.append(remote)
        scenario_path = str(scenario_file)
        if scenario_path in ("uac", "uas"):
            command += ["-sn", scenario_path]
        else:
            command += ["-sf", scenario_path]
        command += [
            "-i", self.local_ip, "-p", str(port), "-bind_local",
            "-t", transport,
            "-nostdin",
            "-buff_size", "1048576",
            "-trace_stat", "-stf", str(run.stat_file), "-fd", "1",
            "-trace_err", "-error_file", str(run.error_file),
            "-trace_screen", "-screen_file", str(run.screen_file),
            "-timeout", f"{timeout_s}s",
        ]  # fmt: skip
        if timeout_error:
            command.append("-timeout_error")
        if trace_msg:
            command += ["-trace_msg", "-message_file", str(run.message_file)]
        if calls is not None:
            command += ["-m", str(calls)]
        if rate is not None:
            command += ["-r", f"{rate:g}"]
        if rate_period_ms is not None:
            command += ["-rp", str(rate_period_ms)]
        if limit is not None:
            command += ["-l", str(limit)]
        if service is not None:
            command += ["-s", service]
        if lost is not None:
            command += ["-lost", str(lost)]
        if recv_timeout_ms is not None:
            command += ["-recv_timeout", str(recv_timeout_ms)]
        if duration_ms is not None:
            command += ["-d", str(duration_ms)]
        command += list(extra)
        run.command = command
        return run

    def _spawn(self, run: SippRun) -> SippRun:
        self.directory.mkdir(parents=True, exist_ok=True)
        with run.output_file.open("wb") as out:
            run.process = subprocess.Popen(
                run.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
            )
        run.started_at = time.monotonic()
        self.runs.append(run)
        return run

    def start_uac(
        self,
        name: str,
        scenario_file: Path | str,
        remote: str,
        *,
        port: int,
        calls: int,
        rate: float,
        transport: str = "u1",
        rate_period_ms: int | None = None,
        limit: int | None = None,
        service: str | None = None,
        lost: int | None = None,
        recv_timeout_ms: int | None = 15000,
        duration_ms: int | None = None,
        timeout_s: int = 120,
        trace_msg: bool = False,
        extra: Sequence[str] = (),
    ) -> SippRun:
        """Start a UAC placing ``calls`` calls at ``rate`` per second to ``remote``
        (host:port). ``-timeout_error`` makes a run past ``timeout_s`` an error.
        """
        run = self._command(
            name, scenario_file, remote=remote, port=port, transport=transport,
            calls=calls, rate=rate, rate_period_ms=rate_period_ms, limit=limit,
            service=service, lost=lost, recv_timeout_ms=recv_timeout_ms,
            duration_ms=duration_ms, timeout_s=timeout_s, timeout_error=True,
            trace_msg=trace_msg, extra=extra,
        )  # fmt: skip
        return self._spawn(run)

    def run_uac(self, *args: Any, **kwargs: Any) -> SippRun:
        """``start_uac`` and wait for the end (its -timeout plus a margin, then it is killed)."""
        run = self.start_uac(*args, **kwargs)
        run.finish()
        return run

    def start_uas(
        self,
        name: str,
        scenario_file: Path | str,
        *,
        port: int,
        transport: str = "u1",
        calls: int | None = None,
        lost: int | None = None,
        recv_timeout_ms: int | None = 15000,
        timeout_s: int = 300,
        trace_msg: bool = False,
        extra: Sequence[str] = (),
        ready_timeout: float = 10.0,
    ) -> SippRun:
        """Start a UAS in the background, listening on ``port``; returns once it listens."""
        run = self._command(
            name, scenario_file, remote=None, port=port, transport=transport,
            calls=calls, rate=None, rate_period_ms=None, limit=None, service=None,
            lost=lost, recv_timeout_ms=recv_timeout_ms, duration_ms=None,
            timeout_s=timeout_s, timeout_error=False, trace_msg=trace_msg, extra=extra,
        )  # fmt: skip
        self._spawn(run)
        assert run.process is not None
        if not wait_until_bound(port, transport, run.process, ready_timeout):
            run.stop()
            raise RuntimeError(
                f"SIPp UAS {name} is not listening on {transport} port {port}"
                f" after {ready_timeout} s\n{run.report()}\n" + _tail(_read(run.output_file), 3000)
            )
        return run

    def close(self) -> None:
        for run in self.runs:
            if run.running:
                run.stop()

    def reports(self) -> Iterator[str]:
        for run in self.runs:
            yield run.report()


# --------------------------------------------------------------------------- malformed


@dataclass(frozen=True)
class Fault:
    """One kind of malformed INVITE for uac_malformed.xml (one injection line)."""

    name: str
    request_uri: str  # field0
    cseq_method: str = "INVITE"  # field1
    max_forwards: str = "70"  # field2
    content_length: str = "0"  # field3 (the INVITE has no body)


def malformed_faults(service: str, remote: str) -> list[Fault]:
    """The faults uac_malformed.xml cycles through, one per call. Each leaves
    Via, From, To, Call-ID and the CSeq number usable, so a 400 can be sent."""
    uri = f"sip:{service}@{remote}"
    return [
        Fault("cseq-method-differs-from-request", uri, cseq_method="OPTIONS"),
        Fault("max-forwards-not-a-number", uri, max_forwards="seventy"),
        Fault("content-length-beyond-datagram", uri, content_length="9999"),
        Fault("request-uri-without-host", f"sip:{service}@"),
    ]


def write_injection_file(path: Path, faults: Sequence[Fault]) -> Path:
    """The -inf file for uac_malformed.xml: SEQUENTIAL, one line per fault."""
    lines = ["SEQUENTIAL"]
    for fault in faults:
        values = (
            fault.request_uri,
            fault.cseq_method,
            fault.max_forwards,
            fault.content_length,
            fault.name,
        )
        if any(";" in v for v in values):
            raise ValueError(f"{fault}: a field cannot hold ';' (the separator)")
        lines.append(";".join(values))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
