"""The elements under test: how to start each one in front of the callee, and stop it.

Every element listens for SIP on 127.0.0.1 on a free port and sends every call to
the same callee (the SIPp UAS of ``load.start_uas``) at ``callee_port``:

- ``twinline``: ``python -m twinline up`` with a switch and 2 application servers,
  SQLite, redundancy on; ``twinline-noredundancy`` the same with
  ``[cluster] redundancy = false`` (calls get no standby); ``twinline-prepaid`` the
  same as ``twinline`` with every call prepaid (a reservation at the offer, a debit
  and the CDR's cost at the end), its account and rate filled before the run;
  ``twinline-pg`` and ``twinline-prepaid-pg`` the same on PostgreSQL (a server of the
  benchmark's own, tests/pgserver.py, a new database per run) instead of SQLite;
- ``sippy``: Sippy B2BUA's ``b2bua_simple`` (PyPI ``sippy``, in its own virtual
  environment, ``bench/.venvs/sippy``), ``-n`` routing every call to the callee;
- ``kamailio``: Kamailio (Debian package) as a minimal stateful proxy with one
  worker, ``bench/kamailio/kamailio.cfg``;
- ``direct``: no element, SIPp calls SIPp: the limit of the load tool here.

Logging is kept to what an operator runs with and costs nothing per call: twinline
at its ``warning`` level, Sippy's SIP logger off (``SIPLOG_BEND=none``), Kamailio at
``debug=1`` (errors).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.util import descendants, free_port, stop_process, udp_port_bound, wait_until

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SIPPY_VENV = BENCH / ".venvs" / "sippy"
KAMAILIO_CFG = BENCH / "kamailio" / "kamailio.cfg"


@dataclass
class Element:
    """One element under test. Subclasses say how it starts; stopping is shared."""

    key: str = ""
    label: str = ""
    directory: Path = field(default_factory=Path)
    callee_port: int = 0
    sip_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    stop_signal: int = signal.SIGTERM

    @property
    def address(self) -> str:
        """Where the callers send their INVITEs."""
        return f"127.0.0.1:{self.sip_port}"

    @property
    def callers(self) -> Path | None:
        """A SIPp injection file of callers to place the calls from (None: SIPp's own)."""
        return None

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.key}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def prepare(self) -> None:
        """Write what the element reads before it starts (configuration files)."""

    def ready(self) -> bool:
        return udp_port_bound(self.sip_port)

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prepare()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=self.environment(),
                start_new_session=True,  # away from the harness's Ctrl-C
            )
        (self.directory / "command.txt").write_text(" ".join(self.command()) + "\n")
        if not wait_until(lambda: not self.running or self.ready(), timeout, interval=0.1):
            self.stop()
            raise RuntimeError(f"{self.label} did not come up in {timeout} s:\n{self.log_tail()}")
        if not self.running:
            raise RuntimeError(f"{self.label} exited at start:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        """Every process of the element (for memory and CPU readings)."""
        if not self.running:
            return []
        assert self.process is not None
        return descendants(self.process.pid)

    def stop(self, grace: float = 15.0) -> None:
        """``stop_signal``, then SIGKILL to whatever of its processes is left."""
        if self.process is None:
            return
        pids = self.pids()
        stop_process(self.process, self.stop_signal, grace)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL to every process at once: the fast end after a long run."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stop_process(self.process, signal.SIGKILL, 5)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


# The prepaid variant: the calls come from 1,000 callers, each paying with an account of
# its own that never runs out (as a carrier's traffic spreads over its customers; calls
# on one account take turns on its row, see docs/benchmarks.md), at a catch-all rate by
# the second, each call holding credit for a day of talk (longer than any hold of the
# benchmark), so the service's path is whole and no call is cut short.
PREPAID_PLAN = """
[[plan]]
service = "prepaid"

[services.prepaid]
hold_seconds = 86400
"""
PREPAID_ACCOUNTS = 1000
PREPAID_RATE = (
    "rates", "add", "default", "", "--currency", "EUR", "--per-minute", "0.01",
    "--increments", "1/1",
)  # fmt: skip


def prepaid_caller(i: int) -> str:
    return f"3310000{i:04d}"


_PG: list[Any] = []  # the benchmark's PostgreSQL server, started on first use


def _postgres() -> Any:
    if not _PG:
        from tests.pgserver import PgServer  # noqa: PLC0415 - only when a PG element runs

        server = PgServer()
        server.start()
        atexit.register(server.destroy)
        _PG.append(server)
    return _PG[0]


@dataclass
class Twinline(Element):
    redundancy: bool = True
    prepaid: bool = False  # every call through the prepaid service (authorize, debit, CDR)
    postgres: bool = False  # on PostgreSQL rather than SQLite
    database_password: str = ""
    servers: int = 2
    stop_signal: int = signal.SIGINT  # as Ctrl-C: `twinline up` stops its processes in order
    log_level: str = "warning"
    link_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)

    @property
    def config_path(self) -> Path:
        return self.directory / "twinline.toml"

    @property
    def callers(self) -> Path | None:
        return self.directory / "callers.csv" if self.prepaid else None

    def prepare(self) -> None:
        servers = "".join(
            f'[[appservers]]\nname = "as{i + 1}"\npeer = "127.0.0.1:{free_port()}"\n'
            "capacity = 100000\n\n"
            for i in range(self.servers)
        )
        db = self.directory / "twinline.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{db}"
        if self.postgres:
            server = _postgres()
            url = server.url(server.create_database("bench"))
            self.database_password = server.password
        self.config_path.write_text(
            f"""# Written by bench/elements.py for one benchmark run.
[switch]
listen = ["udp:127.0.0.1:{self.sip_port}"]
link = "127.0.0.1:{self.link_port}"
http = "127.0.0.1:{self.http_port}"
max_calls = 1000000

[cluster]
redundancy = {"true" if self.redundancy else "false"}

[database]
url = "{url}"

{servers}# SIPp plays the callers and the callee on 127.0.0.1: a trusted trunk, so its calls
# are not challenged and not rate limited.
[[trunks]]
name = "sipp"
sources = ["127.0.0.1"]

[[routes]]
prefix = ""
target = "127.0.0.1:{self.callee_port}"
{PREPAID_PLAN if self.prepaid else ""}"""
        )
        if self.prepaid:
            self._seed_accounts()

    def _seed_accounts(self) -> None:
        """The rate and the accounts put in before the run, as an operator would (the
        first command creates the database); the callers' file for SIPp."""
        accounts = self.directory / "accounts.csv"
        accounts.write_text(
            "id,currency,balance,identities\n"
            + "".join(
                f"bench{i:04d},EUR,1000000000,{prepaid_caller(i)}\n"
                for i in range(PREPAID_ACCOUNTS)
            )
        )
        for args in (PREPAID_RATE, ("accounts", "import", str(accounts))):
            done = subprocess.run(
                [sys.executable, "-m", "twinline", *args, "--config", str(self.config_path)],
                capture_output=True, text=True, timeout=120, check=False,
                env=self.environment(),
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"twinline {' '.join(args)}: {done.stdout}{done.stderr}")
        assert self.callers is not None
        self.callers.write_text(
            "SEQUENTIAL\n" + "".join(f"{prepaid_caller(i)}\n" for i in range(PREPAID_ACCOUNTS))
        )

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "twinline", "up",
            "--config", str(self.config_path), "--log-level", self.log_level,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["TWINLINE_RUN_DIR"] = str(self.directory / "run")
        if self.database_password:
            env["TWINLINE_DATABASE_PASSWORD"] = self.database_password
        return env

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """The switch's status API: what ``twinline status --json`` prints."""
        url = f"http://127.0.0.1:{self.http_port}/api/status"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def ready(self) -> bool:
        try:
            status = self.status(timeout=1.0)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        servers = status.get("servers", [])
        return len(servers) == self.servers and all(s["state"] == "up" for s in servers)

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        # The peer links come up just after the call tracking links; the status API
        # does not show them, so give them a moment (they take milliseconds on loopback).
        time.sleep(1.0)


@dataclass
class Sippy(Element):
    def command(self) -> list[str]:
        return [
            str(SIPPY_VENV / "bin" / "b2bua_simple"), "-f",
            "-l", "127.0.0.1", "-p", str(self.sip_port),
            "-n", f"127.0.0.1:{self.callee_port}",
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SIPLOG_BEND"] = "none"  # its SIP logger, off (stderr by default)
        return env

    def start(self, timeout: float = 30.0) -> None:
        if not (SIPPY_VENV / "bin" / "b2bua_simple").exists():
            raise RuntimeError(f"Sippy is not installed: run bench/setup_sippy.sh ({SIPPY_VENV})")
        super().start(timeout)


@dataclass
class Kamailio(Element):
    def command(self) -> list[str]:
        binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
        return [
            binary, "-f", str(KAMAILIO_CFG), "-DD", "-E",
            "-l", f"udp:127.0.0.1:{self.sip_port}",
            "-A", f'CALLEE="sip:127.0.0.1:{self.callee_port}"',
            "-Y", str(self.directory), "-P", str(self.directory / "kamailio.pid"),
            "-w", str(self.directory), "-m", "1024", "-M", "16",
        ]  # fmt: skip


@dataclass
class Direct(Element):
    """No element: the callers call the callee."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.callee_port}"

    def start(self, timeout: float = 30.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def stop(self, grace: float = 15.0) -> None:
        pass

    def pids(self) -> list[int]:
        return []


# The elements in the order of the tables; the first five are twinline.
KINDS: dict[str, tuple[type[Element], str, dict[str, Any]]] = {
    "twinline": (Twinline, "twinline (redundancy on)", {"redundancy": True}),
    "twinline-noredundancy": (Twinline, "twinline (redundancy off)", {"redundancy": False}),
    "twinline-prepaid": (Twinline, "twinline prepaid (redundancy on)", {"prepaid": True}),
    "twinline-pg": (Twinline, "twinline on PostgreSQL (redundancy on)", {"postgres": True}),
    "twinline-prepaid-pg": (
        Twinline,
        "twinline prepaid on PostgreSQL (redundancy on)",
        {"prepaid": True, "postgres": True},
    ),
    "sippy": (Sippy, "Sippy B2BUA", {}),
    "kamailio": (Kamailio, "Kamailio (1 worker)", {}),
    "direct": (Direct, "SIPp to SIPp", {}),
}


def make(key: str, directory: Path, callee_port: int) -> Element:
    cls, label, extra = KINDS[key]
    return cls(key=key, label=label, directory=directory, callee_port=callee_port, **extra)


def label(key: str) -> str:
    return KINDS[key][1]
