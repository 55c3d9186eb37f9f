"""The engine's door to federation: read a query's connections, plan it (cached per
text and catalog versions), and give the engine a source and a statement it runs like
any other."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cachetools import LRUCache
from sqlglot import exp

from connectors import registry
from fabric.config import Settings
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot
from fabric.query.compiler import CompiledStatement, QueryLimits, StatementCompiler
from fabric.query.compiler.bounds import check_sizes
from fabric.query.compiler.guard import check_structure
from fabric.query.compiler.reader import QueryReader
from fabric.query.compiler.statement_compiler import fold_unquoted_names
from fabric.query.federation.naming import qualify_connections, strip_connection
from fabric.query.federation.plan import FederatedPlan, SourceSide
from fabric.query.federation.planner import FederationPlanner, fabric_sql
from fabric.query.federation.runner import DuckDBLimits, FederatedSource
from fabric.query.sources import BoundSource
from fabric.results.cache import COMPOSITE_SEPARATOR


@dataclass(frozen=True, slots=True)
class Route:
    connections: tuple[str, ...]
    """The connections the query names, sorted."""
    single: tuple[str, str] | None
    """(connection, text without qualifiers) when it names one."""


def _plan_key(
    tenant: str,
    stage: str,
    sql: str,
    default: str,
    sources: Mapping[str, BoundSource],
    max_rows: int,
) -> tuple[object, ...]:
    versions = tuple((name, sources[name].catalog.version) for name in sorted(sources))
    return (tenant, stage, sql, default, max_rows, versions)


FRAGMENT_LIMIT_FACTOR = 64
"""A fragment (and a dynamic filter's IN list) may be this many times longer than a
query: the caller's text passed the ordinary limits already."""


class Federation:
    def __init__(
        self, limits: QueryLimits, settings: Settings, entries: int, *, spill_root: Path
    ) -> None:
        self.reader = QueryReader(limits)
        self.limits = limits
        relaxed = replace(
            limits,
            max_length=limits.max_length * FRAGMENT_LIMIT_FACTOR,
            max_tokens=limits.max_tokens * FRAGMENT_LIMIT_FACTOR,
            max_parts=limits.max_parts * FRAGMENT_LIMIT_FACTOR,
        )
        self.planner = FederationPlanner(StatementCompiler(relaxed))
        self.duckdb = DuckDBLimits(
            memory=settings.federation_memory,
            threads=settings.federation_threads,
            temp_root=spill_root,
            dynamic_filter_rows=settings.federation_dynamic_filter_rows,
        )
        self._lock = threading.Lock()
        self._routes: LRUCache[tuple[str, str], Route] = LRUCache(entries)
        self._plans: LRUCache[tuple[object, ...], FederatedPlan] = LRUCache(entries)

    def read(self, sql: str, default: str) -> tuple[exp.Query, set[str]]:
        """The query's tree (each table qualified by its connection) and the
        connections it names."""
        tokens = self.reader.tokenize(sql)
        tree = self.reader.parse(sql, tokens)
        if not isinstance(tree, exp.Query):
            raise QueryRejected("only a SELECT query may be run")
        fold_unquoted_names(tree)
        return tree, qualify_connections(tree, default)

    def routed(self, sql: str, default: str) -> Route | None:
        """The route of a text seen before (no parsing; safe on the event loop)."""
        with self._lock:
            return self._routes.get((default, sql))

    def route(self, sql: str, default: str) -> Route:
        """Where a query goes: one connection (the text without connection qualifiers,
        for the single-source path) or several. Remembered per (default, text)."""
        found = self.routed(sql, default)
        if found is not None:
            return found
        tree, connections = self.read(sql, default)
        if not connections:
            raise QueryRejected("the query reads no entity; name connection.entity")
        single: tuple[str, str] | None = None
        if len(connections) == 1:
            (connection,) = connections
            strip_connection(tree, connection)
            single = (connection, fabric_sql(tree))
        route = Route(tuple(sorted(connections)), single)
        with self._lock:
            self._routes[(default, sql)] = route
        return route

    def sides(self, sources: Mapping[str, BoundSource]) -> dict[str, SourceSide]:
        sides = {}
        for name, bound in sources.items():
            pushdown = registry.get(bound.connection.kind).pushdown
            sides[name] = SourceSide(
                connection=name,
                catalog=bound.catalog,
                dialect=bound.connector.dialect,
                param_style=bound.connector.param_style,
                filters=pushdown.filters,
                joins=pushdown.joins,
                aggregates=pushdown.aggregates,
                subqueries=pushdown.subqueries and pushdown.aggregates,
                max_parameters=pushdown.max_parameters,
            )
        return sides

    def plan(
        self,
        tenant: str,
        stage: str,
        sql: str,
        default: str,
        sources: Mapping[str, BoundSource],
        max_rows: int,
    ) -> FederatedPlan:
        """The plan (blocking: a worker thread's call on a miss)."""
        found = self.planned(tenant, stage, sql, default, sources, max_rows)
        if found is not None:
            return found
        key = _plan_key(tenant, stage, sql, default, sources, max_rows)
        tree, _ = self.read(sql, default)
        for bound in sources.values():
            check_structure(tree, bound.catalog)
        # What stays with DuckDB is bounded as a DuckDB source's query would be.
        check_sizes(tree, "duckdb", self.limits.max_type_length)
        plan = self.planner.plan(tree, self.sides(sources), max_rows=max_rows)
        with self._lock:
            self._plans[key] = plan
        return plan

    def planned(
        self,
        tenant: str,
        stage: str,
        sql: str,
        default: str,
        sources: Mapping[str, BoundSource],
        max_rows: int,
    ) -> FederatedPlan | None:
        """The plan made before for these catalog versions (no I/O, no parsing)."""
        key = _plan_key(tenant, stage, sql, default, sources, max_rows)
        with self._lock:
            return self._plans.get(key)

    def purge(self, tenant: str, connection: str) -> int:
        """Forget the plans that read `connection` (they hold its physical names)."""
        with self._lock:
            doomed = []
            for key in self._plans:
                versions = key[-1]
                if key[0] != tenant or not isinstance(versions, tuple):
                    continue
                if any(pair[0] == connection for pair in versions):
                    doomed.append(key)
            for key in doomed:
                del self._plans[key]
        return len(doomed)

    def bind(
        self, tenant: str, stage: str, plan: FederatedPlan, sources: Mapping[str, BoundSource]
    ) -> tuple[BoundSource, CompiledStatement]:
        """A source and statement the engine runs like a single source's: the source is
        the plan's run (`FederatedSource`), its catalog version the sum of the sources'
        (each only grows), its connection the sources' names joined (result keys and
        purges match each of them)."""
        names = sorted(sources)
        primary = sources[names[0]]
        catalog = CatalogSnapshot(
            tenant,
            COMPOSITE_SEPARATOR.join(names),
            sum(sources[name].catalog.version for name in names),
            {},
            stage,
        )
        connector = FederatedSource(
            plan,
            {name: bound.connector for name, bound in sources.items()},
            self.sides(sources),
            self.planner,
            self.duckdb,
        )
        bound = BoundSource(primary.connection, catalog, connector, stage, primary.identity)
        entities = sorted(
            {
                f"{fragment.connection}.{entity}"
                for fragment in plan.fragments
                for entity in fragment.entities
            }
        )
        compiled = CompiledStatement(
            sql=plan.remainder,
            param_names=plan.param_names,
            row_limit=plan.row_limit,
            row_bound=plan.row_limit,
            max_rows=plan.max_rows,
            entities=tuple(entities),
            reads=(),
            fingerprint=plan.fingerprint,
            row_parts=max(1, plan.output_columns),
        )
        return bound, compiled


def source_reads(plan: FederatedPlan, connection: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The columns the plan reads of one connection, per entity (for revocation)."""
    reads: dict[str, set[str]] = {}
    for fragment in plan.fragments:
        if fragment.connection != connection:
            continue
        for entity, columns in fragment.compiled.reads:
            reads.setdefault(entity, set()).update(columns)
    return tuple((entity, tuple(sorted(columns))) for entity, columns in sorted(reads.items()))
