"""`fabric query` and `fabric preview`: one result, streamed to the terminal or a pipe."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from fabric.client import FabricClient, ResultStream
from fabric.terminal.arguments import parse_param, read_sql
from fabric.terminal.output import Display, Outcome, TableSource, print_stream

__all__ = ["display_for", "run_preview", "run_query", "summary_line"]


def display_for(args: argparse.Namespace) -> Display:
    return Display(fmt=args.format, terminal_rows=args.terminal_rows, pager=not args.no_pager)


def summary_line(outcome: Outcome, display: Display, max_rows: int | None = None) -> str:
    """`-- 3 rows, from cache, 1.2 ms in the gateway, 0.01 s in all` and what was cut."""
    parts = [f"{outcome.rows:,} row{'s' if outcome.rows != 1 else ''}"]
    summary = outcome.summary
    if outcome.cut:
        parts[0] = f"showing the first {outcome.rows:,} rows; there are more"
    elif summary is not None and summary.truncated:
        limit = f" at --max-rows {max_rows}" if max_rows else " at the gateway's row limit"
        parts.append(f"truncated{limit}")
    if summary is not None and summary.from_cache:
        parts.append("from cache")
    if summary is not None:
        parts.append(f"{summary.elapsed_us / 1000:.1f} ms in the gateway")
    parts.append(f"{outcome.seconds:.2f} s in all")
    line = "-- " + ", ".join(parts)
    if outcome.cut:
        line += (
            "\n-- the terminal shows at most "
            f"{display.row_cap:,} rows: --terminal-rows 0 shows all; output to a file or "
            "a pipe is never cut"
        )
    return line


def explain_text(plan: Any) -> str:
    """An `ExplainResponse` as text: one block per part."""
    lines = [f"-- {'federated' if plan.federated else 'single source'} plan"]
    for part in plan.parts:
        where = f"source {part.connection}" if part.connection else "DuckDB"
        lines.append(f"== {part.name} ({where})")
        lines.append(part.sql)
        if part.accepted:
            lines.append(f"   does: {'; '.join(part.accepted)}")
        if part.remaining:
            lines.append(f"   leaves: {'; '.join(part.remaining)}")
        if part.dynamic_filter:
            lines.append(f"   dynamic filter: {part.dynamic_filter}")
        if part.HasField("rows"):
            lines.append(f"   moved: {part.rows:,} rows, {part.bytes:,} bytes")
    return "\n".join(lines)


def run_query(args: argparse.Namespace, client: FabricClient, stdin: TextIO | None = None) -> int:
    sql = read_sql(args.sql, args.file, stdin)
    params = dict(parse_param(p) for p in args.param or [])
    explain = getattr(args, "explain", None)
    if explain:
        plan = client.explain(args.connection, sql, params, analyze=explain == "analyze")
        print(explain_text(plan))
        return 0
    display = display_for(args)
    max_rows = display.request_rows(args.max_rows)

    def open_stream() -> ResultStream:
        return client.stream(
            args.connection,
            sql,
            params,
            args.cache_ttl,
            max_rows,
            max_bytes=getattr(args, "max_bytes", None),
        )

    outcome = print_stream(open_stream, display)
    print(summary_line(outcome, display, args.max_rows), file=sys.stderr)
    return 0


def run_preview(args: argparse.Namespace, client: FabricClient) -> int:
    display = display_for(args)
    outcome = print_stream(
        lambda: TableSource(client.preview(args.connection, args.entity, args.limit)), display
    )
    print(summary_line(outcome, display), file=sys.stderr)
    return 0
