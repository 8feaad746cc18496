"""`twinline up`: a switch and N application servers as separate processes on this host.

The processes are the same ones a multi-host deployment runs (`twinline switch`,
`twinline appserver NAME`), started with one configuration file. When the file lists
no application servers, `up` adds N of them on loopback ports next to the switch's
link port and writes the result to `run/twinline-up.toml`, which every process reads.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgspec

from twinline.appserver.server import HANDOVER_TIMEOUT
from twinline.config import AppServer, Config, ConfigError, api_token, parse_hostport

# A stopping server may take HANDOVER_TIMEOUT to hand its calls over; past this
# margin it is killed (and `up` exits non-zero to say so).
STOP_TIMEOUT = HANDOVER_TIMEOUT + 5.0


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    reported_exit: bool = False


def effective_config(
    config: Config, servers: int | None, run_dir: Path
) -> tuple[Config, Path | None]:
    """The configuration `up` runs: the file's own servers (the first N), or N made up."""
    if config.appservers:
        if servers is None or servers == len(config.appservers):
            return config, None
        if servers > len(config.appservers):
            raise ConfigError(
                f"appservers: --servers {servers} asks for more than the "
                f"{len(config.appservers)} the configuration lists"
            )
        # Every process must see the same list of servers: write the subset out.
        config = msgspec.structs.replace(config, appservers=config.appservers[:servers])
    else:
        count = 2 if servers is None else servers
        host, port = parse_hostport(config.switch.link)
        made = [AppServer(name=f"as{i + 1}", peer=f"{host}:{port + 1 + i}") for i in range(count)]
        config = msgspec.structs.replace(config, appservers=made)
    if not api_token(config):
        # The file is where `twinline drain` and `handover` find the token (0600 below).
        switch = msgspec.structs.replace(config.switch, api_token=secrets.token_urlsafe(24))
        config = msgspec.structs.replace(config, switch=switch)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "twinline-up.toml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(msgspec.toml.encode(_without_none(msgspec.to_builtins(config))))
    return config, path


def _without_none(value: Any) -> Any:
    """TOML has no null: unset optional keys are left out, as a person would write it."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def fetch_status(config: Config, timeout: float = 2.0) -> dict[str, Any]:
    host, port = parse_hostport(config.switch.http)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/api/status"
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


class Supervisor:
    """Starts and stops the processes. With `log_file`, their logs go there (appended);
    with `view`, the terminal shows the live view (`twinline.ops.console`) instead of
    a status line every 5 s."""

    def __init__(
        self,
        config: Config,
        config_path: str,
        *,
        log_level: str,
        log_format: str = "text",
        log_file: Path | None = None,
        view: bool = False,
    ) -> None:
        self.config = config
        base = [sys.executable, "-m", "twinline"]
        common = ["--config", config_path, "--log-level", log_level, "--log-format", log_format]
        self.children = [Child("switch", [*base, "switch", *common])]
        for server in config.appservers:
            self.children.append(Child(server.name, [*base, "appserver", server.name, *common]))
        self._stop = False
        self.log_file = log_file
        self._log: IO[bytes] | None = None
        self.view = view
        self.notes: list[str] = []  # shown under the view: processes that exited
        self.config_path = config_path

    def _spawn(self, child: Child) -> None:
        if self.log_file is not None and self._log is None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_file.open("ab")
        out = self._log if self._log is not None else None
        child.proc = subprocess.Popen(  # noqa: S603
            child.argv, start_new_session=True, stdout=out, stderr=out
        )

    def start(self) -> None:
        switch = self.children[0]
        # Each child in a session of its own: Ctrl-C in the terminal reaches only this
        # supervisor, which then stops the servers first (they hand over) and the
        # switch last.
        self._spawn(switch)
        self._wait_for_switch()
        for child in self.children[1:]:
            self._spawn(child)

    def _wait_for_switch(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        switch = self.children[0]
        while time.monotonic() < deadline:
            if switch.proc is not None and switch.proc.poll() is not None:
                raise RuntimeError(f"the switch exited at start (code {switch.proc.returncode})")
            try:
                fetch_status(self.config, timeout=0.5)
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        raise RuntimeError("the switch did not come up within 15 s")

    def run(self, show: bool = True) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self.start()
        except RuntimeError as e:
            where = f" (logs: {self.log_file})" if self.log_file is not None else ""
            print(f"twinline up: {e}{where}", file=sys.stderr)
            self.stop()
            return 1
        if self.view and show:
            return self._run_with_view()
        last = 0.0
        while not self._stop:
            for note in self.check_children():
                print(f"twinline up: {note}", file=sys.stderr)
            if show and time.monotonic() - last >= 5.0:
                last = time.monotonic()
                self._show()
            time.sleep(0.2)
        return self.stop()

    def kill(self, name: str) -> None:
        """SIGKILL one process, as a crash would (`twinline demo`)."""
        child = next(c for c in self.children if c.name == name)
        if child.proc is not None and child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
        child.reported_exit = True

    def respawn(self, name: str) -> None:
        """Start a process that exited again, with the same command line."""
        child = next(c for c in self.children if c.name == name)
        if child.proc is None or child.proc.poll() is not None:
            child.reported_exit = False
            self._spawn(child)

    def check_children(self) -> list[str]:
        """Processes that exited since the last call, as sentences."""
        notes = []
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None and not child.reported_exit:
                child.reported_exit = True
                notes.append(f"{child.name} exited with code {child.proc.returncode}")
        return notes

    def _run_with_view(self) -> int:
        from rich.console import Console  # noqa: PLC0415
        from rich.live import Live  # noqa: PLC0415

        from twinline.ops.console import dashboard_url, render  # noqa: PLC0415

        def frame() -> Any:
            try:
                status = fetch_status(self.config, timeout=1.0)
            except (OSError, urllib.error.URLError, ValueError):
                status = None
            return render(
                status,
                dashboard=dashboard_url(self.config.switch.http),
                log_file=str(self.log_file) if self.log_file is not None else None,
                notes=[
                    f"the dashboard's buttons need the API token: switch.api_token in "
                    f"{self.config_path} (or TWINLINE_API_TOKEN)",
                    *self.notes[-5:],
                ],
            )

        with Live(frame(), console=Console(stderr=True), refresh_per_second=4) as live:
            while not self._stop:
                self.notes.extend(self.check_children())
                live.update(frame())
                time.sleep(0.5)
            live.update(frame())
        print("twinline up: stopping (servers hand their calls over first)", file=sys.stderr)
        return self.stop()

    def _show(self) -> None:
        try:
            status = fetch_status(self.config)
        except (OSError, urllib.error.URLError):
            return
        servers = "  ".join(
            f"{s['name']}:{s['state']} p={s['primary']} s={s['standby']}" for s in status["servers"]
        )
        print(f"twinline: live calls {status['calls']['live']}  {servers}", file=sys.stderr)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def stop(self) -> int:
        """SIGTERM to the application servers first (they hand over), then the switch."""
        code = 0
        for group in (self.children[1:], self.children[:1]):
            for child in group:
                if child.proc is not None and child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
            for child in group:
                if child.proc is None:
                    continue
                try:
                    child.proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
                    code = 1
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


def default_run_dir() -> Path:
    return Path(os.environ.get("TWINLINE_RUN_DIR", "run"))
