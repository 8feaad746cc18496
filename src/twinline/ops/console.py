"""The terminal's live view of a cluster (rich): what `twinline up` and `twinline demo`
show instead of scrolling logs. Built from the switch's status (`GET /api/status`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

STATE_STYLE = {"up": "green", "draining": "yellow", "down": "bold red"}
KIND_STYLE = {"failure": "red", "takeover": "cyan", "drain": "yellow", "undrain": "yellow"}


def render(
    status: dict[str, Any] | None,
    *,
    title: str = "twinline",
    dashboard: str | None = None,
    log_file: str | None = None,
    notes: Sequence[str] = (),
) -> RenderableType:
    """One frame of the view; `status` None while the switch does not answer."""
    parts: list[RenderableType] = []
    if status is None:
        parts.append(Text("waiting for the switch…", style="yellow"))
    else:
        calls = status["calls"]
        unprotected = calls.get("unprotected", 0)
        figures = Text.assemble(
            ("live calls ", "dim"), (str(calls["live"]), "bold"),
            ("   offered ", "dim"), str(calls["offered"]),
            ("   answered ", "dim"), str(calls["answered"]),
            ("   completed ", "dim"), str(calls["completed"]),
            ("   rejected ", "dim"), str(calls["rejected"]),
            ("   without a standby ", "dim"),
            (str(unprotected), "bold red" if unprotected else "green"),
        )  # fmt: skip
        parts.append(figures)
        table = Table(expand=True, box=None, header_style="dim")
        for column in ("server", "state", "pid", "primary", "standby", "load", "heartbeat"):
            table.add_column(column, justify="left" if column in ("server", "state") else "right")
        for s in status["servers"]:
            load = f"{100 * s['primary'] / s['capacity']:.1f} %" if s["capacity"] else "-"
            age = s.get("heartbeat_age_ms")
            table.add_row(
                s["name"], Text(s["state"], style=STATE_STYLE.get(s["state"], "")),
                str(s["pid"] or "-"), str(s["primary"]), str(s["standby"]), load,
                "-" if age is None else f"{age} ms",
            )  # fmt: skip
        parts.append(table)
        timeline = status.get("timeline", [])[:6]
        if timeline:
            lines = Text()
            for entry in timeline:
                stamp = time.strftime("%H:%M:%S", time.localtime(entry["at"]))
                lines.append(f"{stamp} ", style="dim")
                lines.append(entry["text"] + "\n", style=KIND_STYLE.get(entry["kind"], "green"))
            parts.append(lines)
    for note in notes:
        parts.append(Text(note))
    footer = []
    if dashboard:
        footer.append(f"dashboard {dashboard}")
    if log_file:
        footer.append(f"logs {log_file}")
    footer.append("Ctrl-C stops")
    return Panel(Group(*parts), title=title, subtitle="  ·  ".join(footer), border_style="blue")


def dashboard_url(http: str) -> str:
    return f"http://{http}/"
