"""Writing the results: `latest.json` (every sample), `latest.md` (the README's table) and
`latest.png` (each scenario's ratio against its target)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MIB = 1 << 20


def fmt_seconds(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


def _ratio(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}x"


def _cells(s: dict[str, Any]) -> tuple[str, str, str]:
    """(Fabric, anchor, ratio) cells of one scenario."""
    n, f, a = s["number"], s.get("fabric", {}), s.get("anchors", {})
    if n == 1:
        r = s["ratios"]
        return (
            fmt_seconds(f["median"]),
            f"psql \\copy floor {fmt_seconds(a['psql_copy_floor']['median'])}; "
            f"ADBC {fmt_seconds(a['adbc_direct']['median'])}",
            f"{_ratio(r['vs_floor'])} floor; {_ratio(r['vs_adbc'])} ADBC",
        )
    if n == 9:
        r, p = s["ratios"], s["point_query"]
        return (
            f"{fmt_seconds(f['median'])}; point p50 {fmt_seconds(p['flight_sql']['median'])}",
            f"psql \\copy floor {fmt_seconds(a['psql_copy_floor']['median'])}; Execute "
            f"{fmt_seconds(a['execute']['median'])}; ADBC {fmt_seconds(a['adbc_direct']['median'])}"
            f"; Execute point p50 {fmt_seconds(p['execute']['median'])}",
            f"{_ratio(r['vs_floor'])} floor; {_ratio(r['vs_execute'])} Execute; "
            f"{_ratio(r['vs_adbc'])} ADBC; point {_ratio(r['point_p50_flight_vs_execute'])}",
        )
    if n == 2:
        e = a["echo"]
        return (
            f"p50 {fmt_seconds(f['median'])}, p99 {fmt_seconds(f['p99'])}",
            f"echo p50 {fmt_seconds(e['median'])}, p99 {fmt_seconds(e['p99'])}",
            _ratio(s["ratio"]),
        )
    if n == 3:
        d, e = a["direct_psycopg_prepared"], a["echo"]
        return (
            f"p50 {fmt_seconds(f['median'])}",
            f"psycopg prepared {fmt_seconds(d['median'])} + echo {fmt_seconds(e['median'])}",
            _ratio(s["ratio"]),
        )
    if n == 4:
        return (
            f"{f['median']:,.0f} req/s, {f['errors']} errors",
            f"echo {a['echo']['median']:,.0f} req/s",
            _ratio(s["ratio"]),
        )
    if n == 5:
        return (
            f"hit {fmt_seconds(f['median'])}",
            f"first compile {fmt_seconds(a['first_compile']['median'])}",
            f"{s['ratio'] * 100:.3f}%",
        )
    if n == 6:
        return (
            f"+{f['median'] / MIB:,.0f} MiB RSS ({s['rows']:,} rows in "
            f"{fmt_seconds(f['seconds'])})",
            f"RSS before {a['rss_before']['median'] / MIB:,.0f} MiB",
            f"{s['ratio']:.2f} of budget",
        )
    if n == 7:
        c = s["counts"]
        parts = [f"{v} {k.replace('_', ' ')}" for k, v in sorted(c.items())]
        return (
            "geomean " + fmt_seconds(f.get("median")),
            "psycopg geomean "
            + fmt_seconds(a.get("direct_psycopg", {}).get("median"))
            + " ("
            + ", ".join(parts)
            + ")",
            _ratio(s["ratio"], 3),
        )
    if n == 10:
        c, moved = s["counts"], s["rows_moved"]
        parts = [f"{v} {k.replace('_', ' ')}" for k, v in sorted(c.items())]
        return (
            f"geomean {fmt_seconds(f.get('median'))}; sources moved {moved['sources']:,} rows "
            f"(perfect pushdown {moved['perfect_pushdown']:,})",
            "all-in-PostgreSQL psycopg geomean "
            + fmt_seconds(a.get("direct_psycopg_all_in_postgres", {}).get("median"))
            + " ("
            + ", ".join(parts)
            + ")",
            _ratio(s["ratio"], 3),
        )
    if n == 8:
        cpu, calls, r = f["cpu_ms_per_call"], f["calls_per_second"], s["ratios"]
        core = f["calls_per_second_servers_on_one_core"]["cached"]

        def ms(topology: str) -> str:
            return (
                f"{cpu['cached'][topology]['total']:.2f}/{cpu['point'][topology]['total']:.2f} ms"
            )

        def pair(ratios: dict[str, float]) -> str:
            return f"{_ratio(ratios['cached'])}/{_ratio(ratios['point'])}"

        return (
            f"CPU per call (cached/point): direct replica {ms('direct')}, through the "
            f"platform {ms('platform')}; cached calls/s with the servers on one core: direct "
            f"{core['direct']:,.0f}, through the platform {core['platform']:,.0f}; cached "
            f"calls/s, 1 replica {calls['one']['calls_per_second']:,.0f}, 2 replicas "
            f"{calls['two']['calls_per_second']:,.0f}",
            f"serve --role all {ms('all')}",
            f"direct/all {pair(r['direct_vs_all_cpu_per_call'])}; platform/all "
            f"{pair(r['platform_vs_all_cpu_per_call'])}; 2 vs 1 replica: "
            f"{_ratio(r['two_vs_one_replica_calls_per_second'])} calls/s, "
            f"{_ratio(r['two_vs_one_replica_calls_per_replica_cpu_second'])} per replica "
            "CPU-second",
        )
    return ("-", "-", _ratio(s.get("ratio")))


def _met(s: dict[str, Any], quick: bool) -> str:
    if s.get("error"):
        return "**error**"
    text = "yes" if s.get("met") else "**no**"
    return text + (" (not asserted)" if quick else "")


def markdown(run: dict[str, Any], stem: str = "latest") -> str:
    m, quick = run["machine"], run["quick"]
    lines = [
        "# Fabric benchmark results",
        "",
        f"`{run['command']}` on {m['date']}: TPC-H scale factor {run['scale']}"
        + (" (**quick mode: a smoke test on small data; ratios not asserted**)" if quick else "")
        + ".",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, "
        f"{(m['memory_bytes'] or 0) / (1 << 30):.0f} GiB; Python {m['python']}; "
        f"PostgreSQL {m['postgresql_server']} on loopback; Fabric {m['fabric_commit']}.",
        "",
        "| # | scenario | Fabric | anchor (same run) | ratio | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in run["scenarios"]:
        if s.get("error") and "fabric" not in s:
            cells = (f"error: {s['error'][:120]}", "-", "-")
        else:
            try:
                cells = _cells(s)
            except (KeyError, TypeError) as exc:
                cells = (f"(incomplete: {exc})", "-", "-")
        tgt = " and ".join(t["text"] for t in s.get("targets", [s.get("target") or {}]) if t) or "-"
        lines.append(
            f"| {s['number']} | {s['name']} | {cells[0]} | {cells[1]} | {cells[2]} "
            f"| {tgt} | {_met(s, quick)} |"
        )
    extra = run["also"]
    lines += [
        "",
        "Also measured (no target yet): cold start of `fabric serve` to a SERVING health "
        f"check {', '.join(fmt_seconds(x) for x in extra['cold_start_seconds']) or '-'}; "
        "compiled-statement cache hit ratio over the run "
        + (
            f"{extra['compiled_statement_hit_ratio'] * 100:.1f}%"
            if extra.get("compiled_statement_hit_ratio") is not None
            else "-"
        )
        + f" ({extra.get('compiled_statement_hits', 0):,.0f} hits, "
        f"{extra.get('compiled_statement_misses', 0):,.0f} misses); result cache bytes held "
        + (
            f"{extra['result_cache_bytes']:,.0f}"
            if extra.get("result_cache_bytes") is not None
            else "-"
        )
        + f" in {extra.get('result_cache_entries', 0):,.0f} entries (from the gateway's "
        "Prometheus endpoint at the end of the run).",
    ]
    tpch = next((s for s in run["scenarios"] if s["number"] == 7 and "queries" in s), None)
    if tpch:
        lines += [
            "",
            "<details><summary>TPC-H per query</summary>",
            "",
            "| query | status | rows | direct (psycopg) | Fabric | ratio |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for q in tpch["queries"]:
            if q["status"] == "ok":
                lines.append(
                    f"| {q['query']} | ok | {q['rows']} | "
                    f"{fmt_seconds(q['direct']['median'])} | "
                    f"{fmt_seconds(q['fabric']['median'])} | {_ratio(q['ratio'], 3)} |"
                )
            else:
                reason = str(q.get("reason", "")).replace("|", "\\|").replace("\n", " ")
                lines.append(
                    f"| {q['query']} | {q['status'].replace('_', ' ')} | - | - | - | "
                    f"{reason[:160]} |"
                )
        lines += ["", "</details>"]
    lines += federation_details(run)
    lines += [
        "",
        "Medians of repeated runs after a warm-up; every sample is in "
        f"`benchmarks/results/{stem}.json`. Targets are set in `benchmarks/scenarios.py` "
        "and are never loosened; a missed target says **no**.",
        "",
    ]
    return "\n".join(lines)


def _moved(rows: dict[str, int] | None) -> str:
    if not rows:
        return "-"
    return ", ".join(f"{source} {n:,}" for source, n in sorted(rows.items()))


def federation_details(run: dict[str, Any]) -> list[str]:
    """Scenario 10 per query: times, and the rows each source moved against the rows a
    perfect pushdown would move (benchmarks/tpch_pushdown.py says how that is counted)."""
    fed = next((s for s in run["scenarios"] if s["number"] == 10 and "queries" in s), None)
    if not fed:
        return []
    lines = [
        "",
        "<details><summary>Federated TPC-H per query (rows moved from the sources, from "
        "EXPLAIN ANALYZE, vs a perfect pushdown)</summary>",
        "",
        "| query | status | rows | all-in-PG direct | Fabric federated | ratio "
        "| rows moved | perfect pushdown |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for q in fed["queries"]:
        perfect = _moved(q.get("perfect_rows"))
        if q["status"] == "ok":
            lines.append(
                f"| {q['query']} | ok | {q['rows']} | {fmt_seconds(q['direct']['median'])} | "
                f"{fmt_seconds(q['fabric']['median'])} | {_ratio(q['ratio'], 3)} | "
                f"{_moved(q.get('moved_rows'))} | {perfect} |"
            )
        else:
            reason = str(q.get("reason", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {q['query']} | {q['status'].replace('_', ' ')} | - | - | - | "
                f"{reason[:160]} | - | {perfect} |"
            )
    return [*lines, "", "</details>"]


def _score(s: dict[str, Any]) -> float | None:
    """The scenario's figure against its target, oriented so that <= 1 means met."""
    ratio = s.get("ratio")
    if not isinstance(ratio, (int, float)) or math.isnan(ratio):
        return None
    if s["number"] == 1:
        r = s["ratios"]
        return float(max(r["vs_floor"] / 1.25, r["vs_adbc"] / 1.0))
    if s["number"] == 9:
        r = s["ratios"]
        return float(max(r["vs_floor"] / 1.15, r["vs_execute"] / 1.0))
    if s["number"] == 6:
        return float(ratio)  # already growth / budget
    t = s["target"]
    if t["op"] == ">=":
        return t["value"] / ratio if ratio > 0 else math.inf
    return float(ratio / t["value"])


def plot(run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(s, _score(s)) for s in run["scenarios"]]
    rows = [(s, v) for s, v in rows if v is not None and math.isfinite(v) and v > 0]
    fig, ax = plt.subplots(figsize=(10, 0.75 * max(3, len(rows)) + 1.4))
    labels = []
    for s, _ in rows:
        tgt = " and ".join(t["text"] for t in s.get("targets", [s["target"]]))
        labels.append(f"{s['number']}. {s['name'][:48]}\ntarget: {tgt[:60]}")
    values = [v for _, v in rows]
    colors = ["#2e7d32" if s.get("met") else "#c62828" for s, _ in rows]
    y = list(range(len(rows)))[::-1]
    lo = min([*values, 0.5]) / 3
    hi = max([*values, 2.0]) * 6
    ax.barh(y, [v - lo for v in values], left=lo, color=colors, height=0.6)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels, fontsize=7.5)
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("figure / target, oriented so that left of the dashed line = met (log scale)")
    for yi, (s, v) in zip(y, rows, strict=True):
        if s["number"] == 5:
            text = f"hit = {s['ratio'] * 100:.3f}% of a miss"
        elif s["number"] == 6:
            text = f"+{s['fabric']['median'] / MIB:,.0f} MiB"
        elif s["number"] == 1:
            text = f"{s['ratios']['vs_floor']:.2f}x floor, {s['ratios']['vs_adbc']:.2f}x ADBC"
        else:
            text = f"{s['ratio']:.2f}x"
        ax.text(v * 1.08, yi, text, va="center", fontsize=8)
    mode = "quick mode, not asserted" if run["quick"] else "full run"
    ax.set_title(
        f"Fabric vs anchors measured in the same run: TPC-H SF{run['scale']} "
        f"({mode}), {run['machine']['date'][:10]}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(run: dict[str, Any], directory: Path, stem: str = "latest") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.json", directory / f"{stem}.md", directory / f"{stem}.png"]
    paths[0].write_text(json.dumps(run, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(run, stem))
    try:
        plot(run, paths[2])
    except ImportError:
        paths.pop()
    return paths
