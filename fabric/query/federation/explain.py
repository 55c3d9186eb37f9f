"""EXPLAIN: what each part of a query runs, and (after a run) what it moved."""

from __future__ import annotations

from dataclasses import dataclass

from fabric.query.compiler import CompiledStatement
from fabric.query.federation.plan import DUCKDB_PART, FederatedPlan
from fabric.query.federation.runner import FederatedRun


@dataclass(frozen=True, slots=True)
class ExplainedPart:
    name: str
    """`duckdb` for the remainder; a source statement's view name otherwise."""
    connection: str
    """The source's connection; empty for DuckDB."""
    sql: str
    """The statement as sent (the source's dialect and placeholders, parameters bound
    apart), or the DuckDB remainder."""
    accepted: tuple[str, ...]
    """What the part was given to do (filters, joins, aggregates, a whole subquery)."""
    remaining: tuple[str, ...]
    """What stayed with the engine."""
    rows: int | None = None
    """Rows the part moved (after a run; None before)."""
    bytes: int | None = None
    """Arrow bytes the part moved (after a run; None before)."""
    dynamic_filter: str = ""


@dataclass(frozen=True, slots=True)
class Explanation:
    federated: bool
    parts: tuple[ExplainedPart, ...]
    analyzed: bool


def explain_single(
    connection: str, compiled: CompiledStatement, moved: tuple[int, int] | None
) -> Explanation:
    rows, nbytes = moved if moved is not None else (None, None)
    part = ExplainedPart(
        name=connection,
        connection=connection,
        sql=compiled.sql,
        accepted=("the whole query",),
        remaining=(),
        rows=rows,
        bytes=nbytes,
    )
    return Explanation(False, (part,), moved is not None)


def explain_plan(
    plan: FederatedPlan, run: FederatedRun | None, moved: tuple[int, int] | None
) -> Explanation:
    parts = []
    for fragment in plan.fragments:
        stats = run.stats.get(fragment.name) if run is not None else None
        parts.append(
            ExplainedPart(
                name=fragment.name.strip("_"),
                connection=fragment.connection,
                sql=stats.sql if stats is not None else fragment.compiled.sql,
                accepted=fragment.accepted,
                remaining=fragment.remaining,
                rows=stats.rows if stats is not None else None,
                bytes=stats.bytes if stats is not None else None,
                dynamic_filter=stats.dynamic_filter
                if stats is not None
                else _planned(plan, fragment.name),
            )
        )
    stats = run.stats.get(DUCKDB_PART) if run is not None else None
    parts.append(
        ExplainedPart(
            name=DUCKDB_PART,
            connection="",
            sql=plan.remainder,
            accepted=plan.remaining,
            remaining=(),
            rows=stats.rows if stats is not None else None,
            bytes=stats.bytes if stats is not None else None,
        )
    )
    return Explanation(True, tuple(parts), run is not None)


def _planned(plan: FederatedPlan, name: str) -> str:
    for df in plan.dynamic_filters:
        if df.target == name:
            return f"planned: keys of {df.probe.strip('_')}.{df.probe_column}"
        if df.probe == name:
            return "probe: read first"
    return ""
