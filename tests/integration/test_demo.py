"""`twinline demo` runs to the end in under two minutes and drops no call."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_the_demo_runs_to_its_report_with_no_call_dropped(tmp_path: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "twinline", "demo", "--no-view"],
        capture_output=True, text=True, timeout=150, cwd=tmp_path, check=False,
        env={"COLUMNS": "100", "PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    elapsed = time.monotonic() - started
    out = result.stderr
    print(out)
    assert result.returncode == 0, out
    assert elapsed < 120, f"the demo took {elapsed:.0f} s"
    figures = dict(re.findall(r"│ ([^│]+?)\s+│\s+([^│]+?) │", out))
    assert figures["calls placed"] == "600", figures
    assert figures["completed"] == "600"
    assert figures["dropped"] == "0"
    taken = re.fullmatch(r"(\d+) calls in ([\d.]+) ms", figures["takeover after kill -9 as1"])
    assert taken and int(taken[1]) > 0 and float(taken[2]) < 1000, figures
    assert figures["as1 restarted and rejoined"] == "yes"
    assert re.search(r"dashboard at http://127\.0\.0\.1:\d+/", out)
    # Everything it started has stopped, and its logs say so.
    log = next(tmp_path.glob("twinline-demo-*/twinline.log")).read_text()
    assert "switch stopped" in log and "Traceback" not in log
