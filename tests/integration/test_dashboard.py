"""The dashboard in a real headless browser (chromium through Selenium), on a real
`twinline up` under SIPp load: both servers and the live calls show, a server killed
with SIGKILL shows as down with its takeover within 2 s, and a screenshot is saved."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .browser import artifacts_dir, chrome
from .cluster import Cluster, free_port
from .sipp import Sipp, sipp_binary

pytestmark = pytest.mark.integration

T = TypeVar("T")

TOKEN = "dashboard-test-token"


@pytest.fixture
def sipp(tmp_path: Path) -> Iterator[Sipp]:
    binary = sipp_binary()
    if binary is None:
        pytest.skip("SIPp is not installed (Debian package sip-tester)")
    runner = Sipp(binary, tmp_path / "sipp")
    yield runner
    runner.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    driver: Any = chrome()
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, step: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def test_dashboard_shows_servers_live_calls_and_a_takeover(
    tmp_path: Path, sipp: Sipp, browser: Any
) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    # The page redraws its parts twice a second: an element found may be gone when
    # read, and is then read again.
    def text(css: str) -> str:
        for _ in range(5):
            try:
                found = browser.find_elements(By.CSS_SELECTOR, css)
                return str(found[0].text) if found else ""
            except StaleElementReferenceException:
                continue
        return ""

    def attr(css: str, name: str) -> str | None:
        for _ in range(5):
            try:
                found = browser.find_elements(By.CSS_SELECTOR, css)
                return found[0].get_attribute(name) if found else None
            except StaleElementReferenceException:
                continue
        return None

    cluster = Cluster(tmp_path / "cluster", servers=2, callee_port=free_port())
    cluster.api_token = TOKEN
    cluster.start()
    shots = artifacts_dir("dashboard")
    print(f"dashboard screenshots in {shots}")
    try:
        sipp.start_uas("callee", "uas", port=cluster.callee_port)
        uac = sipp.start_uac(
            "caller", "uac", cluster.sip_address, port=free_port(), calls=1200, rate=60,
            limit=1000, service="1000", duration_ms=5000, timeout_s=120,
        )  # fmt: skip
        browser.get(f"http://127.0.0.1:{cluster.http_port}/")
        assert browser.title == "twinline"
        for name in ("as1", "as2"):
            wait_for(f"{name} up", lambda n=name: attr(f"#server-{n}", "data-state") == "up", 10)
        wait_for("the feed", lambda: text("#feed") == "live", 5)

        # The live call count follows the switch's own (read over the API).
        def live_on_page() -> int | None:
            shown = text("#live-calls")
            return int(shown) if shown.isdigit() and int(shown) >= 100 else None

        def switch_live() -> int:
            url = f"http://127.0.0.1:{cluster.http_port}/api/status"
            with urllib.request.urlopen(url, timeout=5) as resp:
                return int(json.load(resp)["calls"]["live"])

        def page_follows_switch() -> tuple[int, int] | None:
            before, shown, after = switch_live(), live_on_page() or 0, switch_live()
            # The page is at most one update (0.5 s, 30 new calls) behind the switch.
            return (shown, before) if before - 40 <= shown <= after + 5 else None

        wait_for("100 live calls on the page", live_on_page, 30)
        wait_for("the page's live calls to follow the switch's", page_follows_switch, 5)
        wait_for(
            "calls in the table",
            lambda: len(browser.find_elements(By.CSS_SELECTOR, "#calls tr")) > 10,
            5,
        )
        assert text("#server-as1 .primary") not in ("", "0")
        browser.save_screenshot(str(shots / "1-under-load.png"))

        pid = next(s["pid"] for s in cluster.status()["servers"] if s["name"] == "as1")
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def takeover_shown() -> bool:
            down = attr("#server-as1", "data-state") == "down"
            return down and "of as1 taken over" in text("#timeline")

        wait_for("as1 down and its takeover on the page", takeover_shown, 2.0)
        elapsed = time.monotonic() - killed
        print(f"takeover shown {elapsed * 1000:.0f} ms after kill -9")
        assert elapsed < 2.0
        assert "as1 lost" in text("#timeline")
        browser.save_screenshot(str(shots / "2-after-takeover.png"))
        assert (shots / "2-after-takeover.png").stat().st_size > 10_000

        uac.finish()
        uac.check(successful=1200, created=1200, context=cluster.log()[-4000:])

        # Drain from the page (no call is placed any more: as2 is the only server up):
        # refused without the token, done with it.
        def click(css: str) -> bool:
            try:  # the cards are redrawn twice a second: find the button afresh
                browser.find_element(By.CSS_SELECTOR, css).click()
            except (StaleElementReferenceException, NoSuchElementException):
                return False
            return True

        wait_for("a click on as2's drain button", lambda: click("#server-as2 button.drain"), 3)
        refused = wait_for(
            "the refusal", lambda: "refused" in text("#message") and text("#message"), 3
        )
        assert "(401)" in refused and "API token" in refused, refused
        assert attr("#server-as2", "data-state") == "up"
        assert cluster.status()["servers"][1]["state"] == "up"
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        wait_for("a click on as2's drain button", lambda: click("#server-as2 button.drain"), 3)
        wait_for("as2 draining", lambda: attr("#server-as2", "data-state") == "draining", 3)
        assert text("#message") == "drain as2: done"
        wait_for("a click on undrain", lambda: click("#server-as2 button.undrain"), 3)
        wait_for("as2 up again", lambda: attr("#server-as2", "data-state") == "up", 3)

        # The services' figures (refreshed every 10 s) count the calls' CDRs.
        def basic_calls() -> int | None:
            cells = [line.split() for line in text("#services").splitlines()]
            found = [int(c[1]) for c in cells if c and c[0] == "basic"]
            return found[0] if found and found[0] >= 1000 else None

        browser.refresh()
        wait_for("the services table", basic_calls, 15, step=0.5)
        browser.save_screenshot(str(shots / "3-after-the-calls.png"))
    finally:
        code = cluster.stop()
    assert code == 0, cluster.log()[-4000:]
