"""The dashboard's HTTP side with a stand-in switch: page, event stream, calls filter."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from twinline.ops.http import make_app
from twinline.ops.timeline import Timeline


class FakeSwitch:
    def __init__(self) -> None:
        self.timeline = Timeline(size=3, wall=lambda: 1000.0)
        self.seen: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:
        return {
            "servers": [{"name": "as1"}],
            "calls": {"live": 7},
            "timeline": self.timeline.latest(),
        }

    def drain(self, name: str, on: bool) -> dict[str, Any]:
        return {"server": name, "state": "draining" if on else "up"}

    def handover(self, name: str) -> dict[str, Any]:
        return {"server": name}

    async def service_figures(self, window: float) -> dict[str, Any] | None:
        self.seen = {"window": window}
        return {"services": [], "prepaid": {"debits": 0, "spend": "0"}}

    def calls_table(
        self, *, server: str = "", number: str = "", state: str = "", limit: int = 200
    ) -> dict[str, Any]:
        self.seen = {"server": server, "number": number, "state": state, "limit": limit}
        return {"total": 0, "calls": []}


async def with_client(switch: FakeSwitch, body: Any) -> Any:
    async with TestClient(TestServer(make_app(switch))) as client:
        return await body(client)


def test_the_page_and_its_files_are_served_from_the_package() -> None:
    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/", allow_redirects=False)
        assert resp.status == 302 and resp.headers["Location"] == "/dashboard/"
        page = await client.get("/dashboard/")
        html = await page.text()
        assert page.status == 200 and "<title>twinline</title>" in html
        assert "http" not in html.replace("http-equiv", "")  # nothing from elsewhere
        for name in ("app.js", "style.css"):
            assert (await client.get(f"/dashboard/static/{name}")).status == 200

    asyncio.run(with_client(FakeSwitch(), body))


def test_the_event_stream_sends_the_status_as_json() -> None:
    switch = FakeSwitch()
    switch.timeline.add("failure", "as1", "as1 lost: connection lost")

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/api/events")
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.content.readline() == b"event: status\n"
        data = json.loads((await resp.content.readline()).removeprefix(b"data: "))
        assert data["calls"]["live"] == 7
        assert data["timeline"][0] == {
            "seq": 1, "at": 1000.0, "kind": "failure", "server": "as1",
            "text": "as1 lost: connection lost",
        }  # fmt: skip
        resp.close()

    asyncio.run(with_client(switch, body))


def test_an_open_event_stream_does_not_hold_up_the_switchs_stop() -> None:
    async def body() -> float:
        server = TestServer(make_app(FakeSwitch()))
        client = TestClient(server)
        await client.start_server()
        resp = await client.get("/api/events")
        await resp.content.readline()
        started = time.monotonic()
        await server.close()
        await client.close()
        return time.monotonic() - started

    assert asyncio.run(body()) < 2.0


def test_the_calls_table_passes_its_filters_and_bounds_the_rows() -> None:
    switch = FakeSwitch()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/api/calls?server=as2&number=555&state=answered&limit=99999")
        assert resp.status == 200
        assert switch.seen == {"server": "as2", "number": "555", "state": "answered", "limit": 1000}
        assert (await client.get("/api/calls?limit=lots")).status == 400

    asyncio.run(with_client(switch, body))


def test_the_timeline_keeps_the_latest_entries_first() -> None:
    timeline = Timeline(size=2, wall=lambda: 5.0)
    for server in ("as1", "as2", "as3"):
        timeline.add("join", server, f"{server} joined")
    assert [e["server"] for e in timeline.latest()] == ["as3", "as2"]


def test_the_services_figures_are_asked_for_a_bounded_window() -> None:
    switch = FakeSwitch()

    async def body(client: TestClient[Any, Any]) -> None:
        resp = await client.get("/api/services?window=999999")
        assert resp.status == 200 and (await resp.json())["prepaid"]["spend"] == "0"
        assert switch.seen == {"window": 86400.0}
        assert (await client.get("/api/services?window=soon")).status == 400

    asyncio.run(with_client(switch, body))
