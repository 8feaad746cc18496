"""A real headless browser for the dashboard's tests: Debian's chromium and
chromium-driver, driven by Selenium (no browser download is possible here)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def chrome() -> object:
    """A headless Chrome (selenium WebDriver); the test is skipped without chromium."""
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        pytest.skip(
            "chromium and chromedriver are not installed "
            "(Debian packages chromium, chromium-driver; ./dev test installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1100"):  # fmt: skip
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=options)


def artifacts_dir(name: str) -> Path:
    """Where a test leaves what a person should look at (gitignored)."""
    base = Path(os.environ.get("TWINLINE_TEST_ARTIFACTS", REPO / "test-artifacts"))
    path = base / name
    path.mkdir(parents=True, exist_ok=True)
    return path
