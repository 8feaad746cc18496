"""The switch's HTTP API (aiohttp): what operators and `twinline status` read.

`GET /api/status` returns the switch's live view as JSON: the application servers
with their state and load, and the call totals. The dashboard and the Prometheus
metrics will be served from here too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("twinline.ops")

StatusSource = Callable[[], dict[str, Any]]


def make_app(status: StatusSource) -> web.Application:
    async def get_status(request: web.Request) -> web.Response:
        return web.json_response(status())

    app = web.Application()
    app.router.add_get("/api/status", get_status)
    return app


async def start_http(status: StatusSource, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app(status), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info("status API on http://%s:%s/api/status", host, port)
    return runner
