"""The dashboard: a page served by the switch's HTTP server, updated live over SSE.

- `GET /` and `GET /dashboard/`: the page (plain HTML, CSS and JavaScript from
  `ops/dashboard/` in the package: nothing is loaded from anywhere else).
- `GET /api/events`: server-sent events, one `status` event every `INTERVAL` with
  what `GET /api/status` answers (servers, call totals, the timeline).
- `GET /api/calls?server=&number=&state=&limit=`: live calls, filtered.
- `GET /api/services?window=3600`: the services' figures (`twinline.ops.figures`).

The page's drain, undrain and handover buttons call the API's POST endpoints with
the token the operator typed, as `Authorization: Bearer TOKEN`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "dashboard"
INTERVAL = 0.5  # seconds between two status events: a takeover shows within a second
MAX_ROWS = 1000


class Watchable(Protocol):
    def status(self) -> dict[str, Any]: ...

    def calls_table(
        self, *, server: str = "", number: str = "", state: str = "", limit: int = 200
    ) -> dict[str, Any]: ...

    async def service_figures(self, window: float) -> dict[str, Any] | None: ...


_CLOSING = web.AppKey("dashboard_closing", asyncio.Event)


def add_dashboard(app: web.Application, switch: Watchable) -> None:
    closing = asyncio.Event()
    app[_CLOSING] = closing

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def to_page(request: web.Request) -> web.Response:
        raise web.HTTPFound("/dashboard/")

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            while not closing.is_set():
                data = json.dumps(switch.status(), separators=(",", ":"))
                await response.write(f"event: status\ndata: {data}\n\n".encode())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(closing.wait(), INTERVAL)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the page went away, or the switch is stopping
        return response

    async def calls(request: web.Request) -> web.Response:
        q = request.query
        try:
            limit = min(int(q.get("limit", "200")), MAX_ROWS)
        except ValueError:
            raise web.HTTPBadRequest(text="limit: an integer, please") from None
        table = switch.calls_table(
            server=q.get("server", ""), number=q.get("number", ""), state=q.get("state", ""),
            limit=max(limit, 0),
        )  # fmt: skip
        return web.json_response(table)

    async def services(request: web.Request) -> web.Response:
        try:
            window = min(max(float(request.query.get("window", "3600")), 60.0), 86400.0)
        except ValueError:
            raise web.HTTPBadRequest(text="window: seconds, please") from None
        figures = await switch.service_figures(window)
        if figures is None:
            raise web.HTTPNotFound(text="no database: this switch runs without servers")
        return web.json_response(figures)

    async def on_shutdown(app: web.Application) -> None:
        closing.set()  # let open event streams end, or the HTTP server waits for them

    app.router.add_get("/", to_page)
    app.router.add_get("/dashboard", to_page)
    app.router.add_get("/dashboard/", page)
    app.router.add_static("/dashboard/static/", STATIC)
    app.router.add_get("/api/events", events)
    app.router.add_get("/api/calls", calls)
    app.router.add_get("/api/services", services)
    app.on_shutdown.append(on_shutdown)
