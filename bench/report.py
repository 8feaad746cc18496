"""docs/benchmarks.md and its plots (docs/benchmarks/*.png), from a results file.

Everything on the page comes from ``results.json`` (``python -m bench --report-only``
rewrites it without measuring), except the text between the notes markers, which a
person writes (what a profile showed, what changed) and which a rewrite keeps.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.elements import KINDS, label

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
NOTES_START = "<!-- notes: written by people; the harness keeps them when it rewrites the page -->"
NOTES_END = "<!-- end of notes -->"
DEFAULT_NOTES = """## Notes

No profile notes yet: the hot-path work of issue 5 (py-spy or pyinstrument, uvloop)
adds what the profile showed and what changed here.
"""

# The targets.
STRICT_VS_SIPPY = 3.0  # twinline strict (redundancy on) >= 3 x Sippy's throughput capacity
STRICT_VS_KAMAILIO = 0.25  # ... and >= 1/4 of Kamailio's
REDUNDANCY_COST = 0.30  # redundancy costs at most 30 % of capacity
TAKEOVER_CALLS, TAKEOVER_MS = 5000, 300.0  # takeover median under 300 ms at 5,000 calls
PREPAID_SHARE = 0.60  # prepaid capacity (strict) at least 60 % of basic capacity
POSTGRES_SHARE = 0.80  # capacity on PostgreSQL at least 80 % of capacity on SQLite
MEMORY_BYTES = 10_000  # at most 10 KB per established call


# --------------------------------------------------------------------------- figures


def _cap(results: dict[str, Any], key: str, scenario: str) -> dict[str, Any] | None:
    entry: dict[str, Any] | None = (
        results.get("capacity", {}).get("summary", {}).get(key, {}).get(scenario)
    )
    return entry


def _median(results: dict[str, Any], key: str, scenario: str) -> float | None:
    entry = _cap(results, key, scenario)
    return None if entry is None else float(entry["median"])


def _rate(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "not measured"
    value = entry["median"]
    rounds = " / ".join(f"{r:g}" for r in entry["rounds"])
    shown = f"≥ {value:g}" if entry.get("at_limit") else (f"{value:g}" if value else "< min")
    return f"**{shown}** ({rounds})" if len(entry["rounds"]) > 1 else f"**{shown}**"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _kib(value: float | None) -> str:
    return "-" if value is None else f"{value / 1024:.2f} KiB"


def _median_of(values: list[Any]) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


def _postgres_targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    take = results.get("takeover", {}).get("postgres", {}).get("summary", {})
    at = take.get(str(TAKEOVER_CALLS), {})
    target = f"takeover median under {TAKEOVER_MS:.0f} ms at {TAKEOVER_CALLS:,} calls on PostgreSQL"
    if at.get("median_ms") is not None:
        rows.append(
            (target, f"{at['median_ms']:.0f} ms",
             "met" if at["median_ms"] < TAKEOVER_MS else "not yet")
        )  # fmt: skip
    else:
        measured = ", ".join(
            f"{_ms(v['median_ms'])} at {int(k):,}" for k, v in take.items() if v.get("median_ms")
        )
        rows.append((target, measured or "not measured in this run", "-"))
    for what, sqlite, pg in (
        ("basic", "twinline", "twinline-pg"),
        ("prepaid", "twinline-prepaid", "twinline-prepaid-pg"),
    ):
        on_sqlite = _median(results, sqlite, "strict")
        on_pg = _median(results, pg, "strict")
        target = f"{what} capacity on PostgreSQL ≥ 80 % of the same on SQLite, same run"
        if on_sqlite and on_pg is not None:
            ratio = on_pg / on_sqlite
            rows.append(
                (target, f"{on_pg:g} / {on_sqlite:g} = {100 * ratio:.0f} %",
                 "met" if ratio >= POSTGRES_SHARE else "not yet")
            )  # fmt: skip
        else:
            rows.append((target, "not measured", "-"))
    return rows


def _prepaid_targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    basic = _median(results, "twinline", "strict")
    prepaid = _median(results, "twinline-prepaid", "strict")
    if basic and prepaid is not None:
        ratio = prepaid / basic
        rows.append(
            ("prepaid capacity (strict, every call authorized, debited, its CDR costed) ≥ 60 %"
             " of basic capacity, same run",
             f"{prepaid:g} / {basic:g} = {100 * ratio:.0f} %",
             "met" if ratio >= PREPAID_SHARE else "not yet")
        )  # fmt: skip
    else:
        rows.append(("prepaid capacity ≥ 60 % of basic capacity", "not measured", "-"))
    take = results.get("takeover", {}).get("prepaid", {}).get("summary", {})
    at = take.get(str(TAKEOVER_CALLS), {})
    if at.get("median_ms") is not None:
        rows.append(
            (f"takeover median under {TAKEOVER_MS:.0f} ms at {TAKEOVER_CALLS:,} established"
             " prepaid calls", f"{at['median_ms']:.0f} ms",
             "met" if at["median_ms"] < TAKEOVER_MS else "not yet")
        )  # fmt: skip
    else:
        measured = ", ".join(
            f"{_ms(v['median_ms'])} at {int(k):,}" for k, v in take.items() if v.get("median_ms")
        )
        rows.append(
            (f"takeover median under {TAKEOVER_MS:.0f} ms at {TAKEOVER_CALLS:,} prepaid calls",
             measured or "not measured in this run", "-")
        )  # fmt: skip
    return rows


def _takeover_rows(take: dict[str, Any], kind: str) -> list[str]:
    out = []
    for count, summary in take.get("summary", {}).items():
        runs = [r for r in take["runs"] if str(r["calls"]) == count]
        ok = [r for r in runs if "takeover_ms" in r]
        errors = len(runs) - len(ok)
        out.append(
            f"| {int(count):,}{kind} | **{_ms(summary['median_ms'])}** | "
            + ", ".join(f"{r['takeover_ms']:.0f}" for r in ok)
            + (f" ({errors} failed)" if errors else "")
            + f" | {_ms(_median_of([r['detect_ms'] for r in ok]))}"
            + f" | {', '.join(str(r['calls_taken_over']) for r in ok)}"
            + " | "
            + ", ".join(f"{r['live_before']} → {r['live_after']}" for r in ok)
            + " |"
        )
    return out


def targets(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, figure in this run, verdict) for each of the issue's targets."""
    rows = []
    strict_on = _median(results, "twinline", "strict")
    strict_off = _median(results, "twinline-noredundancy", "strict")
    sippy = _median(results, "sippy", "throughput")
    kam_entry = _cap(results, "kamailio", "throughput")
    kamailio = _median(results, "kamailio", "throughput")

    if strict_on is not None and sippy:
        ratio = strict_on / sippy
        verdict = "met" if ratio >= STRICT_VS_SIPPY else "not yet"
        rows.append(
            ("strict capacity, redundancy on ≥ 3 x Sippy B2BUA's throughput capacity",
             f"{strict_on:g} / {sippy:g} = {ratio:.2f} x", verdict)
        )  # fmt: skip
    else:
        rows.append(("strict capacity ≥ 3 x Sippy B2BUA's throughput", "not measured", "-"))
    if strict_on is not None and kamailio:
        ratio = strict_on / kamailio
        bound = kam_entry is not None and kam_entry.get("at_limit")
        verdict = "met" if ratio >= STRICT_VS_KAMAILIO else "not yet"
        if bound and ratio < STRICT_VS_KAMAILIO:
            verdict = "not yet (Kamailio reached the load limit: its figure is a floor)"
        rows.append(
            ("strict capacity, redundancy on ≥ ¼ of Kamailio's (1 worker, throughput)",
             f"{strict_on:g} / {'≥ ' if bound else ''}{kamailio:g}"
             f" = {'≤ ' if bound else ''}{ratio:.2f}", verdict)
        )  # fmt: skip
    else:
        rows.append(("strict capacity ≥ ¼ of Kamailio's", "not measured", "-"))
    if strict_on is not None and strict_off:
        cost = 1 - strict_on / strict_off
        rows.append(
            ("redundancy costs at most 30 % of capacity (strict)",
             f"1 - {strict_on:g} / {strict_off:g} = {100 * cost:.0f} %",
             "met" if cost <= REDUNDANCY_COST else "not yet")
        )  # fmt: skip
    else:
        rows.append(("redundancy costs at most 30 % of capacity", "not measured", "-"))
    take = results.get("takeover", {}).get("summary", {}).get(str(TAKEOVER_CALLS), {})
    if take.get("median_ms") is not None:
        median = take["median_ms"]
        rows.append(
            (f"takeover median under {TAKEOVER_MS:.0f} ms at {TAKEOVER_CALLS:,} established calls",
             f"{median:.0f} ms", "met" if median < TAKEOVER_MS else "not yet")
        )  # fmt: skip
    else:
        rows.append(
            (f"takeover median under {TAKEOVER_MS:.0f} ms at {TAKEOVER_CALLS:,} calls",
             "not measured in this run", "-")
        )  # fmt: skip
    rows += _prepaid_targets(results)
    rows += _postgres_targets(results)
    mem = results.get("memory", {}).get("twinline", {})
    if "per_call_bytes" in mem:
        per_call = mem["per_call_bytes"]
        at = mem["calls"]
        note = "" if at >= 20000 else f" (at {at:,} calls, not 20,000)"
        rows.append(
            ("at most 10 KB (10,000 bytes) per established call, all processes",
             f"{per_call:,.0f} bytes{note}", "met" if per_call <= MEMORY_BYTES else "not yet")
        )  # fmt: skip
    else:
        rows.append(("at most 10 KB per established call", "not measured", "-"))
    return rows


# --------------------------------------------------------------------------- plots


def plots(results: dict[str, Any], directory: Path) -> dict[str, str]:
    """Write the PNGs; returns {name: path relative to docs/}."""
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    directory.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    tag = " (quick run)" if results.get("mode") == "quick" else ""
    summary = results.get("capacity", {}).get("summary", {})
    keys = [k for k in KINDS if k in summary]
    if keys:
        fig, ax = plt.subplots(figsize=(8, 4.2))
        width = 0.38
        for i, scenario in enumerate(("strict", "throughput")):
            values = [summary[k].get(scenario, {}).get("median", 0) for k in keys]
            xs = [j + (i - 0.5) * width for j in range(len(keys))]
            bars = ax.bar(xs, values, width, label=scenario)
            for x, k in zip(xs, keys, strict=True):
                rounds = summary[k].get(scenario, {}).get("rounds", [])
                ax.plot([x] * len(rounds), rounds, "k.", markersize=4)
            ax.bar_label(bars, labels=[f"{v:g}" for v in values], fontsize=8)
        ax.set_xticks(range(len(keys)), [label(k) for k in keys], fontsize=8, rotation=10)
        ax.set_ylabel("calls/s (median; dots: rounds)")
        ax.set_title(f"Capacity: zero failed calls, p99 setup < 200 ms{tag}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(directory / "capacity.png", dpi=110)
        plt.close(fig)
        made["capacity"] = f"{directory.name}/capacity.png"

        fig, ax = plt.subplots(figsize=(8, 4.2))
        for k in keys:
            points = [
                (st["rate"], st["outcome"]["setup_p99_ms"])
                for s in results["capacity"]["searches"]
                if s["element"] == k and s["scenario"] == "throughput"
                for st in s["steps"]
                if st["outcome"]["setup_p99_ms"] is not None
            ]
            if points:
                points.sort()
                ax.plot(*zip(*points, strict=True), "o", label=label(k), markersize=4)
        ax.axhline(200, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("offered calls/s (every step of the throughput searches)")
        ax.set_ylabel("p99 setup time, ms")
        ax.set_title(f"Setup time (INVITE to 200) against load{tag}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / "setup.png", dpi=110)
        plt.close(fig)
        made["setup"] = f"{directory.name}/setup.png"

    take = results.get("takeover", {})
    runs = [r for r in take.get("runs", []) if "takeover_ms" in r]
    if runs:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        counts = sorted({r["calls"] for r in runs})
        xs, ys = [r["calls"] for r in runs], [r["takeover_ms"] for r in runs]
        ax.plot(xs, ys, "o", alpha=0.5, label="runs")
        medians = [take["summary"][str(c)]["median_ms"] for c in counts]
        ax.plot(counts, medians, "-s", label="median")
        ax.axhline(TAKEOVER_MS, color="grey", linestyle="--", linewidth=1, label="target at 5,000")
        ax.set_xlim(0, max(counts) * 1.1)
        ax.set_ylim(0, max([TAKEOVER_MS, *ys]) * 1.15)
        ax.set_xlabel("established calls through the cluster (half on the killed server)")
        ax.set_ylabel("kill -9 to last call re-owned, ms")
        ax.set_title(f"Takeover time{tag}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / "takeover.png", dpi=110)
        plt.close(fig)
        made["takeover"] = f"{directory.name}/takeover.png"

    mem = {k: v for k, v in results.get("memory", {}).items() if "per_call_bytes" in v}
    if mem:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        names = [k for k in KINDS if k in mem]
        values = [mem[k]["per_call_bytes"] / 1024 for k in names]
        bars = ax.bar(range(len(names)), values)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in values], fontsize=8)
        ax.axhline(MEMORY_BYTES / 1024, color="grey", linestyle="--", linewidth=1, label="target")
        ax.set_xticks(range(len(names)), [label(k) for k in names], fontsize=8, rotation=10)
        ax.set_ylabel("KiB per established call (RSS)")
        calls = max(v["calls"] for v in mem.values())
        ax.set_title(f"Memory at {calls:,} established calls{tag}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / "memory.png", dpi=110)
        plt.close(fig)
        made["memory"] = f"{directory.name}/memory.png"
    return made


# --------------------------------------------------------------------------- page


def _notes(doc: Path) -> str:
    try:
        text = doc.read_text()
    except OSError:
        return DEFAULT_NOTES
    start, end = text.find(NOTES_START), text.find(NOTES_END)
    if start < 0 or end < start:
        return DEFAULT_NOTES
    return text[start + len(NOTES_START) : end].strip("\n") + "\n"


def _causes_section(results: dict[str, Any]) -> list[str]:
    lines = []
    summary = results.get("capacity", {}).get("summary", {})
    for key in KINDS:
        for scenario in ("strict", "throughput"):
            entry = summary.get(key, {}).get(scenario)
            if not entry or not entry["causes"]:
                continue
            for where, causes in entry["causes"].items():
                top = sorted(causes.items(), key=lambda kv: -kv[1])[:4]
                text = "; ".join(f"{n} x `{c}`" for c, n in top)
                lines.append(f"| {label(key)} | {scenario} | {where} | {text} |")
    logs = []
    for key in KINDS:
        for scenario in ("strict", "throughput"):
            errors = summary.get(key, {}).get(scenario, {}).get("log_errors", [])
            if errors:
                shown = "; ".join(f"`{e[:160]}`" for e in errors[:4])
                logs.append(f"- {label(key)}, {scenario}: {shown}")
    if logs:
        lines_after = [
            "",
            "Warnings and errors in the elements' own logs during the searches (alike lines "
            "merged, numbers as N; at most four kinds per search):",
            "",
            *logs,
        ]
    else:
        lines_after = ["", "No element logged a warning or an error during the searches."]
    if not lines:
        return ["No step of any search had a failed call.", *lines_after, ""]
    return [
        "The lowest rate at which each search saw failed calls, and their causes as SIPp's",
        "error files give them (the caller's; `callee:` the callee's; at most four kinds).",
        "A step is stopped at its first failed call, so the counts are small on purpose.",
        "",
        "| element | caller | first failing step | causes |",
        "|---|---|---|---|",
        *lines,
        *lines_after,
        "",
    ]


def markdown(results: dict[str, Any], images: dict[str, str]) -> str:
    quick = results.get("mode") == "quick"
    prof = results.get("profile", {})
    m = results.get("machine", {})
    v = results.get("versions", {})
    out: list[str] = ["# Benchmarks", ""]
    if quick:
        out += [
            "> **Quick run.** These figures come from the harness's quick mode: short steps "
            f"({prof.get('probe_s')} s search steps, {prof.get('confirm_s')} s confirmation "
            f"instead of 30 s, {prof.get('rounds')} round, takeover with "
            f"{', '.join(f'{c:,}' for c, _ in prof.get('takeover_runs', []))} calls only, memory "
            f"at {prof.get('memory_calls', 0):,} calls instead of 20,000). They check that every "
            "part works; they are not the benchmark. `./dev bench` (the full mode) replaces them.",
            "",
        ]
    out += [
        "What twinline carries, how fast it takes over and how much memory a call costs, "
        "measured on one machine in one run, with the elements a user would pick instead "
        "under the same load and the same stepping. This page is written by the harness "
        "(bench/); only the notes at the end are written by hand.",
        "",
        f"- Command: `{results.get('command')}` ({results.get('mode')} mode), "
        f"{results.get('wall_s', 0) / 60:.1f} min, started {results.get('started_at')}",
        f"- Machine: {m.get('cores')} cores ({m.get('cpu')}), {m.get('memory_gib')} GiB, "
        f"Linux {m.get('kernel')}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m.get('loadavg_at_start', []))}",
        f"- Versions: twinline {v.get('twinline')} (Python {v.get('python')}), "
        f"{v.get('sipp')}, {v.get('kamailio')}, Sippy B2BUA {v.get('sippy')}",
        "",
        "## Targets",
        "",
        "| target (issue 5) | this run | verdict |",
        "|---|---|---|",
        *[f"| {t} | {f} | {verdict} |" for t, f, verdict in targets(results)],
        "",
    ]
    cap = results.get("capacity")
    if cap:
        out += [
            "## Capacity",
            "",
            f"The highest call rate each element carries for {prof.get('confirm_s'):g} s with "
            f"zero failed calls and a 99th-percentile setup time (INVITE to 200 at the caller) "
            f"under {prof.get('p99_limit_ms'):g} ms, in calls/s. Median of "
            f"{prof.get('rounds')} round(s), each round's figure in brackets; ≥ means the "
            f"search reached its ceiling ({prof.get('max_rate'):g}/s) without a failure. "
            f"*Strict*: SIPp's built-in `uac`, which fails a call when a 180 comes after the "
            f"200. *Throughput*: `bench/scenarios/uac_throughput.xml`, which accepts a "
            f"provisional response at any point.",
            "",
            "| element | strict | throughput | p99 setup at the rate (strict / throughput) "
            "| element CPU % | callers' CPU % |",
            "|---|---|---|---|---|---|",
        ]
        for key in KINDS:
            entry = cap["summary"].get(key)
            if not entry:
                continue
            s, t = entry.get("strict"), entry.get("throughput")
            p99 = " / ".join(_ms(_median_of(e.get("p99_ms", []))) if e else "-" for e in (s, t))
            cpu = " / ".join(
                "-" if not e or _median_of(e.get("element_cpu_percent", [])) is None
                else f"{_median_of(e.get('element_cpu_percent', [])):.0f}"
                for e in (s, t)
            )  # fmt: skip
            uac = " / ".join(
                "-" if not e or _median_of(e.get("uac_cpu_percent", [])) is None
                else f"{_median_of(e.get('uac_cpu_percent', [])):.0f}"
                for e in (s, t)
            )  # fmt: skip
            out.append(f"| {label(key)} | {_rate(s)} | {_rate(t)} | {p99} | {cpu} | {uac} |")
        out += [
            "",
            "CPU % is of one core, over the confirmation step (200 % is both cores of this "
            "machine): all the element's processes, and the SIPp caller alone. A caller near "
            "100 % would mean the load tool, not the element, is the limit.",
            "",
        ]
        if "capacity" in images:
            out += [f"![capacity]({images['capacity']})", ""]
        if "setup" in images:
            out += [f"![setup time against load]({images['setup']})", ""]
        out += ["### Failed calls and their causes", "", *_causes_section(results)]
    take = results.get("takeover")
    if take:
        out += [
            "## Takeover",
            "",
            "twinline with 2 application servers and redundancy on carries N established "
            "calls (held, through both servers); application server as1 is killed with "
            "`kill -9`; the figure is the time from the kill to the switch's record of the "
            "last of as1's calls re-owned by its standby (`twinline status --json`: "
            "`takeovers[].completed_at`). *Noticed* is the kill to the switch's "
            "`started_at` (the call tracking link closing).",
            "",
            "| established calls | takeover (median) | runs | noticed after | calls re-owned "
            "| live calls before → after |",
            "|---|---|---|---|---|---|",
        ]
        out += _takeover_rows(take, "")
        prepaid = take.get("prepaid") or {}
        out += _takeover_rows(prepaid, " prepaid")
        out += _takeover_rows(take.get("postgres") or {}, " on PostgreSQL")
        out.append("")
        if prepaid.get("summary"):
            out += [
                "*Prepaid* rows: the same with every call prepaid (each holds a reservation on "
                "an account, its standby the service's grant and credit timer).",
                "",
            ]
        if "takeover" in images:
            out += [f"![takeover time]({images['takeover']})", ""]
    mem = results.get("memory")
    if mem:
        out += [
            "## Memory per established call",
            "",
            "The resident set size (RSS) of all the element's processes added up, idle and "
            "with N calls established and held; per call = the difference / N. twinline's "
            "processes: the `twinline up` supervisor, the switch and both application servers. "
            "PSS (proportional set size) counts a page shared by several processes once: it "
            "differs from RSS for Kamailio, whose workers share one memory segment. Kamailio "
            "without the dialog module keeps no dialog state; what it holds is the calls' "
            "transactions for a few seconds after they end, and memory its allocator touched.",
            "",
            "| element | calls | processes | RSS idle → loaded | per call (RSS) | per call (PSS) |",
            "|---|---|---|---|---|---|",
        ]
        for key in KINDS:
            r = mem.get(key)
            if not r:
                continue
            if "error" in r:
                out.append(f"| {label(key)} | {r['calls']:,} | failed: {r['error'][:120]} | | | |")
                continue
            out.append(
                f"| {label(key)} | {r['calls']:,} | {r['processes']} "
                f"| {r['idle_bytes'] >> 20} → {r['loaded_bytes'] >> 20} MiB "
                f"| **{_kib(r['per_call_bytes'])}** | {_kib(r.get('per_call_pss_bytes'))} |"
            )
        out.append("")
        if "memory" in images:
            out += [f"![memory per call]({images['memory']})", ""]
    rates = results.get("ramp_rates", {})
    used = set(results.get("memory", {})) | ({"twinline"} if results.get("takeover") else set())
    out += [
        "## How it is measured",
        "",
        "- **Load**: SIPp (`sip-tester`) on 127.0.0.1 over UDP, one caller process and one "
        "callee process per step. The callee is the same for every element: "
        "`bench/scenarios/uas.xml`, SIPp's built-in `uas` with its Contact's `transport=UDP` "
        "written `transport=udp` (Sippy B2BUA cannot send a BYE to the upper-case form). "
        f"Each call is held {prof.get('hold_ms', 0) / 1000:g} s.",
        "- **Elements**: twinline (`twinline up`, a switch and 2 application servers, SQLite, "
        "log level warning; redundancy off with `[cluster] redundancy = false`; *prepaid*: "
        "every call through the prepaid service, from 1,000 callers in turn (SIPp's `-inf`), "
        "each paying with an account of its own filled before the run, so each call makes a "
        "reservation at the offer and a debit at the end and its CDR carries the cost; "
        "*on PostgreSQL*: the same with a PostgreSQL the harness starts, fsync off as in the "
        "tests); Sippy B2BUA "
        "(`b2bua_simple -n` to the callee, SIP logging off, its own virtual environment); "
        "Kamailio (`bench/kamailio/kamailio.cfg`: tm, sl, rr, maxfwd, `t_relay` to the callee, "
        "`children=1`, errors-only logging); SIPp calling SIPp directly.",
        "- **A step** passes when every call succeeded at the caller and the callee, the "
        "99th percentile of setup time (SIPp `-trace_rtt`, every call's INVITE-to-200 "
        f"time) is under {prof.get('p99_limit_ms'):g} ms, and the caller kept at least 95 % "
        "of the rate. A search step stops at its first failed call.",
        f"- **The search** (bench/capacity.py), the same for every element: short steps of "
        f"{prof.get('probe_s'):g} s from {prof.get('start_rate'):g} calls/s, doubling while "
        "they pass and stepping down while they fail (x 0.5 when calls failed or setup "
        "took over a second, x 0.75 when a few failed, x 0.9 when p99 was just over); "
        f"bisection to {100 * prof.get('resolution', 0):.0f} %; then the best rate must pass "
        f"a {prof.get('confirm_s'):g} s step, and a failed one steps down the same way (at "
        f"most {prof.get('confirm_attempts')} tries): short steps flatter an element whose "
        "queues grow slowly. Round 2 starts from round 1's figure and looks at most 15 % "
        "higher; the strict search never goes above the same round's throughput figure (a "
        "step the strict caller passes, the throughput caller passes too) and in round 1 "
        f"starts from it. Ceiling {prof.get('max_rate'):g}/s.",
        "- **Hygiene**: SIPp sockets get 1 MiB buffers (`-buff_size 1048576`; Kamailio "
        f"`maxbuffer` the same); between steps at least {prof.get('pause_s'):g} s and until "
        "the element is idle (under 10 % of a core); a fresh element for every search and "
        "again after every failed step; each element measured in every round, the rounds "
        "in interleaved order (round 1 in the table's order, round 2 reversed), the median "
        "reported; the callers' CPU is reported beside every figure.",
        "- **Takeover and memory**: calls set up at "
        + ", ".join(f"{label(k)} {r:g}/s" for k, r in rates.items() if k in used)
        + " (at most 70 % of the element's throughput capacity) with the throughput caller, "
        f"held up to {prof.get('long_hold_s')} s.",
        "- Every step's files (SIPp statistics, error files, response times, the element's "
        "log and configuration) are under `bench/out/` (not in git); `results.json` there "
        "holds every figure on this page, and `python -m bench --report-only` rewrites the "
        "page from it.",
        "",
        NOTES_START,
    ]
    return "\n".join(out) + "\n"


def write(results: dict[str, Any], doc: Path = DOC) -> None:
    images = plots(results, doc.parent / "benchmarks")
    notes = _notes(doc)
    doc.write_text(markdown(results, images) + notes + NOTES_END + "\n")
