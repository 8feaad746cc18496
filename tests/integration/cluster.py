"""`twinline up` as a real set of processes for integration tests, and its database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from .switchproc import free_port

__all__ = ["Cluster", "free_port"]


@dataclass
class Cluster:
    """A running `twinline up`: its config, its processes' output, its database."""

    directory: Path
    servers: int
    callee_port: int
    sip_port: int = field(default_factory=free_port)
    link_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # TOML added at the end of the configuration (plan entries, routes, services.*).
    extra_config: str = ""
    # Set in the processes' environment (PYTHONPATH for a plug-in service, ...).
    env: dict[str, str] = field(default_factory=dict)
    # Each application server's metrics port (set explicitly: the default, peer port +
    # 1000, could be a port some other test holds).
    metrics_ports: dict[str, int] = field(default_factory=dict)
    api_token: str = ""  # switch.api_token, when set
    # A postgresql:// URL to use instead of the SQLite file, and its password (given to
    # the processes in $TWINLINE_DATABASE_PASSWORD, as a deployment does).
    database_url: str = ""
    database_password: str = ""

    @property
    def config_path(self) -> Path:
        return self.directory / "twinline.toml"

    @property
    def db_path(self) -> Path:
        return self.directory / "twinline.db"

    @property
    def log_path(self) -> Path:
        return self.directory / "up.log"

    @property
    def sip_address(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    def write_config(self) -> None:
        for i in range(self.servers):
            self.metrics_ports.setdefault(f"as{i + 1}", free_port())
        servers = "".join(
            f'[[appservers]]\nname = "{name}"\npeer = "127.0.0.1:{free_port()}"\n'
            f'metrics = "127.0.0.1:{port}"\n\n'
            for name, port in self.metrics_ports.items()
        )
        self.config_path.write_text(
            f"""[switch]
listen = ["udp:127.0.0.1:{self.sip_port}"]
link = "127.0.0.1:{self.link_port}"
http = "127.0.0.1:{self.http_port}"
{f'api_token = "{self.api_token}"' if self.api_token else ""}

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

{self.extra_config}"""
        )

    def start(self, timeout: float = 20.0) -> None:
        if self.database_password:
            self.env["TWINLINE_DATABASE_PASSWORD"] = self.database_password
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_config()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "twinline", "up", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={**os.environ, **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"twinline up exited at start:\n{self.log()}")
            try:
                status = self.status()
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, json.JSONDecodeError):
                status = None  # not up yet, or a loaded machine slow to run the command
            servers_up = status and all(s["state"] == "up" for s in status["servers"])
            if servers_up and self._peers_linked():
                return
            time.sleep(0.2)
        self.stop()  # leave no processes behind a failed start
        raise RuntimeError(f"twinline up did not come up in {timeout} s:\n{self.log()}")

    def _peers_linked(self) -> bool:
        # Each pair of servers has one peer link; both ends log it when it is up.
        expected = self.servers * (self.servers - 1)
        return self.log().count("peer link to") >= expected

    def status(self) -> dict[str, Any]:
        """What `twinline status --json` prints, as the operator's command gives it."""
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "twinline",
                "status",
                "--json",
                "--config",
                str(self.config_path),
            ],
            capture_output=True,
            check=True,
            timeout=10,
            env={**os.environ, **self.env},
        )
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def metrics_urls(self) -> dict[str, str]:
        """Every process's metrics endpoint, by process name."""
        urls = {"switch": f"http://127.0.0.1:{self.http_port}/metrics"}
        for name, port in self.metrics_ports.items():
            urls[name] = f"http://127.0.0.1:{port}/metrics"
        return urls

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGINT)  # as Ctrl-C
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return -9

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.database_url:
            with psycopg.connect(self.database_url, password=self.database_password) as conn:
                return conn.execute(sql).fetchall()
        with sqlite3.connect(self.db_path) as db:
            return db.execute(sql).fetchall()
