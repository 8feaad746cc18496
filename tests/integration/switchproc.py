"""The switch as a real process: ports, its TOML configuration, start, readiness, stop.

``python -m twinline switch --config FILE`` is started with the interpreter
running the tests. It is ready when it answers an OPTIONS sent to itself over
UDP with 200. SIGTERM stops it; it must then exit with status 0 within a few
seconds and without a traceback on stderr. Its stdout and stderr go to files
next to its configuration so that a failing test can show them.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
DOMAIN = "twinline.local"

# Ports handed out in this test session are never handed out again, so two
# fixtures cannot race for the one the system just said was free.
_given: set[int] = set()


def _bindable(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                return False
    return True


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1.

    Taken from 20000-32767, below Linux's ephemeral range (32768-60999), so
    that the source port of an outgoing connection cannot take it between now
    and its use.
    """
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 32768)
        if port in _given or not _bindable(port):
            continue
        _given.add(port)
        return port
    raise RuntimeError("no free port in 20000-32767")


# --------------------------------------------------------------------------- config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def toml_dumps(document: Mapping[str, Any]) -> str:
    """Enough TOML for a switch configuration: tables of scalars and lists,
    nested tables, and arrays of tables (lists of mappings)."""
    lines: list[str] = []

    def table(prefix: str, data: Mapping[str, Any]) -> None:
        nested = []
        for key, value in data.items():
            is_tables = isinstance(value, list) and bool(value)
            is_tables = is_tables and all(isinstance(v, Mapping) for v in value)
            if isinstance(value, Mapping) or is_tables:
                nested.append((key, value))
            else:
                lines.append(f"{key} = {_toml_value(value)}")
        for key, value in nested:
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, Mapping):
                lines.extend(["", f"[{name}]"])
                table(name, value)
            else:
                for item in value:
                    lines.extend(["", f"[[{name}]]"])
                    table(name, item)

    table("", document)
    return "\n".join(lines).lstrip("\n") + "\n"


# SIPp on 127.0.0.1, as the phones and PBXs of most tests: trusted by its address.
SIPP_TRUNK: Mapping[str, Any] = {"name": "sipp", "sources": [HOST]}


def switch_config(
    port: int,
    *,
    routes: Sequence[Mapping[str, Any]] = (),
    users: Sequence[Mapping[str, Any]] = (),
    trunks: Sequence[Mapping[str, Any]] = (SIPP_TRUNK,),
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    no_answer_timeout: float = 30.0,
    max_calls: int = 20000,
    domain: str = DOMAIN,
    **switch: Any,
) -> dict[str, Any]:
    """A configuration listening on UDP and TCP ``port`` of 127.0.0.1.

    By default SIPp on 127.0.0.1 is a trusted trunk (``SIPP_TRUNK``): its calls are
    not challenged. ``sections`` adds top-level tables (``access``, ``flood``, ...).

    The no-answer timer defaults to 30 s, well past any call's setup time even
    with retransmissions on a lossy network: a test about that timer sets it.
    """
    document: dict[str, Any] = {
        "switch": {
            "listen": [f"udp:{HOST}:{port}", f"tcp:{HOST}:{port}"],
            "domain": domain,
            "no_answer_timeout": no_answer_timeout,
            "max_calls": max_calls,
            # Its own HTTP port: tests run beside other switches on this host.
            "http": f"{HOST}:{free_port()}",
            **switch,
        }
    }
    if users:
        document["users"] = [dict(u) for u in users]
    if routes:
        document["routes"] = [dict(r) for r in routes]
    if trunks:
        document["trunks"] = [dict(t) for t in trunks]
    for name, table in (sections or {}).items():
        document[name] = dict(table)
    return document


def route(prefix: str, port: int, transport: str = "udp") -> dict[str, str]:
    return {"prefix": prefix, "target": f"{HOST}:{port}", "transport": transport}


# --------------------------------------------------------------------------- probe


def options_probe(host: str, port: int, timeout: float = 0.05) -> str | None:
    """Send one OPTIONS to the switch itself over UDP; the status line of the
    answer, or None when none came within ``timeout`` seconds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        local_port = s.getsockname()[1]
        tag = uuid.uuid4().hex[:10]
        request = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{local_port};branch=z9hG4bK{uuid.uuid4().hex}\r\n"
            f"From: <sip:probe@{HOST}:{local_port}>;tag={tag}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: probe-{uuid.uuid4().hex}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Max-Forwards: 70\r\n"
            "Accept: application/sdp\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        s.settimeout(timeout)
        s.sendto(request, (host, port))
        try:
            data = s.recv(65535)
        except (TimeoutError, ConnectionRefusedError):
            return None
        return data.split(b"\r\n", 1)[0].decode("utf-8", "replace")


# --------------------------------------------------------------------------- process


@dataclass
class SwitchProcess:
    """One switch process and its files."""

    name: str
    directory: Path
    port: int
    config: str
    host: str = HOST
    # What runs the switch; the harness's own tests put a stand-in here.
    program: Sequence[str] = (sys.executable, "-m", "twinline")
    process: subprocess.Popen[bytes] | None = None
    returncode: int | None = None
    stop_seconds: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        """host:port, as SIPp takes its remote address."""
        return f"{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.directory / f"{self.name}.toml"

    @property
    def stderr_path(self) -> Path:
        return self.directory / f"{self.name}.stderr"

    @property
    def stdout_path(self) -> Path:
        return self.directory / f"{self.name}.stdout"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_tail(self, limit: int = 8000) -> str:
        text = self.stderr()
        if len(text) > limit:
            text = f"[... {len(text) - limit} characters cut ...]\n" + text[-limit:]
        return text or "(empty)"

    def start(self, ready_timeout: float = 10.0) -> SwitchProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config, encoding="utf-8")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        command = [*self.program, "switch", "--config", str(self.config_path)]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
            )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.process.poll() is not None:
                self.returncode = self.process.returncode
                raise RuntimeError(
                    f"the switch exited with status {self.returncode} before it was ready\n"
                    f"command: {' '.join(command)}\nconfig:\n{self.config}\n"
                    f"stderr:\n{self.stderr_tail()}"
                )
            status = options_probe(self.host, self.port)
            if status is not None:
                if status.startswith("SIP/2.0 200"):
                    return self
                self.problems.append(f"readiness OPTIONS got {status!r}")
            if time.monotonic() >= deadline:
                self.stop()
                raise RuntimeError(
                    f"the switch did not answer OPTIONS on udp {self.address} with 200"
                    f" within {ready_timeout} s ({'; '.join(self.problems) or 'no answer'})\n"
                    f"stderr:\n{self.stderr_tail()}"
                )
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = 5.0) -> int:
        """SIGTERM; SIGKILL if it is still there after ``grace`` seconds."""
        assert self.process is not None, "not started"
        if self.process.poll() is None:
            began = time.monotonic()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.returncode = self.process.wait(timeout=10)
                self.problems.append(f"did not exit within {grace} s of SIGTERM: killed")
            self.stop_seconds = time.monotonic() - began
        else:
            self.returncode = self.process.returncode
            self.problems.append(f"had already exited (status {self.returncode}) before SIGTERM")
        return self.returncode

    def check_stopped(self) -> None:
        """Assert a clean stop: status 0, no traceback on stderr."""
        stderr = self.stderr()
        problems = list(self.problems)
        if self.returncode != 0:
            problems.append(f"exit status {self.returncode} after SIGTERM (expected 0)")
        if "Traceback" in stderr:
            problems.append("a traceback on stderr")
        if problems:
            raise AssertionError(
                f"switch {self.name}: " + "; ".join(problems) + f"\nstderr:\n{self.stderr_tail()}"
            )


def run_switch_once(
    config_text: str, directory: Path, timeout: float = 20.0
) -> tuple[int, str, str]:
    """Run ``twinline switch --config`` on a configuration that should be refused;
    returns (exit status, stdout, stderr). Kills it past ``timeout`` seconds."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.toml"
    path.write_text(config_text, encoding="utf-8")
    command = [sys.executable, "-m", "twinline", "switch", "--config", str(path)]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"the switch kept running for {timeout} s on a configuration it should refuse"
        ) from e
    return (
        done.returncode,
        done.stdout.decode("utf-8", "replace"),
        done.stderr.decode("utf-8", "replace"),
    )
