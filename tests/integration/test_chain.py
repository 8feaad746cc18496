"""A chained plan end to end: screening, then basic, for one number, as real processes
with SIPp phones and the screening list set with `twinline screening`.

Callers the callee blocks hear 603 from screening and nothing reaches the callee; the
others pass screening undecided and basic connects them. Each call's CDR names the
chain, `screening>basic`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .cluster import Cluster, free_port
from .sipp import Sipp, scenario

pytestmark = pytest.mark.integration

CALLEE = "1000"
BLOCKED = "666"  # the callee blocks callers whose number starts with it
CALLERS = ["5551001", "6661234", "5551002", "6669999", "4441000", "6660000"] * 3


def twinline(cluster: Cluster, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twinline", *args, "--config", str(cluster.config_path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"twinline {' '.join(args)}: {done.stdout}{done.stderr}"


def test_a_chained_plan_screens_then_connects(tmp_path: Path, sipp: Sipp) -> None:
    callee_port = free_port()
    callee = sipp.start_uas("callee", scenario("uas_answer.xml"), port=callee_port)
    cluster = Cluster(
        tmp_path / "cluster", servers=2, callee_port=callee_port,
        extra_config=f'[[plan]]\nservice = ["screening", "basic"]\nnumber = "{CALLEE}"\n',
    )  # fmt: skip
    cluster.start()
    callers = tmp_path / "callers.csv"
    callers.write_text("SEQUENTIAL\n" + "".join(f"{c};\n" for c in CALLERS))
    log = sipp.directory / "caller_logs.log"
    allowed = sum(1 for c in CALLERS if not c.startswith(BLOCKED))
    try:
        twinline(cluster, "screening", "add", CALLEE, "block", BLOCKED)
        run = sipp.run_uac(
            "caller", scenario("uac_screened.xml"), cluster.sip_address, port=free_port(),
            calls=len(CALLERS), rate=20, limit=6, service=CALLEE, timeout_s=60,
            extra=("-inf", str(callers), "-trace_logs", "-log_file", str(log)),
        )  # fmt: skip
        context = cluster.log()[-3000:]
        run.check(successful=len(CALLERS), created=len(CALLERS), context=context)
        said = sorted(
            line.partition(" from ")[2] for line in log.read_text().splitlines() if " from " in line
        )
        expected = sorted(
            f"{c}: {'declined' if c.startswith(BLOCKED) else 'answered'}" for c in CALLERS
        )
        assert said == expected, said
        callee.wait_for_calls(total=allowed, timeout=10)
        callee.stop()
        callee.check(successful=allowed, created=allowed, context=context)
    finally:
        code = cluster.stop()
    assert code == 0, cluster.log()[-4000:]
    assert "Traceback" not in cluster.log(), cluster.log()[-6000:]
    rows = cluster.query(
        "SELECT caller, service, status, disposition FROM cdrs ORDER BY started_at"
    )
    assert sorted(r[0] for r in rows) == sorted(CALLERS)
    for caller, service, status, disposition in rows:
        assert service == "screening>basic", rows
        if caller.startswith(BLOCKED):
            assert (status, disposition) == (603, "failed"), rows
        else:
            assert (status, disposition) == (200, "answered"), rows
