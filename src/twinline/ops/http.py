"""The switch's HTTP API (aiohttp): what operators and the `twinline` command use.

- `GET /api/status`: the live view as JSON (servers with state and load, call totals,
  recent takeovers).
- `POST /api/servers/{name}/drain` (`?off=1` to undo) and `POST
  /api/servers/{name}/handover`: planned maintenance.

- `GET /metrics`: the switch's Prometheus metrics (`twinline.metrics_switch`).
- `GET /` (the dashboard), `GET /api/events` (its live feed), `GET /api/calls`: see
  `twinline.ops.dashboard`.

Reading is open; every request that changes state (any method but GET, HEAD and
OPTIONS) must carry ``Authorization: Bearer TOKEN`` with the configured token
(`switch.api_token` or TWINLINE_API_TOKEN). Without a configured token such requests
are refused: the configuration must say who may change the switch. A refusal writes
the security log's block line (twinline.switch.flood), so fail2ban sees guessing.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry

from twinline.metrics import metrics_handler
from twinline.ops.dashboard import add_dashboard
from twinline.switch.flood import block

log = logging.getLogger("twinline.ops")

_READ_ONLY = frozenset(["GET", "HEAD", "OPTIONS"])
_HOW = "set switch.api_token in the configuration, or TWINLINE_API_TOKEN"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Operable(Protocol):
    def status(self) -> dict[str, Any]: ...

    def drain(self, name: str, on: bool) -> dict[str, Any]: ...

    def handover(self, name: str) -> dict[str, Any]: ...

    def calls_table(
        self, *, server: str = "", number: str = "", state: str = "", limit: int = 200
    ) -> dict[str, Any]: ...

    async def service_figures(self, window: float) -> dict[str, Any] | None: ...


def _token_guard(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method in _READ_ONLY:
            return await handler(request)
        if not token:
            raise web.HTTPForbidden(text=f"changes through this API are off: {_HOW}\n")
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            peer = request.transport.get_extra_info("peername") if request.transport else None
            port = peer[1] if isinstance(peer, tuple) and len(peer) > 1 else 0
            what = "no" if not given else "a wrong"
            block(
                ("tcp", request.remote or "?", port),
                f"HTTP {request.method} {request.path} refused: {what} API token",
            )
            raise web.HTTPUnauthorized(
                text=f"this needs the API token (Authorization: Bearer ...): {_HOW}\n",
                headers={"WWW-Authenticate": 'Bearer realm="twinline"'},
            )
        return await handler(request)

    return guard


def make_app(
    switch: Operable, metrics: CollectorRegistry | None = None, *, token: str = ""
) -> web.Application:
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

    app = web.Application(middlewares=[_token_guard(token)])
    app.router.add_get("/api/status", get_status)
    app.router.add_post("/api/servers/{name}/drain", post_drain)
    app.router.add_post("/api/servers/{name}/handover", post_handover)
    if metrics is not None:
        app.router.add_get("/metrics", metrics_handler(metrics))
    add_dashboard(app, switch)
    return app


async def start_http(
    switch: Operable,
    host: str,
    port: int,
    *,
    metrics: CollectorRegistry | None = None,
    token: str = "",
) -> web.AppRunner:
    runner = web.AppRunner(make_app(switch, metrics, token=token), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    log.info(
        "status API on http://%s:%s/api/status; changes %s",
        host, port, "need the API token" if token else f"are off ({_HOW})",
    )  # fmt: skip
    return runner
