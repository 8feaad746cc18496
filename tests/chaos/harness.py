"""What the chaos tests do to a running twinline, and how they watch it.

- ``ChaosCluster``: the integration tests' ``Cluster`` (``twinline up`` with a
  generated configuration) with what faults need: SIP over TCP as well as UDP,
  a server's call tracking link through another address (``ctl``, for the
  cutting proxy), the status API read directly over HTTP (polling within a
  deadline of a fault needs more than one status a second), signals to one
  application server by name (kill -9, SIGSTOP/SIGCONT, SIGTERM), a killed
  server started again by hand, the ``twinline`` command run as an operator
  would, and a teardown that leaves no process behind whatever happened.
- ``CutProxy``: a TCP proxy in a thread that can sever every connection it
  carries (or silence them: a partition) and refuse new ones for a while: a
  cut link while both ends stay alive.
- Calls and their checks: ``start_callee``/``start_caller`` (SIPp over the
  cluster's transport), ``finish_calls`` (every call successful on both sides,
  then ``check_database``: one CDR per call, no active call, every placement
  as invariants 1 and 2 want), ``check_nothing_finished_by`` (a failed
  server's calls were all finished elsewhere), ``takeover_report``.
- ``wait_for``: poll a condition with a deadline, and say what was awaited
  and what was last seen when it times out.
- ``Measurements``: the figures a test reports (takeover times, shares);
  printed as they come (``pytest -s``), put in assertion messages, and
  summed up at the end of the session by ``conftest.py``.

The time of a takeover is measured as a client would: from the test's own
``time.time()`` just before the fault to the switch's ``completed_at`` of the
takeover run (the moment the last call was re-owned by its new primary), both
wall-clock on this host. For a frozen server it includes the heartbeat
detection (3 missed heartbeats at 100 ms: about 300 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from integration.certs import Certs
from integration.cluster import Cluster
from integration.sipp import Sipp, SippRun, SippStats, StatsError
from integration.switchproc import free_port
from twinline.store.sql import render

SCENARIOS = Path(__file__).resolve().parent / "scenarios"

T = TypeVar("T")

# How much of a log goes into an assertion message.
LOG_TAIL = 6000


def scenario(name: str) -> Path:
    path = SCENARIOS / name
    if not path.is_file():
        raise FileNotFoundError(f"no scenario {name!r} in {SCENARIOS}")
    return path


# --------------------------------------------------------------------------- ports

# --------------------------------------------------------------------------- polling


class Timeout(AssertionError):
    pass


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    last: Callable[[], object] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or fail
    after ``timeout`` seconds naming ``what`` and, with ``last``, what was seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            seen = f"; last seen: {last()}" if last is not None else ""
            raise Timeout(f"timed out after {timeout:g} s waiting for {what}{seen}")
        time.sleep(interval)


def tail(text: str, limit: int = LOG_TAIL) -> str:
    return (
        text if len(text) <= limit else f"[... {len(text) - limit} chars cut ...]\n" + text[-limit:]
    )


# --------------------------------------------------------------------------- measurements


@dataclass
class Measurements:
    """Figures one test reports: printed at once and kept for the session summary."""

    test: str
    values: dict[str, object] = field(default_factory=dict)

    def note(self, key: str, value: object) -> None:
        self.values[key] = value
        print(f"CHAOS {self.test}: {key} = {value}", flush=True)

    def __str__(self) -> str:
        return f"{self.test}: " + ", ".join(f"{k}={v}" for k, v in self.values.items())


# --------------------------------------------------------------------------- the cluster


@dataclass
class ChaosCluster(Cluster):
    """``twinline up`` with SIP over ``transport`` and faults to inject by server name."""

    transport: str = "udp"  # the phones' transport: the switch's listener and the route
    ctl: dict[str, str] = field(default_factory=dict)  # server -> the address it dials for CTL
    peer_ports: dict[str, int] = field(default_factory=dict)  # server -> its peer port
    restarted: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    frozen: set[int] = field(default_factory=set)
    pids: dict[int, str] = field(default_factory=dict)  # every process of ours seen: pid -> who
    link_tls: Certs | None = None  # TLS on the call tracking and peer links, with these

    @property
    def link_address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.link_port)

    @property
    def sipp_transport(self) -> str:
        return "t1" if self.transport == "tcp" else "u1"

    def write_config(self) -> None:
        listen = [f'"udp:127.0.0.1:{self.sip_port}"']
        if self.transport == "tcp":
            listen.append(f'"tcp:127.0.0.1:{self.sip_port}"')
        servers = ""
        for i in range(self.servers):
            name = f"as{i + 1}"
            self.peer_ports.setdefault(name, free_port())
            self.metrics_ports.setdefault(name, free_port())
            servers += (
                f'[[appservers]]\nname = "{name}"\npeer = "127.0.0.1:{self.peer_ports[name]}"\n'
                f'metrics = "127.0.0.1:{self.metrics_ports[name]}"\n'
            )
            if name in self.ctl:
                servers += f'ctl = "{self.ctl[name]}"\n'
            servers += "\n"
        self.config_path.write_text(
            f"""[switch]
listen = [{", ".join(listen)}]
link = "127.0.0.1:{self.link_port}"
http = "127.0.0.1:{self.http_port}"
# The operator's `twinline drain` and `handover` read it from this file.
api_token = "chaos-operator-token"

[cluster]
heartbeat_interval = 0.1
dead_after = 3
{self._link_tls()}
[database]
url = "{self.database_url or f"sqlite:///{self.db_path}"}"

{servers}# SIPp plays the phones and the PBX on 127.0.0.1: a trusted trunk, so its calls
# are not challenged and not rate limited.
[[trunks]]
name = "sipp"
sources = ["127.0.0.1"]

[[routes]]
prefix = ""
target = "127.0.0.1:{self.callee_port}"
transport = "{self.transport}"

{self.extra_config}"""
        )

    def _link_tls(self) -> str:
        if self.link_tls is None:
            return ""
        c = self.link_tls
        return (
            f'\n[cluster.tls]\ncertificate = "{c.server_cert}"\nkey = "{c.server_key}"\n'
            f'ca = "{c.ca}"\n'
        )

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        assert self.process is not None
        self.pids[self.process.pid] = "twinline up"
        status = self.api()
        self.pids[status["switch"]["pid"]] = "switch"
        for row in status["servers"]:
            self.pids[row["pid"]] = row["name"]

    # --- looking ------------------------------------------------------------------------
    def api(self, timeout: float = 5.0) -> dict[str, Any]:
        """The switch's status, straight from its HTTP API (what `status --json` prints)."""
        url = f"http://127.0.0.1:{self.http_port}/api/status"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def try_api(self) -> dict[str, Any] | None:
        try:
            return self.api()
        except (OSError, ValueError):
            return None

    def server(self, name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        status = status or self.api()
        for row in status["servers"]:
            if row["name"] == name:
                return dict(row)
        raise KeyError(name)

    def pid(self, name: str) -> int:
        pid = int(self.server(name)["pid"])
        self.pids.setdefault(pid, name)
        return pid

    def takeover(
        self,
        server: str,
        since: float,
        reason: str | None = None,
        status: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The switch's takeover run for ``server`` that started after ``since`` (wall)."""
        status = status or self.api()
        for run in status.get("takeovers", []):
            if run["server"] != server or run["started_at"] < since - 0.05:
                continue
            if reason is not None and run["reason"] != reason:
                continue
            return dict(run)
        return None

    def wait_takeover(
        self, server: str, since: float, *, reason: str | None = None, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Wait until a takeover run of ``server`` begun after ``since`` is complete."""
        seen: list[object] = [None]

        def done() -> dict[str, Any] | None:
            status = self.try_api()
            if status is None:
                return None
            run = self.takeover(server, since, reason, status)
            seen[0] = run or status.get("takeovers")
            return run if run is not None and run["completed_at"] is not None else None

        return wait_for(
            done, timeout=timeout, what=f"the takeover of {server}'s calls", last=lambda: seen[0]
        )

    def wait_state(self, server: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        seen: list[object] = [None]

        def check() -> dict[str, Any] | None:
            status = self.try_api()
            if status is None:
                return None
            row = self.server(server, status)
            seen[0] = row
            return row if row["state"] == state else None

        return wait_for(check, timeout=timeout, what=f"{server} {state}", last=lambda: seen[0])

    def full_log(self) -> str:
        parts = [self.log()]
        for name in self.restarted:
            path = self.directory / f"{name}.restarted.log"
            if path.exists():
                parts.append(f"--- {name} (restarted) ---\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def restarted_log(self, name: str) -> str:
        path = self.directory / f"{name}.restarted.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_tail(self, limit: int = LOG_TAIL) -> str:
        return tail(self.full_log(), limit)

    # --- faults -------------------------------------------------------------------------
    def signal(self, name: str, sig: signal.Signals) -> float:
        """Send ``sig`` to application server ``name``; returns the wall time just before."""
        pid = self.pid(name)
        at = time.time()
        os.kill(pid, sig)
        if sig == signal.SIGSTOP:
            self.frozen.add(pid)
        elif sig in (signal.SIGCONT, signal.SIGKILL):
            self.frozen.discard(pid)
        return at

    def kill(self, name: str) -> float:
        return self.signal(name, signal.SIGKILL)

    def freeze(self, name: str) -> float:
        return self.signal(name, signal.SIGSTOP)

    def thaw(self, name: str) -> float:
        return self.signal(name, signal.SIGCONT)

    def wait_exited(self, pid: int, timeout: float = 10.0) -> None:
        """Wait until ``pid`` (a child of `twinline up`, or of ours) is gone."""

        def gone() -> bool:
            proc = next((p for p in self.restarted.values() if p.pid == pid), None)
            if proc is not None:
                return proc.poll() is not None
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                return True
            return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")

        wait_for(gone, timeout=timeout, what=f"process {pid} to exit")

    def restart(self, name: str, config: Path | None = None) -> subprocess.Popen[bytes]:
        """Start application server ``name`` again, as an operator would on its host
        (with the cluster's configuration file, or ``config``: its own view of it)."""
        old = self.restarted.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} was restarted already and still runs")
        log = (self.directory / f"{name}.restarted.log").open("ab")
        with log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "twinline",
                    "appserver",
                    name,
                    "--config",
                    str(config or self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={**os.environ, **self.env},
            )
        self.restarted[name] = proc
        self.pids[proc.pid] = f"{name} (restarted)"
        return proc

    def cli(self, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        """Run ``twinline ARGS --config FILE`` as an operator would; the result, unchecked."""
        return subprocess.run(
            [sys.executable, "-m", "twinline", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **self.env},
        )

    # --- the database -------------------------------------------------------------------
    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.database_url:
            with psycopg.connect(self.database_url, password=self.database_password) as conn:
                return conn.execute(render(sql, "postgresql"), params).fetchall()
        # The servers write while we read: wait for their locks rather than fail.
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=10)) as db:
            return db.execute(sql, params).fetchall()

    def settled_counts(self, calls: int, timeout: float = 30.0) -> tuple[int, int, int]:
        """Wait until the batched writes are in: ``calls`` CDRs and no active call left.

        Returns (CDR rows, distinct call ids among them, active_calls rows) as last read,
        also when the deadline passes (the caller asserts on them)."""
        deadline = time.monotonic() + timeout
        while True:
            ((cdrs, distinct),) = self.query("SELECT count(*), count(DISTINCT call_id) FROM cdrs")
            ((active,),) = self.query("SELECT count(*) FROM active_calls")
            if (cdrs >= calls and active == 0) or time.monotonic() >= deadline:
                return cdrs, distinct, active
            time.sleep(0.25)

    # --- the end ------------------------------------------------------------------------
    def teardown(self) -> list[str]:
        """Stop everything this cluster started, whatever state it is in; what went wrong."""
        problems: list[str] = []
        for pid in list(self.frozen):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self.frozen.clear()
        for name, proc in self.restarted.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
                    problems.append(f"restarted {name} did not stop on SIGTERM within 15 s")
        code = self.stop()
        if code not in (0, None):
            problems.append(f"twinline up exited with {code}")
        for pid, who in self.pids.items():
            if _ours_and_alive(pid, str(self.directory)):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                problems.append(f"{who} (pid {pid}) was still running after teardown: killed")
        return problems


def _ours_and_alive(pid: int, directory: str) -> bool:
    """A live process (not a zombie) whose command line names our cluster's directory."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return directory in cmdline and state not in ("Z", "X")


# --------------------------------------------------------------------------- SIPp


@dataclass
class Caller:
    """A SIPp UAC placing ``calls`` calls: how many it must end with, all successful."""

    run: SippRun
    calls: int


def start_callee(
    sipp: Sipp,
    cluster: ChaosCluster,
    scenario_name: str = "uas_answer.xml",
    *,
    longest_wait_ms: int = 60_000,
    timeout_s: int = 150,
) -> SippRun:
    """The callee (SIPp UAS on the route's port and transport), in the background.

    ``longest_wait_ms`` bounds every wait of a call for its next message (the BYE
    comes after the whole hold time): past it the call fails visibly."""
    return sipp.start_uas(
        "callee", scenario(scenario_name), port=cluster.callee_port,
        transport=cluster.sipp_transport, recv_timeout_ms=longest_wait_ms, timeout_s=timeout_s,
    )  # fmt: skip


def start_caller(
    sipp: Sipp,
    cluster: ChaosCluster,
    name: str,
    *,
    calls: int,
    rate: float,
    hold_ms: int,
    limit: int | None = None,
    service: str = "1000",
    timeout_s: int = 90,
) -> Caller:
    """A caller (SIPp UAC, uac_hold.xml) to the switch over the cluster's transport.

    Each call waits at most 15 s for an answer or the 200 of its BYE (-recv_timeout):
    a call the switch forgot fails visibly instead of hanging."""
    run = sipp.start_uac(
        name, scenario("uac_hold.xml"), cluster.sip_address, port=free_port(),
        transport=cluster.sipp_transport, calls=calls, rate=rate, limit=limit,
        service=service, duration_ms=hold_ms, timeout_s=timeout_s,
    )  # fmt: skip
    return Caller(run, calls)


def finish_calls(
    cluster: ChaosCluster,
    callee: SippRun,
    callers: list[Caller],
    context: str,
    *,
    adoption: bool = False,
) -> int:
    """Wait for the callers to end, then for the callee to be idle; assert that every
    call succeeded on both sides and has exactly one CDR. Returns the number of calls."""
    for caller in callers:
        caller.run.finish()
    total = sum(c.calls for c in callers)
    uas_done(callee, total, timeout=30)
    ctx = f"{context}\n--- cluster log (tail) ---\n{cluster.log_tail()}"
    for caller in callers:
        caller.run.check(successful=caller.calls, created=caller.calls, context=ctx)
    # The callee's scenario ends with the BYE it receives: all successful = every
    # B-leg ended with a BYE; created = total: no call got a second B-leg INVITE.
    callee.check(successful=total, created=total, context=ctx)
    check_database(cluster, total, context, adoption=adoption)
    return total


def check_database(
    cluster: ChaosCluster, calls: int, context: str, *, adoption: bool = False
) -> None:
    """Exactly one CDR per call, all answered; no call left in active_calls; every
    placement as the invariants want it (``check_placements``)."""
    cdrs, distinct, active = cluster.settled_counts(calls)
    assert (cdrs, distinct, active) == (calls, calls, 0), (
        f"expected exactly one CDR for each of the {calls} calls and no active call left; "
        f"found {cdrs} CDRs for {distinct} calls, {active} active calls\n{context}"
        f"\n{missing_cdrs(cluster)}\n{cluster.log_tail()}"
    )
    dispositions = cluster.query("SELECT disposition, count(*) FROM cdrs GROUP BY disposition")
    assert dispositions == [("answered", calls)], f"CDR dispositions {dispositions}\n{context}"
    check_placements(cluster, context, adoption=adoption)


def check_placements(cluster: ChaosCluster, context: str, *, adoption: bool = False) -> None:
    """Invariants 1 and 2 over the switch's record of every placement, in order:
    a call's primary changes only with a new epoch and only to the server that was
    its standby (the standby takes over; with `adoption`, any live server may adopt a
    call that lost both), and a standby is never on its primary's server."""
    # In the order they were recorded: SQLite's rowid; PostgreSQL has none, but within a
    # call the epoch, then the time, then the primary before its standby give it.
    select = "SELECT call_id, server, role, epoch FROM call_placements ORDER BY call_id, "
    rows = cluster.query(select + ("epoch, at, role" if cluster.database_url else "rowid"))
    problems: list[str] = []
    state: dict[str, tuple[str, str | None, int]] = {}  # call -> primary, standby, epoch
    for call, server, role, epoch in rows:
        current = state.get(call)
        if role == "primary":
            if current is None:
                ok = epoch == 1
            elif epoch == current[2]:
                ok = server == current[0]  # re-recorded with a new standby
            else:
                ok = epoch > current[2] and (adoption or server == current[1])
            if not ok:
                problems.append(f"{call}: primary {server} at epoch {epoch} after {current}")
            state[call] = (server, None, epoch)
        else:
            if current is None or current[2] != epoch or current[0] == server:
                problems.append(f"{call}: standby {server} at epoch {epoch} with {current}")
            if current is not None:
                state[call] = (current[0], server, current[2])
    assert not problems, (
        f"{len(problems)} placements break 'the standby takes over' or 'standby elsewhere':\n"
        + "\n".join(problems[:20])
        + f"\n{context}"
    )


def check_nothing_finished_by(
    cluster: ChaosCluster, server: str, since: float, context: str
) -> int:
    """``server`` failed (or handed its calls over) at ``since``: none of the calls it
    had then may have been finished by it later. Every call started before and ended
    after ``since`` with ``server`` as its first primary must name another server
    among its CDR's primaries (the one that took it over). Returns how many there were."""
    ((alone, total),) = cluster.query(
        "SELECT coalesce(sum(primaries = ?), 0), count(*) FROM cdrs"
        " WHERE started_at < ? AND ended_at > ? AND (primaries = ? OR primaries LIKE ?)",
        (server, since, since, server, f"{server},%"),
    )
    assert not alone, (
        f"{alone} of the {total} calls {server} had at {since:.3f} were finished by "
        f"{server} alone after that (CDR primaries '{server}'): a deposed primary acted\n"
        f"{context}"
    )
    return int(total)


def check_no_instances_left(cluster: ChaosCluster, context: str) -> dict[str, int]:
    """Every call is over: no server may still hold a call instance. SIGTERM shows
    it: a server with nothing to hand over stops at once, one still holding
    instances asks for a handover, waits for it (up to 10 s) and logs "stopping with
    N of M instances not handed over". Stops every live server, one at a time;
    returns how long each took (ms)."""
    problems: list[str] = []
    took: dict[str, int] = {}
    for row in cluster.api()["servers"]:
        if row["state"] == "down":
            continue
        name, pid = row["name"], int(row["pid"])
        restarted = cluster.restarted.get(name)
        own_file = restarted is not None and restarted.pid == pid

        def log(own_file: bool = own_file, name: str = name) -> str:
            return cluster.restarted_log(name) if own_file else cluster.log()

        before = len(log())
        term_at = cluster.signal(name, signal.SIGTERM)
        cluster.wait_exited(pid, timeout=20)
        took[name] = round((time.time() - term_at) * 1000)
        said = log()[before:]
        left = re.findall(r"stopping with (\d+) of (\d+) instances not handed over", said)
        if left or took[name] > 5000:
            problems.append(
                f"{name} still held call instances after every call had ended: it stopped "
                f"{took[name]} ms after SIGTERM, saying {left or 'nothing (killed?)'}"
            )
    assert not problems, "\n".join(problems) + f"\n{context}"
    return took


def missing_cdrs(cluster: ChaosCluster) -> str:
    """The calls placed without a CDR, and where they were placed."""
    rows = cluster.query(
        "SELECT p.call_id, group_concat(p.server || ':' || p.role || ':' || p.epoch, ' ')"
        " FROM call_placements p LEFT JOIN cdrs c ON c.call_id = p.call_id"
        " WHERE c.call_id IS NULL GROUP BY p.call_id LIMIT 20"
    )
    if not rows:
        return "(every placed call has a CDR)"
    return "calls placed without a CDR (placements server:role:epoch):\n" + "\n".join(
        f"  {call}: {places}" for call, places in rows
    )


def uas_done(run: SippRun, total: int, timeout: float) -> SippStats:
    """Wait for a background UAS to have had ``total`` calls and none in progress
    (its timewaits over), stop it, and return its final statistics."""
    run.wait_for_calls(total=total, timeout=timeout, idle=True)
    run.stop()
    return run.stats()


def stats_now(run: SippRun) -> SippStats | None:
    try:
        return run.stats()
    except StatsError:
        return None


def setup_times(run: SippRun) -> dict[str, int]:
    """How long the caller's calls took from INVITE to 200 (SIPp's rtd histogram,
    buckets in ms): the non-empty buckets. Calls offered to a failing primary wait
    for its takeover, and show here."""
    raw = run.stats().raw
    prefix = "ResponseTimeRepartition1_"
    return {
        key.removeprefix(prefix): int(value)
        for key, value in raw.items()
        if key.startswith(prefix) and value.strip().isdigit() and int(value)
    }


def takeover_report(m: Measurements, run: dict[str, Any], fault_at: float, label: str) -> str:
    """Note a takeover's figures; returns them as one line for assertion messages.

    takeover_ms: the fault (test's clock) to the last call re-owned (switch's
    completed_at); detect_ms: the fault to the switch noticing (started_at);
    duration_ms: the switch's own figure, noticing to re-owned."""
    takeover_ms = round((run["completed_at"] - fault_at) * 1000, 1)
    detect_ms = round((run["started_at"] - fault_at) * 1000, 1)
    m.note(f"{label} takeover_ms", takeover_ms)
    m.note(f"{label} detect_ms", detect_ms)
    m.note(f"{label} duration_ms", run["duration_ms"])
    m.note(f"{label} calls", run["calls"])
    return (
        f"{label}: last call re-owned {takeover_ms} ms after the fault (noticed after "
        f"{detect_ms} ms; switch's duration_ms {run['duration_ms']}) for {run['calls']} calls: "
        f"{run}"
    )


def wait_answered_up(cluster: ChaosCluster, count: int, timeout: float = 40.0) -> dict[str, Any]:
    """Wait until at least ``count`` answered calls are up; returns that status."""
    seen: list[object] = [None]

    def up() -> dict[str, Any] | None:
        status = cluster.try_api()
        if status is None:
            return None
        calls = status["calls"]
        seen[0] = calls
        return status if calls["answered"] - calls["completed"] >= count else None

    return wait_for(
        up, timeout=timeout, what=f"{count} calls answered and up", last=lambda: seen[0]
    )


# --------------------------------------------------------------------------- the cut


class CutProxy:
    """A TCP proxy from 127.0.0.1:``port`` to ``target`` that can cut its links.

    ``sever()`` aborts every connection it carries, both sides (RST: what was in
    flight is lost, as on a cut cable) and refuses new ones (accepted and reset
    at once) until ``allow()``. ``partition()`` is the silent kind of cut: the
    connections stay open but nothing crosses them any more (what is sent is
    lost, a close is not passed on either), and new ones are refused, until
    ``heal()`` resets them. Runs its own event loop in a daemon thread.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.accepted = 0
        self.refused = 0
        self.severed = 0
        self._refusing = False
        self._silent = False
        self.dropped_bytes = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cut-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> CutProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=5)
        return self

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        finally:
            self._pairs.discard(pair)
            for w in pair:
                w.transport.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self._silent:
                    self.dropped_bytes += len(data)
                    continue
                writer.write(data)
                await writer.drain()
            while self._silent:  # noqa: ASYNC110 - a close does not cross a partition either
                await asyncio.sleep(0.05)
        finally:
            writer.transport.abort()

    def _call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=5)

    def sever(self) -> float:
        """Cut every connection now and refuse new ones; returns the wall time just before."""
        at = time.time()

        def cut() -> None:
            self._refusing = True
            for pair in list(self._pairs):
                self.severed += 1
                for w in pair:
                    w.transport.abort()

        self._call(cut)
        return at

    def partition(self) -> float:
        """Let nothing cross any more, without closing anything; returns the wall time."""
        at = time.time()

        def silence() -> None:
            self._refusing = self._silent = True

        self._call(silence)
        return at

    def heal(self) -> None:
        """End a partition: the silent connections are reset, new ones accepted."""

        def heal() -> None:
            self._refusing = self._silent = False
            for pair in list(self._pairs):
                for w in pair:
                    w.transport.abort()

        self._call(heal)

    def allow(self) -> None:
        def allow() -> None:
            self._refusing = False

        self._call(allow)

    @property
    def connections(self) -> int:
        return self._call(lambda: len(self._pairs))

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        def shut() -> None:
            if self._server is not None:
                self._server.close()
            for pair in list(self._pairs):
                for w in pair:
                    w.transport.abort()

        with contextlib.suppress(Exception):
            self._call(shut)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
