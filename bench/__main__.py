"""``python -m bench``: run the benchmark and write docs/benchmarks.md and its plots.

    python -m bench                  # the full benchmark (about 35 min on 2 cores)
    python -m bench --quick          # every part with short steps (a few minutes)
    python -m bench --report-only    # rewrite the document from bench/out/results.json
    python -m bench --parts capacity --elements twinline,sippy   # a part of it

``./dev bench [ARGS]`` installs SIPp, Kamailio, Sippy's virtual environment and
matplotlib first, then runs this with ARGS.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import capacity, elements, memory, report, takeover
from bench.profile import PROFILES, as_dict
from bench.util import machine, version_of

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"
ALL_PARTS = ("capacity", "takeover", "memory")
SIPPY_VERSION = "from importlib import metadata; print(metadata.version('sippy'))"
MEMORY_ELEMENTS = ("twinline", "twinline-noredundancy", "sippy", "kamailio")


def versions() -> dict[str, str]:
    sippy_python = elements.SIPPY_VENV / "bin" / "python"
    return {
        "twinline": metadata.version("twinline"),
        "python": sys.version.split()[0],
        "sipp": version_of(["sipp", "-v"]),
        "kamailio": version_of(["kamailio", "-v"]),
        "sippy": version_of([str(sippy_python), "-c", SIPPY_VERSION]),
    }


def preflight(keys: list[str]) -> None:
    missing = []
    if shutil.which("sipp") is None:
        missing.append("sipp (Debian package sip-tester)")
    if "kamailio" in keys and shutil.which("kamailio") is None:
        missing.append("kamailio (Debian package kamailio)")
    if "sippy" in keys and not (elements.SIPPY_VENV / "bin" / "b2bua_simple").exists():
        missing.append(f"Sippy B2BUA ({elements.SIPPY_VENV}: bench/setup_sippy.sh makes it)")
    if missing:
        raise SystemExit("missing: " + "; ".join(missing) + "\n./dev bench installs all of them")


def ramp_rates(results: dict[str, Any], profile_ramp: float) -> dict[str, float]:
    """Calls/s to establish calls with, per element: at most 70 % of its throughput
    capacity, so that setting calls up is not itself a capacity test."""
    rates = {}
    summary = results.get("capacity", {}).get("summary", {})
    for key in elements.KINDS:
        entry = summary.get(key, {}).get("throughput", {})
        # The capacity, or when none was confirmed, the best short step.
        measured = entry.get("median") or entry.get("best_step")
        rate = profile_ramp if not measured else min(profile_ramp, 0.7 * measured)
        rates[key] = float(max(20, round(rate)))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short steps and small counts")
    parser.add_argument("--parts", default=",".join(ALL_PARTS), help="capacity,takeover,memory")
    parser.add_argument(
        "--elements", default=",".join(elements.KINDS), help="for capacity and memory"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="where runs and results go")
    parser.add_argument("--docs", type=Path, default=report.DOC, help="the document to write")
    parser.add_argument("--report-only", action="store_true", help="rewrite the document only")
    parser.add_argument("--command", default=None, help="the command to quote in the document")
    args = parser.parse_args(argv)

    results_path = args.out / "results.json"
    if args.report_only:
        report.write(json.loads(results_path.read_text()), args.docs)
        print(f"wrote {args.docs} from {results_path}")
        return 0

    profile = PROFILES["quick" if args.quick else "full"]
    parts = [p for p in args.parts.split(",") if p]
    keys = [k for k in args.elements.split(",") if k]
    for name in parts:
        if name not in ALL_PARTS:
            parser.error(f"unknown part {name!r} (known: {', '.join(ALL_PARTS)})")
    for key in keys:
        if key not in elements.KINDS:
            parser.error(f"unknown element {key!r} (known: {', '.join(elements.KINDS)})")
    preflight(keys)
    run_dir = args.out / f"run-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{profile.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    command = args.command or " ".join(
        ["python -m bench", *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))]
    )
    results: dict[str, Any] = {
        "mode": profile.name,
        "command": command,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "profile": as_dict(profile),
        "run_dir": str(run_dir),
        "elements": keys,
        "durations_s": {},
    }
    print(f"bench: {profile.name} mode, parts {', '.join(parts)}; files in {run_dir}", flush=True)
    started = time.monotonic()

    def save() -> None:
        results["wall_s"] = round(time.monotonic() - started, 1)
        text = json.dumps(results, indent=1, default=str)
        (run_dir / "results.json").write_text(text)
        results_path.write_text(text)

    if "capacity" in parts:
        t = time.monotonic()
        results["capacity"] = capacity.run_all(keys, profile, run_dir)
        results["durations_s"]["capacity"] = round(time.monotonic() - t, 1)
        save()
    rates = ramp_rates(results, profile.ramp_rate)
    results["ramp_rates"] = rates
    if "takeover" in parts:
        t = time.monotonic()
        results["takeover"] = takeover.run_all(profile, run_dir, rates)
        results["durations_s"]["takeover"] = round(time.monotonic() - t, 1)
        save()
    if "memory" in parts:
        t = time.monotonic()
        memory_keys = [k for k in MEMORY_ELEMENTS if k in keys]
        already = {}
        for run in results.get("takeover", {}).get("runs", []):
            if run.get("memory") and "twinline" in memory_keys:
                already["twinline"] = run["memory"]
        results["memory"] = memory.run_all(memory_keys, profile, run_dir, rates, already)
        results["durations_s"]["memory"] = round(time.monotonic() - t, 1)
        save()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    save()
    report.write(results, args.docs)
    print(f"bench: done in {results['wall_s'] / 60:.1f} min; wrote {args.docs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
