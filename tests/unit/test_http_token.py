"""The HTTP API's bearer token: reads are open, changes need the configured token."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from twinline.ops.http import make_app


class FakeSwitch:
    def __init__(self) -> None:
        self.done: list[tuple[str, Any]] = []

    def status(self) -> dict[str, Any]:
        return {"servers": [{"name": "as1"}]}

    def drain(self, name: str, on: bool) -> dict[str, Any]:
        self.done.append(("drain", on))
        return {"server": name, "state": "draining"}

    def handover(self, name: str) -> dict[str, Any]:
        self.done.append(("handover", name))
        return {"server": name}


def run(token: str, method: str, path: str, headers: dict[str, str]) -> tuple[int, str, list[Any]]:
    switch = FakeSwitch()

    async def go() -> tuple[int, str]:
        async with TestClient(TestServer(make_app(switch, token=token))) as client:
            resp = await client.request(method, path, headers=headers)
            return resp.status, await resp.text()

    status, text = asyncio.run(go())
    return status, text, switch.done


@pytest.mark.parametrize("action", ["drain", "handover"])
def test_changes_need_the_token(action: str, caplog: pytest.LogCaptureFixture) -> None:
    path = f"/api/servers/as1/{action}"
    status, text, done = run("s3cret", "POST", path, {})
    assert (status, done) == (401, [])
    assert "switch.api_token" in text and "TWINLINE_API_TOKEN" in text
    assert f"HTTP POST {path} refused: no API token" in caplog.text
    status, _, done = run("s3cret", "POST", path, {"Authorization": "Bearer guess"})
    assert (status, done) == (401, [])
    status, _, done = run("s3cret", "POST", path, {"Authorization": "Bearer s3cret"})
    assert status == 200 and len(done) == 1


def test_without_a_configured_token_changes_are_off() -> None:
    status, text, done = run("", "POST", "/api/servers/as1/drain", {"Authorization": "Bearer "})
    assert (status, done) == (403, [])
    assert "changes through this API are off" in text


def test_reading_is_open() -> None:
    status, _, _ = run("s3cret", "GET", "/api/status", {})
    assert status == 200


def test_the_token_is_checked_before_the_name() -> None:
    status, _, _ = run("s3cret", "POST", "/api/servers/nope/drain", {})
    assert status == 401
    status, text, _ = run(
        "s3cret", "POST", "/api/servers/nope/drain", {"Authorization": "Bearer s3cret"}
    )
    assert status == 404 and "no application server named 'nope'" in text
