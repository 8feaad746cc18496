"""`twinline up` with its live view: the processes' logs go to a file (JSON lines with
`--log-format json`), the terminal shows the cluster."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cluster import Cluster, free_port

pytestmark = pytest.mark.integration


def test_up_shows_the_cluster_and_writes_json_logs_to_a_file(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, servers=2, callee_port=free_port())
    cluster.write_config()
    logs = tmp_path / "logs" / "twinline.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinline", "up", "--config", str(cluster.config_path),
         "--view", "--log-format", "json", "--log-file", str(logs)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while logs.read_text().count("peer link to") < 2 if logs.exists() else True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, logs.read_text() if logs.exists() else "no log"
            time.sleep(0.2)
        time.sleep(1.0)  # a frame or two of the view
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    screen = err.decode()
    assert f"dashboard: http://127.0.0.1:{cluster.http_port}/" in screen
    assert f"logs {logs}" in screen.replace("\n", "") or str(logs) in screen
    for name in ("as1", "as2"):
        assert name in screen
    assert "joined" in screen  # the timeline
    # Nothing from the processes on the terminal: their logs are in the file, as JSON.
    assert "INFO" not in screen and "twinline.switch" not in screen
    records = [json.loads(line) for line in logs.read_text().splitlines()]
    assert {r["process"] for r in records} == {"switch", "as1", "as2"}
    for r in records:
        assert {"ts", "time", "level", "logger", "pid", "message"} <= r.keys()
    assert any(r["message"].startswith("switch stopped") for r in records)
