"""`twinline demo`: start the system, place calls, kill a server mid-call, restart it,
and show that no call was dropped.

Everything runs on this host from the embedded defaults, in a temporary directory: a
switch and two application servers (the processes `twinline up` runs), twinline's own
call generator as caller and callee (`twinline.demo.phones`), the live view in the
terminal (`twinline.ops.console`) and the dashboard on the switch's HTTP server.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import socket
import tempfile
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from twinline.config import load_config
from twinline.demo.phones import Callee, Caller
from twinline.ops.console import render
from twinline.supervisor import Supervisor, fetch_status

VICTIM = "as1"


@dataclass
class Plan:
    calls: int = 600
    rate: float = 30.0  # calls per second
    hold: float = 4.0  # seconds each answered call stays up
    kill_at: float = 8.0  # seconds after the first call
    restart_after: float = 6.0  # seconds after the kill


@dataclass
class Outcome:
    placed: int = 0
    answered: int = 0
    completed: int = 0
    dropped: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    takeover_calls: int | None = None
    takeover_ms: float | None = None
    rejoined: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.dropped == 0 and self.completed == self.placed and self.takeover_ms is not None


def _free_port(kind: int = socket.SOCK_STREAM, prefer: int = 0) -> int:
    for port in (prefer, 0) if prefer else (0,):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free port")


def write_config(directory: Path, callee_port: int, token: str) -> Path:
    sip = _free_port(socket.SOCK_DGRAM)
    http = _free_port(prefer=8062)
    servers = "".join(
        f'[[appservers]]\nname = "{name}"\npeer = "127.0.0.1:{_free_port()}"\n'
        f'metrics = "127.0.0.1:{_free_port()}"\n\n'
        for name in ("as1", "as2")
    )
    path = directory / "twinline.toml"
    path.write_text(
        f"""# Written by `twinline demo`.
[switch]
listen = ["udp:127.0.0.1:{sip}"]
link = "127.0.0.1:{_free_port()}"
http = "127.0.0.1:{http}"
api_token = "{token}"

[database]
url = "sqlite:///{directory / "twinline.db"}"

{servers}# The demo's caller and callee, on this host: a trusted trunk (no challenge).
[[trunks]]
name = "demo"
sources = ["127.0.0.1"]

[[routes]]
prefix = ""
target = "127.0.0.1:{callee_port}"
"""
    )
    return path


class Demo:
    def __init__(self, plan: Plan, *, view: bool, console: Console | None = None) -> None:
        self.plan = plan
        self.view = view
        self.console = console or Console(stderr=True)
        self.directory = Path(tempfile.mkdtemp(prefix="twinline-demo-"))
        self.phase = "starting the switch and two application servers"
        self.status: dict[str, Any] | None = None
        self.caller: Caller | None = None
        self.supervisor: Supervisor | None = None

    def say(self, phase: str) -> None:
        self.phase = phase
        if not self.view:
            self.console.print(f"[bold]twinline demo:[/] {phase}")

    async def run(self) -> Outcome:
        loop = asyncio.get_running_loop()
        callee = Callee()
        callee_port = await callee.start()
        token = secrets.token_urlsafe(12)
        path = write_config(self.directory, callee_port, token)
        config = load_config(path)
        self.supervisor = Supervisor(
            config, str(path), log_level="info", log_file=self.directory / "twinline.log"
        )
        supervisor = self.supervisor
        await loop.run_in_executor(None, supervisor.start)
        dashboard = f"http://{config.switch.http}/"
        self.console.print(f"[bold]twinline demo:[/] dashboard at [link={dashboard}]{dashboard}[/]")
        self.console.print(
            f"[bold]twinline demo:[/] its API token (for the dashboard's drain and handover "
            f"buttons): {token}"
        )
        self.console.print(f"[bold]twinline demo:[/] logs in {self.directory / 'twinline.log'}")
        live = Live(self._frame(dashboard), console=self.console, refresh_per_second=4)
        if self.view:
            live.start()
        watcher = loop.create_task(self._watch(config, live, dashboard))
        try:
            await self._wait_for(lambda s: all(x["state"] == "up" for x in s["servers"]), 20)
            return await self._calls(config, supervisor)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if self.view:
                live.update(self._frame(dashboard))
                live.stop()
            self.say("stopping")
            await loop.run_in_executor(None, supervisor.stop)
            callee.close()
            if self.caller is not None:
                self.caller.close()

    async def _calls(self, config: Any, supervisor: Supervisor) -> Outcome:
        plan = self.plan
        loop = asyncio.get_running_loop()
        host, port = config.switch.listen[0].split(":")[1:]
        self.caller = caller = Caller((host, int(port)))
        await caller.start()
        started = loop.time()
        self.say(f"placing {plan.calls} calls, {plan.rate:g} a second, each held {plan.hold:g} s")
        placing = loop.create_task(caller.place(plan.calls, plan.rate, plan.hold))
        await asyncio.sleep(plan.kill_at)
        self.say(f"kill -9 {VICTIM}, with {caller.in_progress} calls up or in setup")
        supervisor.kill(VICTIM)
        taken = await self._wait_for(lambda s: _takeover_of(s, VICTIM), 10)
        self.say(
            f"{VICTIM}'s calls taken over by their standbys: {taken['calls']} calls in "
            f"{taken['duration_ms']} ms"
        )
        await asyncio.sleep(plan.restart_after)
        self.say(f"restarting {VICTIM}")
        supervisor.respawn(VICTIM)
        await self._wait_for(lambda s: _server(s, VICTIM)["state"] == "up", 20)
        self.say(f"{VICTIM} rejoined; waiting for the last calls to end")
        await placing
        outcome = Outcome(
            placed=caller.counts["placed"], answered=caller.counts["answered"],
            completed=caller.counts["completed"], dropped=caller.counts["failed"],
            failures=dict(caller.failures), seconds=loop.time() - started,
        )  # fmt: skip
        final = await self._wait_for(lambda s: s, 5)
        run = _takeover_of(final, VICTIM)
        if run:
            outcome.takeover_calls, outcome.takeover_ms = run["calls"], run["duration_ms"]
        outcome.rejoined = _server(final, VICTIM)["state"] == "up"
        return outcome

    async def _status(self) -> dict[str, Any] | None:
        assert self.supervisor is not None
        config = self.supervisor.config
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, lambda: fetch_status(config, timeout=2.0)
            )
        except (OSError, urllib.error.URLError, ValueError):
            return None

    async def _wait_for(self, test: Any, within: float) -> Any:
        deadline = time.monotonic() + within
        while True:
            status = await self._status()
            if status is not None:
                self.status = status
                found = test(status)
                if found:
                    return found
            if time.monotonic() > deadline:
                raise RuntimeError(f"the demo stopped: {self.phase} took over {within:g} s")
            await asyncio.sleep(0.1)

    async def _watch(self, config: Any, live: Live, dashboard: str) -> None:
        while True:
            status = await self._status()
            if status is not None:
                self.status = status
            if self.view:
                live.update(self._frame(dashboard))
            await asyncio.sleep(0.25)

    def _frame(self, dashboard: str) -> Any:
        notes = [f"▶ {self.phase}"]
        if self.caller is not None:
            c = self.caller.counts
            notes.append(
                f"calls placed {c['placed']}  answered {c['answered']}  completed "
                f"{c['completed']}  dropped {c['failed']}  in progress {self.caller.in_progress}"
            )
        return render(self.status, title="twinline demo", dashboard=dashboard, notes=notes)


def _server(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in status["servers"] if s["name"] == name)


def _takeover_of(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    for run in status.get("takeovers", []):
        if run["server"] == name and run["reason"] != "handover" and run["completed_at"]:
            return dict(run)
    return None


def report(outcome: Outcome, console: Console) -> None:
    table = Table(title="twinline demo: the report", show_header=False)
    table.add_column(style="dim")
    table.add_column(justify="right")
    table.add_row("calls placed", str(outcome.placed))
    table.add_row("answered", str(outcome.answered))
    table.add_row("completed", str(outcome.completed))
    style = "bold green" if outcome.dropped == 0 else "bold red"
    table.add_row("dropped", f"[{style}]{outcome.dropped}[/]")
    if outcome.takeover_ms is not None:
        table.add_row(
            f"takeover after kill -9 {VICTIM}",
            f"{outcome.takeover_calls} calls in {outcome.takeover_ms} ms",
        )
    table.add_row(f"{VICTIM} restarted and rejoined", "yes" if outcome.rejoined else "no")
    table.add_row("calls ran for", f"{outcome.seconds:.1f} s")
    console.print(table)
    for reason, n in sorted(outcome.failures.items()):
        console.print(f"[red]{n} calls failed: {reason}[/]")


def run_demo(plan: Plan, *, view: bool) -> int:
    console = Console(stderr=True)
    demo = Demo(plan, view=view, console=console)
    task: asyncio.Task[Outcome] | None = None

    async def go() -> Outcome:
        nonlocal task
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        loop.add_signal_handler(signal.SIGINT, task.cancel)
        return await demo.run()

    try:
        outcome = asyncio.run(go())
    except asyncio.CancelledError:
        console.print("twinline demo: interrupted")
        return 130
    except RuntimeError as e:
        console.print(f"[red]twinline demo: {e}[/] (logs: {demo.directory / 'twinline.log'})")
        return 1
    report(outcome, console)
    return 0 if outcome.ok else 1
