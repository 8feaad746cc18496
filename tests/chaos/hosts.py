"""Several hosts on one machine: network namespaces on a bridge, and twinline across them.

``Hosts`` makes a bridge and one network namespace per host, each joined to the
bridge by a veth pair and given an address in a private /24 that exists only on
that bridge. The test's own process stays in the root namespace on the bridge's
address: it plays the phones (SIPp binds that address) and the operator (status
API, database queries). Every name carries the test process's pid, so runs in
parallel do not meet, and ``remove()`` deletes the namespaces, their links and the
bridge whatever state they are in.

``HostsCluster`` is the chaos tests' cluster run as a deployment across hosts: the
switch (``twinline switch``) on one host, each application server (``twinline
appserver NAME``) on its own, PostgreSQL on another, one configuration file for all,
as docs/operations.md ("Several hosts") describes. Its faults are the chaos
cluster's (kill, freeze, restart a server: on its host) and ``cut``: a host's route
to another host blackholed, so its packets vanish as on a broken network path
while every other path works.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from pgserver import USER, PgServer
from twinline.store.sql import render

from .harness import ChaosCluster, wait_for


def _ip(*args: str, netns: str | None = None) -> None:
    command = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {result.stderr.strip()}")


@dataclass
class Hosts:
    """A bridge with the test's process on ``.1`` and a namespace per host."""

    tag: str = field(default_factory=lambda: str(os.getpid() % 10000))
    subnet: str = field(default_factory=lambda: f"10.232.{os.getpid() % 250}")
    addresses: dict[str, str] = field(default_factory=dict)  # host -> its address

    @property
    def bridge(self) -> str:
        return f"tlbr{self.tag}"

    @property
    def own_address(self) -> str:
        """The test's process (the phones, the operator), on the bridge itself."""
        return f"{self.subnet}.1"

    def netns(self, host: str) -> str:
        return f"tl{self.tag}{host}"

    def start(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.own_address}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add(self, host: str, octet: int) -> str:
        """Host ``host`` at ``.octet``: its namespace, joined to the bridge. Its address."""
        ns, address = self.netns(host), f"{self.subnet}.{octet}"
        inner, outer = f"{ns}i", f"{ns}o"
        _ip("netns", "add", ns)
        self.addresses[host] = address
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", ns)
        _ip("link", "set", outer, "master", self.bridge)
        _ip("link", "set", outer, "up")
        _ip("addr", "add", f"{address}/24", "dev", inner, netns=ns)
        _ip("link", "set", inner, "up", netns=ns)
        _ip("link", "set", "lo", "up", netns=ns)
        return address

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``host`` (in its namespace; the pid is the command's own)."""
        return ["ip", "netns", "exec", self.netns(host), *argv]

    def cut(self, host: str, to: str) -> None:
        """From now on ``host``'s packets to host ``to`` vanish (no reset, no error
        seen by the other end): a broken path, both hosts alive."""
        _ip("route", "add", "blackhole", f"{self.addresses[to]}/32", netns=self.netns(host))

    def heal(self, host: str, to: str) -> None:
        _ip("route", "del", "blackhole", f"{self.addresses[to]}/32", netns=self.netns(host))

    def remove(self) -> None:
        for host in list(self.addresses):
            ns = self.netns(host)
            subprocess.run(["ip", "link", "del", f"{ns}o"], capture_output=True, check=False)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        self.addresses.clear()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)


SIP_PORT, LINK_PORT, HTTP_PORT, PEER_PORT, METRICS_PORT = 5060, 5062, 8062, 5063, 6063


@dataclass(kw_only=True)
class HostsCluster(ChaosCluster):
    """The switch, the application servers and PostgreSQL each on a host of ``hosts``;
    the phones (SIPp) on the test's own address."""

    hosts: Hosts
    database: PgServer
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def sip_address(self) -> str:
        return f"{self.hosts.addresses['switch']}:{SIP_PORT}"

    @property
    def link_address(self) -> tuple[str, int]:
        return (self.hosts.addresses["switch"], LINK_PORT)

    def write_config(self) -> None:
        switch = self.hosts.addresses["switch"]
        servers = "".join(
            f'[[appservers]]\nname = "{name}"\npeer = "{self.hosts.addresses[name]}:{PEER_PORT}"\n'
            f'metrics = "{self.hosts.addresses[name]}:{METRICS_PORT}"\n\n'
            for name in self.server_names
        )
        self.config_path.write_text(
            f"""[switch]
listen = ["udp:{switch}:{SIP_PORT}"]
link = "{switch}:{LINK_PORT}"
http = "{switch}:{HTTP_PORT}"
api_token = "chaos-operator-token"

[cluster]
secret = "many-hosts-test-secret-{self.hosts.tag}"
heartbeat_interval = 0.1
dead_after = 3

[database]
url = "{self.database_url}"
connect_timeout = 3.0

{servers}# The phones and the PBX are on the test's own address: a trusted trunk.
[[trunks]]
name = "sipp"
sources = ["{self.hosts.own_address}"]

[[routes]]
prefix = ""
target = "{self.hosts.own_address}:{self.callee_port}"

{self.extra_config}"""
        )

    @property
    def server_names(self) -> list[str]:
        return [f"as{i + 1}" for i in range(self.servers)]

    def _launch(self, name: str, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        host = "switch" if argv[0] == "switch" else argv[1]
        command = [sys.executable, "-m", "twinline", *argv, "--config", str(self.config_path)]
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self.hosts.command(host, command),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env={**os.environ, **self.env},
            )
        self.pids[proc.pid] = name
        return proc

    def _log_file(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self, timeout: float = 30.0) -> None:
        self.env["TWINLINE_DATABASE_PASSWORD"] = self.database.password
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.processes["switch"] = self._launch("switch", ["switch"], self._log_file("switch"))
        wait_for(self.try_api, timeout=timeout, what="the switch's status API")
        for name in self.server_names:
            self.processes[name] = self._launch(name, ["appserver", name], self._log_file(name))
        for name in self.server_names:
            self.wait_state(name, "up", timeout=timeout)
        expected = self.servers * (self.servers - 1)
        wait_for(
            lambda: self.log().count("peer link to") >= expected,
            timeout=timeout,
            what="every peer link up",
        )

    def api(self, timeout: float = 5.0) -> dict[str, Any]:
        url = f"http://{self.hosts.addresses['switch']}:{HTTP_PORT}/api/status"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def restart(self, name: str, config: Path | None = None) -> subprocess.Popen[bytes]:
        """Start application server ``name`` again on its host."""
        old = self.processes.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} still runs")
        proc = self._launch(f"{name} (restarted)", ["appserver", name], self._log_file(name))
        self.processes[name] = proc
        return proc

    def log(self) -> str:
        parts = []
        for name in ["switch", *self.server_names]:
            path = self._log_file(name)
            if path.exists():
                parts.append(f"--- {name} ---\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, password=self.database.password) as conn:
            return conn.execute(render(sql, "postgresql"), params).fetchall()

    def stop(self) -> int:
        """Servers first (SIGTERM: they hand their calls over and flush), then the switch."""
        worst = 0
        for name in [*self.server_names, "switch"]:
            proc = self.processes.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = -9
            worst = worst or code
        return worst


def database_on(hosts: Hosts, host: str) -> tuple[PgServer, str]:
    """A PostgreSQL started on ``host``, with an empty database: the server, its URL."""
    address = hosts.addresses[host]
    server = PgServer(settings={"listen_addresses": address}, netns=hosts.netns(host))
    server.start()
    admin = f"postgresql://{USER}@{address}:{server.port}/postgres"
    with psycopg.connect(admin, password=server.password, autocommit=True) as conn:
        conn.execute("CREATE DATABASE twinline")
    return server, f"postgresql://{USER}@{address}:{server.port}/twinline"
