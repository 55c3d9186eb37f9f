"""Split a query over several connections into statements each source runs and the
remainder DuckDB runs over their rows.

The planner works on the sqlglot tree after every name is resolved (sqlglot's `qualify`
against the selected columns of each connection: every column names its table's alias,
every output has a name), one query level (scope) at a time, outermost first:

- a level whose tables all belong to one connection and that refers to nothing outside
  itself (a derived table, a CTE body, an IN or scalar subquery) is sent whole to that
  source, when it may run subqueries: joins, filters, aggregates, its own LIMIT;
- otherwise each of its tables is read by a statement of its own source that selects the
  columns the query uses, with the WHERE conditions (and inner-join conditions) that
  mention that source's tables only; tables of one source linked by such conditions are
  joined there, in one statement (when the source may join and filter). A condition on
  the nullable side of a LEFT JOIN goes with that table only from its own ON clause; a
  level with a RIGHT or FULL join keeps every condition in DuckDB.
- what stays (joins across sources, conditions mixing them, aggregates over them, ORDER
  BY, LIMIT) runs in DuckDB over the statements' rows.

Every statement sent to a source is compiled by the ordinary `StatementCompiler` against
that connection's catalog: the same allow-lists and fail-closed checks as a query of
that connection alone. The DuckDB remainder reads only those statements' columns.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.schema import MappingSchema

from connectors.base import ParamStyle
from fabric.errors import QueryRejected
from fabric.query.compiler import CompiledStatement, StatementCompiler
from fabric.query.compiler.guard import check_dialect_functions
from fabric.query.compiler.reader import without_literals
from fabric.query.compiler.rows import apply_row_limit
from fabric.query.federation.plan import (
    DynamicFilter,
    FederatedPlan,
    Fragment,
    SourceSide,
)

FRAGMENT_ROWS = 1 << 62
"""The row cap a fragment is compiled with: a fragment's rows feed DuckDB, which the
engine's row cap then bounds; a fragment cut short would change the result."""
DYNAMIC_PREFIX = "fabric_dyn_"
PADDED_CHAR_DIALECTS = frozenset({"postgres", "tsql"})
"""Sources that return CHAR(n) values with their trailing blanks (MySQL and MariaDB
strip them; DuckDB has no CHAR)."""
_CHAR_TYPE = re.compile(r"^(character|char|bpchar|nchar)(\s*\(\s*\d+\s*\))?$")
"""Names of the parameters a dynamic filter binds."""


def fabric_sql(tree: exp.Expr) -> str:
    """Fabric SQL as text: PostgreSQL with `:name` parameters (what the compiler reads);
    a parameter's name is a plain word (checked by the structure check)."""
    copy = tree.copy()
    rebuilt: set[tuple[int, str]] = set()
    for placeholder in list(copy.find_all(exp.Placeholder)):
        parent, key = placeholder.parent, placeholder.arg_key
        siblings = parent.args.get(key) if parent is not None and key is not None else None
        if parent is not None and key is not None and isinstance(siblings, list):
            # An IN list of parameters is rebuilt once (replacing its elements one by
            # one is quadratic in its length: a dynamic filter's list is long).
            if (id(parent), key) not in rebuilt:
                rebuilt.add((id(parent), key))
                parent.set(key, [_as_text(node) for node in siblings])
        else:
            placeholder.replace(_as_text(placeholder))
    return copy.sql(dialect="postgres")


def _exists_reads_nothing(tree: exp.Expr) -> None:
    """`EXISTS (SELECT * ...)` selects `1` instead: only whether a row exists counts, so
    a source sends no column for it (not for an aggregate query, which always has a row)."""
    for exists in tree.find_all(exp.Exists):
        query = exists.this
        if not isinstance(query, exp.Select):
            continue
        if any(query.args.get(clause) is not None for clause in ("group", "having", "distinct")):
            continue
        if any(
            isinstance(e, exp.AggFunc | exp.Window) for p in query.expressions for e in p.walk()
        ):
            continue
        query.set("expressions", [exp.Literal.number(1)])


def _as_text(node: exp.Expr) -> exp.Expr:
    """A parameter as Fabric SQL writes it (`:name`); any other node as it is."""
    return exp.Var(this=f":{node.name}") if isinstance(node, exp.Placeholder) else node


@dataclass(slots=True)
class _Group:
    """Tables of one level read by one statement of one source."""

    connection: str
    aliases: list[str]
    conjuncts: list[exp.Expr] = field(default_factory=list)
    scope: Scope | None = None
    restrictions: int = 0
    """Conditions that filter rows (on one table, or with a subquery), join conditions
    apart: what makes the group a likely small side."""
    equalities: int = 0
    """Restrictions that pick values (`column = constant`, `column IN (constants)`): the
    likeliest to leave few rows."""
    name: str = ""
    alias: str = ""
    nullable: bool = False


@dataclass(slots=True)
class _Pushed:
    """A whole level sent to one source."""

    connection: str
    query: exp.Query
    name: str


class FederationPlanner:
    """Stateless after construction: one instance serves every thread."""

    def __init__(self, compiler: StatementCompiler) -> None:
        self.compiler = compiler

    def plan(
        self,
        tree: exp.Query,
        sources: Mapping[str, SourceSide],
        *,
        max_rows: int,
    ) -> FederatedPlan:
        """The plan of `tree` (parsed, structure-checked, every table qualified by its
        connection, names folded); QueryRejected when it cannot be planned."""
        return _Planning(self.compiler, tree, sources, max_rows).run()

    def compile_fragment(
        self, fragment: Fragment, side: SourceSide, tree: exp.Query
    ) -> CompiledStatement:
        return _compile(self.compiler, tree, side)


def _compile(compiler: StatementCompiler, tree: exp.Query, side: SourceSide) -> CompiledStatement:
    text = fabric_sql(_unqualified(tree))
    style = side.param_style
    assert isinstance(style, ParamStyle)
    return compiler.compile(
        text, side.catalog, dialect=side.dialect, param_style=style, max_rows=FRAGMENT_ROWS
    )


def _unqualified(tree: exp.Query) -> exp.Query:
    """A copy of `tree` with entity names as the compiler reads them (no connection)."""
    copy = tree.copy()
    for table in copy.find_all(exp.Table):
        table.set("db", None)
    return copy


def connection_of(table: exp.Table) -> str | None:
    db = table.args.get("db")
    return None if db is None else table.db


class _Planning:
    def __init__(
        self,
        compiler: StatementCompiler,
        tree: exp.Query,
        sources: Mapping[str, SourceSide],
        max_rows: int,
    ) -> None:
        self.compiler = compiler
        self.tree = tree
        self.sources = sources
        self.max_rows = max_rows
        self.pushed: list[_Pushed] = []
        self.groups: list[_Group] = []
        self.remaining: list[str] = []
        self.filters: list[tuple[_Group, tuple[str, str], _Group, exp.Column]] = []
        self.owner_of: dict[tuple[int, str], _Group] = {}
        self.correlated: set[int] = set()
        """Candidates (by their key column's id) into a correlated subquery's table."""
        self._names = 0

    def _fresh(self, prefix: str) -> str:
        self._names += 1
        return f"__{prefix}{self._names}"

    # -- names ----------------------------------------------------------------------------

    def _qualify(self) -> None:
        mapping: dict[str, object] = {}
        for table in self.tree.find_all(exp.Table):
            connection = connection_of(table)
            if connection is None:
                continue
            side = self.sources[connection]
            entity = side.catalog.entity(table.name)
            if entity is None:
                raise QueryRejected(
                    f"'{connection}.{table.name}' is not a selected entity of connection "
                    f"'{connection}'"
                )
            table.set("this", exp.to_identifier(entity.name, quoted=True))
            table.set("db", exp.to_identifier(connection, quoted=True))
            tables = mapping.setdefault(connection, {})
            assert isinstance(tables, dict)
            tables[entity.name] = {column.name: "TEXT" for column in entity.columns}
        schema = MappingSchema(mapping, dialect="postgres", normalize=False)
        try:
            qualified = qualify(
                self.tree,
                schema=schema,
                dialect="postgres",
                quote_identifiers=True,
                identify=True,
                validate_qualify_columns=True,
            )
            assert isinstance(qualified, exp.Query)
            self.tree = qualified
        except OptimizeError as error:
            raise QueryRejected(
                "a name could not be resolved among the selected columns of the entities "
                f"the query reads ({without_literals(str(error))}); check the entity and "
                "column names, and qualify a name several entities have"
            ) from None
        except SqlglotError:
            raise QueryRejected("the query could not be checked (unsupported construct)") from None

    # -- scopes ---------------------------------------------------------------------------

    def run(self) -> FederatedPlan:
        _exists_reads_nothing(self.tree)
        self._qualify()
        root = build_scope(self.tree)
        if root is None:
            raise QueryRejected("the query could not be checked (unsupported construct)")
        self.root = root
        self.scopes = list(root.traverse())
        self.column_scope: dict[int, Scope] = {}
        for scope in self.scopes:
            for column in scope.columns:
                self.column_scope[id(column)] = scope
        self.subtree: dict[int, set[int]] = {
            id(scope): {id(s) for s in scope.traverse()} for scope in self.scopes
        }
        self._visit(root)
        row_limit = apply_row_limit(self.tree, self.max_rows)
        fragments = self._fragments()
        return self._finish(fragments, row_limit)

    def _definer(self, scope: Scope, table: str) -> Scope | None:
        current: Scope | None = scope
        while current is not None:
            if table in current.selected_sources:
                return current
            current = current.parent
        return None

    def _children(self, scope: Scope) -> list[Scope]:
        return [
            *scope.cte_scopes,
            *scope.set_operation_scopes,
            *scope.derived_table_scopes,
            *scope.subquery_scopes,
        ]

    def _connections(self, scope: Scope) -> set[str]:
        found: set[str] = set()
        for inner in scope.traverse():
            for _, source in inner.selected_sources.values():
                if isinstance(source, exp.Table):
                    connection = connection_of(source)
                    if connection is not None:
                        found.add(connection)
        return found

    def _closed(self, scope: Scope) -> bool:
        """Whether every name in `scope`'s subtree is defined inside it (no correlation
        to an outer level, no CTE of an outer level)."""
        inside = self.subtree[id(scope)]
        for inner in scope.traverse():
            for _, source in inner.selected_sources.values():
                if isinstance(source, Scope) and id(source) not in inside:
                    return False
            for column in inner.columns:
                if not column.table:
                    continue
                definer = self._definer(inner, column.table)
                if definer is None or id(definer) not in inside:
                    return False
        return True

    def _visit(self, scope: Scope) -> None:
        connections = self._connections(scope)
        if (
            scope is not self.root
            and len(connections) == 1
            and self.sources[next(iter(connections))].subqueries
            and self._closed(scope)
        ):
            (connection,) = connections
            name = self._fresh("f")
            query = scope.expression
            assert isinstance(query, exp.Query)
            self.pushed.append(_Pushed(connection, query.copy(), name))
            query.replace(exp.select(exp.Star()).from_(exp.to_table(name, quoted=True)))
            return
        consumed: set[int] = set()
        if isinstance(scope.expression, exp.Select):
            consumed = self._plan_select(scope)
        for child in self._children(scope):
            if id(child) not in consumed:
                self._visit(child)

    # -- one level with several sources --------------------------------------------------

    def _plan_select(self, scope: Scope) -> set[int]:
        """Group the level's tables into statements per source and hand each the
        conditions it can run; returns the subquery scopes those conditions took along."""
        select = scope.expression
        assert isinstance(select, exp.Select)
        base: dict[str, str] = {}
        for alias, (_, source) in scope.selected_sources.items():
            if isinstance(source, exp.Table) and connection_of(source) is not None:
                base[alias] = str(connection_of(source))
        if not base:
            return set()
        joins: list[exp.Join] = list(select.args.get("joins") or [])
        sides = {str(join.side or "").upper() for join in joins}
        rigid = bool(sides & {"RIGHT", "FULL"})
        nullable: dict[str, exp.Join] = {}
        for join in joins:
            if str(join.side or "").upper() == "LEFT":
                target = join.this
                if isinstance(target, exp.Table) and target.alias_or_name in base:
                    nullable[target.alias_or_name] = join
        pool: list[exp.Expr] = []
        consumed: set[int] = set()
        if not rigid:
            where = select.args.get("where")
            if where is not None:
                pool.extend(_conjuncts(where.this))
                where.pop()
            for join in joins:
                on = join.args.get("on")
                if not join.side and on is not None:
                    pool.extend(_conjuncts(on))
                    on.pop()  # detached: a stale parent would keep it in the tree
        groups: dict[str, _Group] = {}
        parent: dict[str, str] = {alias: alias for alias in base}

        def find(alias: str) -> str:
            while parent[alias] != alias:
                alias = parent[alias]
            return alias

        implied: set[int] = set()
        for conjunct in list(pool):
            disjunction = conjunct.unnest() if isinstance(conjunct, exp.Paren) else conjunct
            if isinstance(disjunction, exp.Or):
                for derived in self._implied(scope, disjunction, base, set(nullable)):
                    implied.add(id(derived))
                    pool.append(derived)
        placed: list[tuple[exp.Expr, set[str]]] = []
        kept: list[exp.Expr] = []
        for conjunct in pool:
            refs = self._pushable(scope, conjunct, base, set(nullable))
            if refs is None and id(conjunct) in implied:
                continue
            if refs is None:
                kept.append(conjunct)
                continue
            connection = base[next(iter(refs))]
            side = self.sources[connection]
            if not side.filters or (len(refs) > 1 and not side.joins):
                kept.append(conjunct)
                continue
            placed.append((conjunct, refs))
            first, *others = sorted(refs)
            for other in others:
                parent[find(other)] = find(first)
        # Conditions on a LEFT JOIN's table from its own ON clause.
        on_pushed: dict[str, list[exp.Expr]] = {}
        if not rigid:
            for alias, join in nullable.items():
                on = join.args.get("on")
                if on is None or not self.sources[base[alias]].filters:
                    continue
                left: list[exp.Expr] = []
                for conjunct in _conjuncts(on):
                    refs = self._pushable(scope, conjunct, base, set(), subqueries=False)
                    if refs == {alias}:
                        on_pushed.setdefault(alias, []).append(conjunct)
                    else:
                        left.append(conjunct)
                on.pop()
                join.set("on", _and(left) if left else exp.true())
        order = [select.args["from_"].this] if select.args.get("from_") is not None else []
        order += [join.this for join in joins]
        position = {item.alias_or_name: index for index, item in enumerate(order)}
        for alias in sorted(base, key=lambda a: position.get(a, len(position))):
            root = find(alias)
            group = groups.get(root)
            if group is None:
                group = _Group(base[alias], [], scope=scope, nullable=alias in nullable)
                groups[root] = group
            group.aliases.append(alias)
        for conjunct, refs in placed:
            group = groups[find(next(iter(refs)))]
            group.conjuncts.append(conjunct)
            if len(refs) == 1 or any(conjunct.find_all(exp.Query)):
                group.restrictions += 1
                group.equalities += int(_picks_values(conjunct))
            for subquery in conjunct.find_all(exp.Query):
                for inner in self.scopes:
                    if inner.expression is subquery:
                        consumed |= self.subtree[id(inner)]
        for alias, conjuncts in on_pushed.items():
            groups[find(alias)].conjuncts.extend(conjuncts)
            groups[find(alias)].restrictions += len(conjuncts)
        if kept:
            select.where(_and(kept), copy=False)
        self.groups.extend(groups.values())
        for group in groups.values():
            for alias in group.aliases:
                self.owner_of[(id(scope), alias)] = group
        self._restructure(select, groups, base)
        self._dynamic_candidates(scope, kept, groups, base, set(nullable), rigid)
        if len({g.connection for g in groups.values()}) > 1 or any(
            not isinstance(s, exp.Table) for _, s in scope.selected_sources.values()
        ):
            self.remaining.append("joins across sources")
        if select.args.get("group") is not None or any(select.find_all(exp.AggFunc)):
            self.remaining.append("aggregates over rows of several sources")
        return consumed

    def _implied(
        self,
        scope: Scope,
        disjunction: exp.Or,
        base: Mapping[str, str],
        nullable: set[str],
    ) -> list[exp.Expr]:
        """Filters an OR of conditions implies on single tables: for a table that every
        branch restricts on its own, the OR of those restrictions (the OR itself stays
        with DuckDB; this only lets the source drop rows no branch can keep)."""
        branches = [b.unnest() if isinstance(b, exp.Paren) else b for b in disjunction.flatten()]
        derived: list[exp.Expr] = []
        for alias in base:
            if alias in nullable:
                continue
            parts: list[exp.Expr] = []
            for branch in branches:
                mine = [
                    c.copy()
                    for c in _conjuncts(branch)
                    if self._pushable(scope, c, base, nullable, subqueries=False) == {alias}
                ]
                if not mine:
                    break
                parts.append(exp.and_(*mine, copy=False))
            else:
                condition = exp.paren(exp.or_(*parts, copy=False), copy=False)
                for column in condition.find_all(exp.Column):
                    self.column_scope[id(column)] = scope  # a copy, read at this level
                derived.append(condition)
        return derived

    def _pushable(
        self,
        scope: Scope,
        conjunct: exp.Expr,
        base: Mapping[str, str],
        nullable: set[str],
        *,
        subqueries: bool = True,
    ) -> set[str] | None:
        """The base tables of `scope` a condition mentions, when it can run at their
        one source (no other level's or source's names, no table on a LEFT JOIN's nullable
        side); None otherwise."""
        refs: set[str] = set()
        connections: set[str] = set()
        inside = {id(conjunct)}
        for node in conjunct.walk():
            inside.add(id(node))
        # An aggregate of the level itself cannot be in WHERE or ON; one in a subquery
        # (a HAVING there) goes with the subquery.
        if any(
            isinstance(node, exp.AggFunc | exp.Window)
            for node in conjunct.walk(prune=lambda n: isinstance(n, exp.Query))
        ):
            return None
        for query in conjunct.find_all(exp.Query):
            if not subqueries:
                return None
            for table in query.find_all(exp.Table):
                connection = connection_of(table)
                if connection is None:
                    return None  # a CTE of the level around
                connections.add(connection)
        for column in conjunct.find_all(exp.Column):
            if not column.table:
                return None
            owner = self.column_scope.get(id(column))
            if owner is None:
                return None
            definer = self._definer(owner, column.table)
            if definer is scope:
                if column.table not in base or column.table in nullable:
                    return None
                refs.add(column.table)
                connections.add(base[column.table])
            elif definer is None or id(definer.expression) not in inside:
                return None
        if not refs or len(connections) != 1:
            return None
        (connection,) = connections
        side = self.sources[connection]
        if any(conjunct.find_all(exp.Query)) and not side.subqueries:
            return None
        try:
            check_dialect_functions(conjunct, side.dialect)
        except QueryRejected:
            return None
        return refs

    def _restructure(
        self, select: exp.Select, groups: Mapping[str, _Group], base: Mapping[str, str]
    ) -> None:
        """Each group's first table becomes its statement's view; its other tables leave
        the FROM clause (their conditions went with the group or to WHERE)."""
        for group in groups.values():
            group.name = self._fresh("f")
            group.alias = self._fresh("g")
        tables = {
            source.alias_or_name: source
            for source in select.find_all(exp.Table)
            if source.alias_or_name in base and _level_of(source) is select
        }
        for group in groups.values():
            first, *others = group.aliases
            tables[first].replace(
                exp.Table(
                    this=exp.to_identifier(group.name, quoted=True),
                    alias=exp.TableAlias(this=exp.to_identifier(group.alias, quoted=True)),
                )
            )
            for other in others:
                join = tables[other].parent
                if not isinstance(join, exp.Join):
                    raise QueryRejected("the query's joins could not be planned across sources")
                join.pop()
        for join in select.args.get("joins") or []:
            if not join.side and join.args.get("on") is None:
                join.set("kind", "CROSS")

    def _dynamic_candidates(
        self,
        scope: Scope,
        kept: Iterable[exp.Expr],
        groups: Mapping[str, _Group],
        base: Mapping[str, str],
        nullable: set[str],
        rigid: bool,
    ) -> None:
        if rigid:
            return
        by_alias = {alias: group for group in groups.values() for alias in group.aliases}
        for conjunct in kept:
            if not isinstance(conjunct, exp.EQ):
                continue
            left, right = conjunct.this, conjunct.expression
            if not (isinstance(left, exp.Column) and isinstance(right, exp.Column)):
                continue
            if left.table not in base and right.table in base:
                left, right = right, left
            if left.table not in base or left.table in nullable:
                continue
            if self._definer(scope, left.table) is not scope:
                continue
            a = by_alias[left.table]
            if right.table in base:
                if right.table in nullable:
                    continue
                b = by_alias[right.table]
            else:
                # A correlated subquery's own table equal to an outer level's column:
                # only the rows whose key the outer level has can ever be referenced.
                outer = self._definer(scope, right.table)
                found = self.owner_of.get((id(outer), right.table)) if outer else None
                if found is None or found.nullable or not found.restrictions:
                    continue
                key = left.copy()
                self.correlated.add(id(key))
                self.filters.append((found, (right.table, right.name), a, key))
                continue
            if a is b:
                continue
            # Both ways: which side probes is chosen once every level is planned.
            self.filters.append((a, (left.table, left.name), b, right.copy()))
            self.filters.append((b, (right.table, right.name), a, left.copy()))

    # -- statements -----------------------------------------------------------------------

    def _fragments(self) -> list[Fragment]:
        fragments: list[Fragment] = []
        for pushed in self.pushed:
            side = self.sources[pushed.connection]
            query = pushed.query
            columns = tuple(query.named_selects)
            accepted = ["subquery sent whole"]
            if any(query.find_all(exp.Join)) or len(list(query.find_all(exp.Table))) > 1:
                accepted.append("joins")
            if any(query.find_all(exp.AggFunc)) or any(
                q.args.get("group") is not None for q in query.find_all(exp.Select)
            ):
                accepted.append("aggregates")
            if any(q.args.get("where") is not None for q in query.find_all(exp.Select)):
                accepted.append("filters")
            if query.args.get("limit") is not None:
                accepted.append("limit")
            fragments.append(
                self._fragment(
                    pushed.name, side, query, columns, tuple(accepted), (), has_filter=True
                )
            )
        # Columns each group's tables give the rest of the query, gathered after every
        # pushed condition left the tree.
        needed: dict[int, dict[tuple[str, str], str]] = {id(g): {} for g in self.groups}
        owners: dict[tuple[int, str], _Group] = {}
        for group in self._all_groups():
            assert group.scope is not None
            for alias in group.aliases:
                owners[(id(group.scope), alias)] = group
        for scope in self.scopes:
            for column in scope.columns:
                if not column.table or column.root() is not self.tree:
                    continue
                definer = self._definer(scope, column.table)
                if definer is None:
                    continue
                owner = owners.get((id(definer), column.table))
                if owner is None:
                    continue
                outputs = needed.setdefault(id(owner), {})
                key = (column.table, column.name)
                if key not in outputs:
                    outputs[key] = f"c{len(outputs)}"
                column.set("this", exp.to_identifier(outputs[key], quoted=True))
                column.set("table", exp.to_identifier(owner.alias, quoted=True))
        for group in self._all_groups():
            side = self.sources[group.connection]
            outputs = needed.get(id(group), {})
            for probe, key, _target, _column in self.filters:
                if probe is group and key not in outputs:
                    outputs[key] = f"c{len(outputs)}"
            query = self._group_query(group, outputs)
            given: list[str] = []
            if group.conjuncts:
                given.append(f"filters: {len(group.conjuncts)}")
            if len(group.aliases) > 1:
                given.append(f"joins: {len(group.aliases)} entities")
            remaining = [
                "aggregates, ordering and limit stay with DuckDB (rows of other sources join)"
            ]
            fragments.append(
                self._fragment(
                    group.name,
                    side,
                    query,
                    tuple(query.named_selects),
                    tuple(given) or ("scan",),
                    tuple(remaining),
                    has_filter=bool(group.restrictions),
                )
            )
        return fragments

    def _chosen_filters(self) -> list[tuple[_Group, tuple[str, str], _Group, exp.Column]]:
        """The dynamic filters to run, from the candidates: a probe must be restricted
        at its source, or by a filter chosen before (a chain: nation -> supplier ->
        lineitem); against a restricted target it must rank as the smaller side; a
        target takes one filter; no cycles. The likeliest small probes choose first."""
        rank = {id(g): _probe_rank(g) for g in self.groups if g.restrictions}
        feeds: dict[int, int] = {}  # target -> its probe
        chosen: list[tuple[_Group, tuple[str, str], _Group, exp.Column]] = []
        pending = sorted(self.filters, key=lambda f: _probe_rank(f[0]))
        progress = True
        while progress:
            progress = False
            for candidate in list(pending):
                probe, _, target, column = candidate
                if id(target) in feeds or id(probe) not in rank:
                    continue
                # Into a correlated subquery the outer level drives; else the probe must
                # rank as the smaller side (a chained probe ranks as its own probe).
                if (
                    id(column) not in self.correlated
                    and id(target) in rank
                    and not rank[id(probe)] < rank[id(target)]
                ):
                    continue
                ancestor: int | None = id(probe)
                while ancestor is not None and ancestor != id(target):
                    ancestor = feeds.get(ancestor)
                if ancestor is not None:
                    continue  # the target feeds the probe already: a cycle
                feeds[id(target)] = id(probe)
                rank[id(target)] = min(rank.get(id(target), rank[id(probe)]), rank[id(probe)])
                chosen.append(candidate)
                pending.remove(candidate)
                progress = True
        return chosen

    def _all_groups(self) -> list[_Group]:
        return self.groups

    def _group_query(self, group: _Group, outputs: Mapping[tuple[str, str], str]) -> exp.Select:
        assert group.scope is not None
        side = self.sources[group.connection]
        projections: list[exp.Expr] = []
        for (alias, name), output in outputs.items():
            value: exp.Expr = exp.column(name, table=alias, quoted=True)
            if self._padded(group.scope, alias, name, side):
                # CHAR(n) compares ignoring trailing blanks at its source; DuckDB has no
                # such type: the text without the padding keeps comparisons right.
                value = exp.cast(value, "TEXT")
            projections.append(exp.alias_(value, output, quoted=True))
        if not projections:
            projections = [exp.alias_(exp.Literal.number(1), "c0", quoted=True)]
        tables: list[exp.Table] = []
        for alias in group.aliases:
            _, source = group.scope.selected_sources[alias]
            assert isinstance(source, exp.Table)
            tables.append(
                exp.Table(
                    this=exp.to_identifier(source.name, quoted=True),
                    db=exp.to_identifier(group.connection, quoted=True),
                    alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)),
                )
            )
        query = exp.select(*projections).from_(tables[0])
        for table in tables[1:]:
            query = query.join(table, join_type="CROSS")
        if group.conjuncts:
            query = query.where(_and([c.copy() for c in group.conjuncts]), copy=False)
        return query

    def _padded(self, scope: Scope, alias: str, name: str, side: SourceSide) -> bool:
        """Whether a column is a blank-padded CHAR(n) its source returns padded."""
        if side.dialect not in PADDED_CHAR_DIALECTS:
            return False
        _, source = scope.selected_sources[alias]
        entity = side.catalog.entity(source.name) if isinstance(source, exp.Table) else None
        if entity is None:
            return False
        for column in entity.columns:
            if column.name == name:
                return _CHAR_TYPE.match(column.source_type.strip().lower()) is not None
        return False

    def _fragment(
        self,
        name: str,
        side: SourceSide,
        query: exp.Query,
        columns: tuple[str, ...],
        accepted: tuple[str, ...],
        remaining: tuple[str, ...],
        *,
        has_filter: bool,
    ) -> Fragment:
        compiled = _compile(self.compiler, query, side)
        entities = tuple(sorted({t.name for t in query.find_all(exp.Table)}))
        return Fragment(
            name=name,
            connection=side.connection,
            entities=entities,
            tree=query,
            compiled=compiled,
            columns=columns,
            accepted=accepted,
            remaining=remaining,
            has_filter=has_filter,
        )

    def _finish(self, fragments: list[Fragment], row_limit: int) -> FederatedPlan:
        remainder_params = tuple(dict.fromkeys(p.name for p in self.tree.find_all(exp.Placeholder)))
        remainder = self.tree.sql(dialect="duckdb")
        names = set(remainder_params)
        for fragment in fragments:
            names.update(fragment.compiled.param_names)
        dynamic = []
        for probe, (alias, name), target, column in self._chosen_filters():
            probe_fragment = next(f for f in fragments if f.name == probe.name)
            select = probe_fragment.tree
            assert isinstance(select, exp.Select)
            output = next(
                (
                    p.alias
                    for p in select.expressions
                    if isinstance(p, exp.Alias) and _reads(p.this, alias, name)
                ),
                None,
            )
            target_side = self.sources[target.connection]
            if output is None or target_side.max_parameters <= 0:
                continue
            dynamic.append(DynamicFilter(probe.name, output, target.name, column))
        chosen = dynamic
        remaining = tuple(dict.fromkeys(self.remaining)) or ("combining the sources' rows",)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(remainder.encode())
        for fragment in fragments:
            digest.update(b"\x00" + fragment.connection.encode() + b"\x00")
            digest.update(fragment.compiled.fingerprint.encode())
        connections = tuple(sorted({f.connection for f in fragments}))
        output_columns = len(self.tree.selects) if isinstance(self.tree, exp.Query) else 0
        return FederatedPlan(
            fragments=tuple(fragments),
            remainder=remainder,
            remainder_params=remainder_params,
            remaining=remaining,
            dynamic_filters=tuple(chosen),
            param_names=tuple(sorted(names)),
            connections=connections,
            row_limit=row_limit,
            max_rows=self.max_rows,
            output_columns=output_columns,
            fingerprint=digest.hexdigest(),
        )


def _probe_rank(group: _Group) -> tuple[int, int, int]:
    """Which probe is likely smaller (no statistics): more conditions that pick values,
    then fewer entities, then more restrictions."""
    return (-group.equalities, len(group.aliases), -group.restrictions)


def _picks_values(condition: exp.Expr) -> bool:
    """`column = constant`, `column IN (constants)`, or an OR of such (the filter an OR
    of value picks implies)."""
    constant = (exp.Literal, exp.Placeholder)
    if isinstance(condition, exp.Paren):
        return _picks_values(condition.unnest())
    if isinstance(condition, exp.Or):
        return all(_picks_values(branch) for branch in condition.flatten())
    if isinstance(condition, exp.And):
        return any(_picks_values(part) for part in condition.flatten())
    if isinstance(condition, exp.EQ):
        sides = (condition.this, condition.expression)
        return any(
            isinstance(a, exp.Column) and isinstance(b, constant) for a, b in (sides, sides[::-1])
        )
    if isinstance(condition, exp.In) and condition.args.get("query") is None:
        values = condition.expressions
        return (
            isinstance(condition.this, exp.Column)
            and bool(values)
            and all(isinstance(v, constant) for v in values)
        )
    return False


def _reads(value: exp.Expr, alias: str, name: str) -> bool:
    """Whether a fragment's output is the column `alias.name` (unpadded or not)."""
    if isinstance(value, exp.Cast):
        value = value.this
    return isinstance(value, exp.Column) and value.table == alias and value.name == name


def _conjuncts(condition: exp.Expr) -> list[exp.Expr]:
    if isinstance(condition, exp.And):
        return list(condition.flatten())
    return [condition]


def _and(conditions: list[exp.Expr]) -> exp.Expr:
    # Not copied: the columns keep their identity, which the planner rewrites by.
    return exp.and_(*conditions, copy=False)


def _level_of(node: exp.Expr) -> exp.Expr | None:
    """The SELECT a FROM item belongs to."""
    current = node.parent
    while current is not None and not isinstance(current, exp.Select):
        current = current.parent
    return current
