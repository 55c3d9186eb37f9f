"""A federated query's plan: what each source runs, what DuckDB runs, and what moved."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from sqlglot import exp

from fabric.model import CatalogSnapshot
from fabric.query.compiler import CompiledStatement

DUCKDB_PART = "duckdb"
"""The name of the remainder's part in a plan and its EXPLAIN."""


@dataclass(frozen=True, slots=True)
class SourceSide:
    """One connection a federated query reads, as the planner sees it."""

    connection: str
    catalog: CatalogSnapshot
    dialect: str
    param_style: object
    """The connector's `ParamStyle` (kept untyped here: the planner only hands it on)."""
    filters: bool
    joins: bool
    aggregates: bool
    subqueries: bool
    max_parameters: int


@dataclass(slots=True)
class Fragment:
    """A statement sent to one source; DuckDB reads its rows as the view `name`."""

    name: str
    connection: str
    entities: tuple[str, ...]
    tree: exp.Query
    """The fragment in Fabric SQL (entity names, `:name` parameters): recompiled with a
    dynamic filter added."""
    compiled: CompiledStatement
    columns: tuple[str, ...]
    """Output column names, in order."""
    accepted: tuple[str, ...]
    """What the source was given beyond a scan (filters, joins, aggregates, a subquery)."""
    remaining: tuple[str, ...]
    """What the source could have done but the engine keeps (and why)."""
    has_filter: bool
    variants: dict[int, CompiledStatement] = field(default_factory=dict)
    """The fragment compiled with a dynamic filter of N keys, by N."""
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True, slots=True)
class DynamicFilter:
    """Run `probe` first; when it has few rows, `target` reads only the rows whose
    `target_column` is one of the probe's `probe_column` values (a bound IN list)."""

    probe: str
    probe_column: str
    target: str
    target_column: exp.Column
    """The join key in the target fragment's own tree (alias.column)."""


@dataclass(frozen=True, slots=True)
class FederatedPlan:
    fragments: tuple[Fragment, ...]
    remainder: str
    """DuckDB SQL over the fragments' views, `$name` parameters."""
    remainder_params: tuple[str, ...]
    remaining: tuple[str, ...]
    """What DuckDB does (joins across sources, aggregates over them, ...)."""
    dynamic_filters: tuple[DynamicFilter, ...]
    param_names: tuple[str, ...]
    """Every parameter the query takes (sorted, unique)."""
    connections: tuple[str, ...]
    row_limit: int
    max_rows: int
    output_columns: int
    fingerprint: str

    def fragment(self, name: str) -> Fragment:
        for fragment in self.fragments:
            if fragment.name == name:
                return fragment
        raise KeyError(name)


@dataclass(slots=True)
class PartStats:
    """What one part of a run moved: rows and Arrow bytes."""

    rows: int = 0
    bytes: int = 0
    sql: str = ""
    """The statement the part ran (a dynamic filter changes a fragment's)."""
    dynamic_filter: str = ""
    """`applied (N keys)`, `skipped (probe over K rows)`, or empty."""
