"""The switch's HTTP API (aiohttp): what operators and the `twinline` command use.

- `GET /api/status`: the live view as JSON (servers with state and load, call totals,
  recent takeovers).
- `POST /api/servers/{name}/drain` (`?off=1` to undo) and `POST
  /api/servers/{name}/handover`: planned maintenance.

- `GET /metrics`: the switch's Prometheus metrics (`twinline.metrics_switch`).
- `GET /` (the dashboard), `GET /api/events` (its live feed), `GET /api/calls`: see
  `twinline.ops.dashboard`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from twinline.metrics import metrics_handler
from twinline.ops.dashboard import add_dashboard

log = logging.getLogger("twinline.ops")


class Operable(Protocol):
    def status(self) -> dict[str, Any]: ...

    def drain(self, name: str, on: bool) -> dict[str, Any]: ...

    def handover(self, name: str) -> dict[str, Any]: ...

    def calls_table(
        self, *, server: str = "", number: str = "", state: str = "", limit: int = 200
    ) -> dict[str, Any]: ...


def make_app(switch: Operable, metrics: CollectorRegistry | None = None) -> web.Application:
    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(switch.status())

    def server_name(request: web.Request) -> str:
        name = request.match_info["name"]
        known = [s["name"] for s in switch.status()["servers"]]
        if name not in known:
            raise web.HTTPNotFound(
                text=f"no application server named {name!r} (known: {', '.join(known) or 'none'})"
            )
        return name

    async def post_drain(request: web.Request) -> web.Response:
        on = request.query.get("off") not in ("1", "true", "yes")
        return web.json_response(switch.drain(server_name(request), on))

    async def post_handover(request: web.Request) -> web.Response:
        return web.json_response(switch.handover(server_name(request)))

    app = web.Application()
    app.router.add_get("/api/status", get_status)
    app.router.add_post("/api/servers/{name}/drain", post_drain)
    app.router.add_post("/api/servers/{name}/handover", post_handover)
    if metrics is not None:
        app.router.add_get("/metrics", metrics_handler(metrics))
    add_dashboard(app, switch)
    return app


async def start_http(
    switch: Operable, host: str, port: int, *, metrics: CollectorRegistry | None = None
) -> web.AppRunner:
    runner = web.AppRunner(make_app(switch, metrics), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("status API on http://%s:%s/api/status", host, port)
    return runner
