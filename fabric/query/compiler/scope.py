"""Scope resolution: every table and column bound to the selection, rewriting the tree.

sqlglot's scope machinery gives the scopes; the binding rules are ours. The rewrite
leaves physical `"schema"."table" AS "alias"`, columns qualified by their source alias
with the catalog's exact spelling, and `*` expanded to the selected columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, build_scope

from fabric.errors import QueryRejected, SchemaMismatch
from fabric.model import CatalogSnapshot, Entity
from fabric.query.compiler.reader import INPUT_DIALECT, READ_ONLY_HINT

_SYSTEM_SCHEMAS = frozenset(
    {
        "pg_catalog",
        "information_schema",
        "pg_toast",
        "sys",
        "mysql",
        "performance_schema",
        "duckdb",
        "system",
        "temp",
    }
)
_SYSTEM_TABLE_PREFIXES = ("pg_", "sys", "duckdb_", "sqlite_", "information_schema")


@dataclass(slots=True)
class Source:
    """A table in scope: an entity, a derived table or a CTE, under its alias."""

    alias: str
    columns: tuple[str, ...]
    entity: Entity | None


class ScopeResolver:
    """Binds every table and column of a checked tree to the selection, rewriting in place.

    Scopes come bottom-up from sqlglot (`Scope.traverse`), so a derived table's or CTE's
    output names are known before the query that reads it. A column not found in its own
    scope is bound afterwards against the enclosing scopes (correlated subqueries).
    Every Table and Column node ends up in `_bound`; anything left over is refused.
    """

    def __init__(self, catalog: CatalogSnapshot) -> None:
        self.catalog = catalog
        self.entities: set[str] = set()
        self.reads: dict[str, set[str]] = {}
        """The columns the statement reads, by entity name (an entity read for its rows
        alone, as by COUNT(*), has an empty set)."""
        self._sources: dict[int, dict[str, Source]] = {}
        self._outputs: dict[int, tuple[str, ...]] = {}
        self._bound: set[int] = set()
        self._pending: list[tuple[Scope, exp.Column]] = []
        self.root_sources: dict[str, Source] = {}
        """The FROM items of the outermost query, by alias (after `resolve`)."""

    def resolve(self, tree: exp.Expr) -> None:
        root = build_scope(tree)
        if root is None:
            raise QueryRejected(READ_ONLY_HINT)
        for scope in root.traverse():
            if isinstance(scope.expression, exp.Select):
                self._select(scope)
            elif isinstance(scope.expression, exp.SetOperation):
                self._set_operation(scope)
            else:
                raise QueryRejected(f"SQL construct '{scope.expression.key}' is not allowed")
        for scope, column in self._pending:
            self._resolve_outer(scope, column)
        self.root_sources = self._sources.get(id(root), {})
        for node in tree.walk():
            if isinstance(node, (exp.Column, exp.Table)) and id(node) not in self._bound:
                # Fail closed: a reference the scopes did not account for is not trusted.
                text = ".".join(part.name for part in node.parts)
                raise QueryRejected(f"reference '{text}' is not allowed here")

    # -- scopes ---------------------------------------------------------------------

    def _select(self, scope: Scope) -> None:
        select = scope.expression
        assert isinstance(select, exp.Select)
        sources: dict[str, Source] = {}
        from_ = select.args.get("from_")
        items: list[exp.Expr] = [from_.this] if from_ is not None else []
        items.extend(join.this for join in select.args.get("joins") or [])
        for item in items:
            source = self._source(scope, item)
            if source.alias in sources:
                raise QueryRejected(
                    f"table name '{source.alias}' appears twice in one FROM clause; "
                    "give each an alias"
                )
            sources[source.alias] = source
        self._sources[id(scope)] = sources
        self._expand_stars(select, sources)
        _inline_group_aliases(select, sources)
        aliases = {p.alias for p in select.expressions if isinstance(p, exp.Alias)}
        for node in list(scope.walk()):
            if type(node) is exp.Column and id(node) not in self._bound:
                self._resolve_local(scope, select, sources, aliases, node)
        self._outputs[id(select)] = tuple(_output_name(p) for p in select.expressions)

    def _set_operation(self, scope: Scope) -> None:
        operation = scope.expression
        leftmost: exp.Expr = operation
        while isinstance(leftmost, exp.SetOperation):
            leftmost = leftmost.this.unnest()
        outputs = self._outputs.get(id(leftmost))
        if outputs is None:
            raise QueryRejected("each side of a set operation must be a SELECT")
        self._outputs[id(operation)] = outputs
        self._sources[id(scope)] = {}
        for node in list(scope.walk()):
            if type(node) is not exp.Column or id(node) in self._bound:
                continue
            column: exp.Column = node
            found = _matching(outputs, column.this) if not column.table else []
            if len(found) != 1:
                raise QueryRejected(
                    f"ORDER BY of a {operation.key.upper()} may only name its output columns "
                    f"('{column.sql(dialect=INPUT_DIALECT)}' is not one)"
                )
            column.set("this", exp.Identifier(this=found[0], quoted=True))
            self._bound.add(id(column))

    # -- sources --------------------------------------------------------------------

    def _source(self, scope: Scope, item: exp.Expr) -> Source:
        if isinstance(item, exp.Table):
            return self._table(scope, item)
        if isinstance(item, exp.Subquery):
            query = item.unnest()
            if not isinstance(query, (exp.Select, exp.SetOperation)):
                raise QueryRejected("parenthesised joins are not supported; remove the parentheses")
            if not item.alias:
                raise QueryRejected("a subquery in FROM needs an alias")
            outputs = self._outputs.get(id(query))
            if outputs is None:
                raise QueryRejected("a subquery in FROM could not be checked")
            return Source(item.alias, _rename(outputs, item.args.get("alias")), None)
        raise QueryRejected(f"SQL construct '{item.key}' is not allowed in FROM")

    def _table(self, scope: Scope, table: exp.Table) -> Source:
        parts = [part.name for part in table.parts]
        if table.args.get("catalog") is not None:
            raise QueryRejected(f"cross-database name '{'.'.join(parts)}' is not allowed")
        if table.args.get("db") is not None:
            if table.db.lower() in _SYSTEM_SCHEMAS or table.db.lower().startswith("pg_"):
                raise QueryRejected(f"system catalog '{'.'.join(parts)}' is not allowed")
            raise QueryRejected(
                f"schema-qualified name '{'.'.join(parts)}' is not allowed; "
                f"refer to entities by name ('{table.name}')"
            )
        alias_node = table.args.get("alias")
        alias = table.alias_or_name
        self._bound.add(id(table))
        cte = scope.cte_sources.get(table.name)
        if isinstance(cte, Scope) and cte.is_cte:
            outputs = self._outputs.get(id(cte.expression))
            if outputs is None:
                raise QueryRejected(f"CTE '{table.name}' could not be checked")
            return Source(alias, _rename(outputs, _cte_alias(cte.expression)), None)
        if alias_node is not None and alias_node.columns:
            raise QueryRejected("column aliases on a table are not allowed; alias the columns")
        entity = self._entity(table.this)
        if entity.absent:
            raise SchemaMismatch(
                f"entity '{entity.name}' is selected, but its table "
                f"{entity.schema}.{entity.table} did not exist in stage "
                f"'{self.catalog.stage}' at the last refresh there; the source's schema no "
                "longer matches the selection: fix the table or the selection, then refresh"
            )
        table.set("this", exp.Identifier(this=entity.table, quoted=True))
        table.set("db", exp.Identifier(this=entity.schema, quoted=True) if entity.schema else None)
        if alias_node is None:
            # Keep the entity name as alias so `orders.id` still refers to this table.
            table.set("alias", exp.TableAlias(this=exp.Identifier(this=alias, quoted=True)))
        self.entities.add(entity.name)
        self.reads.setdefault(entity.name, set())
        return Source(alias, tuple(column.name for column in entity.columns), entity)

    def _entity(self, identifier: exp.Expr) -> Entity:
        name = identifier.name
        entity = self.catalog.entity(name)
        if entity is not None and identifier.args.get("quoted") and entity.name != name:
            entity = None  # a quoted name must match exactly
        if entity is not None:
            return entity
        lowered = name.lower()
        if lowered in _SYSTEM_SCHEMAS or lowered.startswith(_SYSTEM_TABLE_PREFIXES):
            raise QueryRejected(f"system catalog '{name}' is not allowed")
        raise QueryRejected(
            f"table '{name}' is not selected for apps on connection '{self.catalog.connection}'"
        )

    def _expand_stars(self, select: exp.Select, sources: dict[str, Source]) -> None:
        if not any(
            isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
            for p in select.expressions
        ):
            return
        projections: list[exp.Expr] = []
        for projection in select.expressions:
            if isinstance(projection, exp.Star):
                if not sources:
                    raise QueryRejected("SELECT * needs a FROM clause")
                for source in sources.values():
                    projections.extend(self._star_columns(source))
            elif isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
                named = sources.get(projection.table)
                if named is None:
                    raise QueryRejected(
                        f"'{projection.table}.*' refers to '{projection.table}', "
                        "which is not in the FROM clause"
                    )
                projections.extend(self._star_columns(named))
            else:
                projections.append(projection)
        select.set("expressions", projections)

    def _star_columns(self, source: Source) -> list[exp.Expr]:
        if any(not name for name in source.columns):
            raise QueryRejected(
                f"'*' over '{source.alias}' includes an unnamed expression; give it an alias"
            )
        if source.entity is not None and source.entity.missing:
            raise self._missing_in_stage(source.entity, source.entity.missing[0])
        columns: list[exp.Expr] = []
        if source.entity is not None:
            self.reads.setdefault(source.entity.name, set()).update(source.columns)
        for name in source.columns:
            column = exp.Column(
                this=exp.Identifier(this=name, quoted=True),
                table=exp.Identifier(this=source.alias, quoted=True),
            )
            self._bound.add(id(column))
            columns.append(column)
        return columns

    # -- columns --------------------------------------------------------------------

    def _resolve_local(
        self,
        scope: Scope,
        select: exp.Select,
        sources: dict[str, Source],
        aliases: set[str],
        column: exp.Column,
    ) -> None:
        if column.args.get("db") is not None or column.args.get("catalog") is not None:
            raise QueryRejected(
                f"column reference '{column.sql(dialect=INPUT_DIALECT)}' has too many parts"
            )
        if not isinstance(column.this, exp.Identifier):
            raise QueryRejected(f"SQL construct '{column.this.key}' is not allowed as a column")
        qualifier = column.table
        if qualifier:
            source = sources.get(qualifier)
            if source is not None:
                self._bind(column, source)
            else:
                self._defer(scope, column)
            return
        name = column.name
        context = _alias_context(column, select)
        if context == "order" and name in aliases:
            self._bound.add(id(column))  # ORDER BY an output name (PostgreSQL looks there first)
            return
        candidates = _candidates(sources, column.this)
        if len(candidates) == 1:
            self._bind(column, candidates[0])
        elif candidates:
            _ambiguous(column, candidates)
        else:
            self._defer(scope, column)

    def _defer(self, scope: Scope, column: exp.Column) -> None:
        if _outer_scope(scope) is None:
            self._not_found(column, self._sources.get(id(scope), {}))
        self._pending.append((scope, column))

    def _resolve_outer(self, scope: Scope, column: exp.Column) -> None:
        outer = _outer_scope(scope)
        nearer = [scope]  # scopes the database searches before `outer` for a qualifier
        while outer is not None:
            sources = self._sources.get(id(outer), {})
            if column.table:
                source = sources.get(column.table)
                if source is not None:
                    self._bind(column, source)
                    return
            else:
                candidates = _candidates(sources, column.this)
                if len(candidates) == 1:
                    self._check_not_shadowed(column, candidates[0].alias, nearer)
                    self._bind(column, candidates[0])
                    return
                if candidates:
                    _ambiguous(column, candidates)
            nearer.append(outer)
            outer = _outer_scope(outer)
        self._not_found(column, self._sources.get(id(scope), {}))

    def _check_not_shadowed(self, column: exp.Column, alias: str, nearer: list[Scope]) -> None:
        # The output qualifies the column with `alias`; if a nearer FROM clause also has a
        # table called `alias`, the database binds it there instead, to a column of that
        # table that may not be selected (`... FROM managers x WHERE EXISTS (SELECT 1
        # FROM employees x WHERE salary > 0)` would read employees.salary).
        for scope in nearer:
            if alias in self._sources.get(id(scope), {}):
                raise QueryRejected(
                    f"column '{column.name}' would come from '{alias}' in an outer query, "
                    f"but the subquery also has a table named '{alias}'; "
                    "give the tables different aliases"
                )

    def _bind(self, column: exp.Column, source: Source) -> None:
        found = _matching(source.columns, column.this)
        if len(found) != 1:
            if found:
                raise QueryRejected(
                    f"column reference '{source.alias}.{column.name}' is ambiguous; quote it"
                )
            if source.entity is not None:
                lost = _matching(source.entity.missing, column.this)
                if lost:
                    raise self._missing_in_stage(source.entity, lost[0])
                raise QueryRejected(f"column '{source.entity.name}.{column.name}' is not selected")
            raise QueryRejected(
                f"column '{source.alias}.{column.name}' does not exist in '{source.alias}'"
            )
        column.set("this", exp.Identifier(this=found[0], quoted=True))
        column.set("table", exp.Identifier(this=source.alias, quoted=True))
        self._bound.add(id(column))
        if source.entity is not None:
            self.reads.setdefault(source.entity.name, set()).add(found[0])

    def _missing_in_stage(self, entity: Entity, column: str) -> SchemaMismatch:
        return missing_in_stage(entity, column, self.catalog.stage)

    def _not_found(self, column: exp.Column, sources: dict[str, Source]) -> None:
        # A selected column the stage's table lacks is told apart from one never selected.
        for source in sources.values():
            if source.entity is not None and column.table in ("", source.alias):
                lost = _matching(source.entity.missing, column.this)
                if lost:
                    raise self._missing_in_stage(source.entity, lost[0])
        _not_found(column, sources)


def missing_in_stage(entity: Entity, column: str, stage: str | None) -> SchemaMismatch:
    """The error for a selected column the stage's table lacks (as its last refresh
    found); the names come from the catalog, never from the source's messages."""
    return SchemaMismatch(
        f"column '{entity.name}.{column}' is selected, but the table "
        f"{entity.schema}.{entity.table} of stage '{stage}' did not have it at the last "
        "refresh there; the source's schema no longer matches the selection: add the "
        "column in that stage or unselect it, then refresh"
    )


def _matching(columns: tuple[str, ...], identifier: exp.Expr) -> list[str]:
    name = identifier.name
    if identifier.args.get("quoted"):
        return [column for column in columns if column == name]
    lowered = name.lower()
    return [column for column in columns if column.lower() == lowered]


def _candidates(sources: dict[str, Source], identifier: exp.Expr) -> list[Source]:
    return [source for source in sources.values() if _matching(source.columns, identifier)]


def _ambiguous(column: exp.Column, candidates: list[Source]) -> None:
    names = ", ".join(source.alias for source in candidates)
    raise QueryRejected(
        f"column reference '{column.name}' is ambiguous ({names}); qualify it with a table name"
    )


def _not_found(column: exp.Column, sources: dict[str, Source]) -> None:
    if column.table:
        entity = next(
            (s.entity for s in sources.values() if s.entity and s.entity.name == column.table),
            None,
        )
        if entity is not None:
            raise QueryRejected(f"column '{entity.name}.{column.name}' is not selected")
        raise QueryRejected(
            f"column '{column.table}.{column.name}' refers to '{column.table}', "
            "which is not in the FROM clause"
        )
    raise QueryRejected(f"column '{column.name}' is not selected in any table in scope")


def _alias_context(column: exp.Column, select: exp.Select) -> str | None:
    parent = column.parent
    if isinstance(parent, exp.Ordered) and parent.parent is select.args.get("order"):
        return "order"
    return None


def _inline_group_aliases(select: exp.Select, sources: dict[str, Source]) -> None:
    """Replace each GROUP BY reference to an output alias with the aliased expression.

    PostgreSQL, DuckDB and MySQL look a GROUP BY name up among the FROM clause's columns
    before the output names, and the source has columns the selection hides:
    `SELECT amount AS secret ... GROUP BY secret` would group by the hidden `secret`.
    T-SQL has no alias references at all. The copy is checked like any other expression.
    """
    group = select.args.get("group")
    if group is None:
        return
    outputs: dict[str, list[exp.Expr]] = {}
    for projection in select.expressions:
        if isinstance(projection, exp.Alias):
            outputs.setdefault(projection.alias, []).append(projection.this)
    for item in list(group.expressions):
        if (
            type(item) is not exp.Column
            or item.table
            or not isinstance(item.this, exp.Identifier)
            or _candidates(sources, item.this)  # an input column wins, as in PostgreSQL
        ):
            continue
        targets = outputs.get(item.name)
        if not targets:
            continue
        if len(targets) > 1:
            raise QueryRejected(f"GROUP BY '{item.name}' is ambiguous: several outputs have it")
        target = targets[0]
        if isinstance(target, (exp.Literal, exp.Null, exp.Boolean, exp.Placeholder)) or (
            target.find(exp.AggFunc, exp.Window, exp.Subquery, exp.Select) is not None
        ):
            raise QueryRejected(
                f"GROUP BY '{item.name}' names an output that is a constant, a parameter, "
                "an aggregate or a subquery; group by an expression of columns"
            )
        item.replace(target.copy())


def _outer_scope(scope: Scope) -> Scope | None:
    """The scope a correlated reference may look in next, or None when it may not."""
    current = scope
    while current.is_set_operation and current.parent is not None:
        current = current.parent
    return current.parent if current.is_subquery else None


def _output_name(projection: exp.Expr) -> str:
    if isinstance(projection, exp.Alias):
        return projection.alias
    if isinstance(projection, exp.Column):
        return projection.name
    return ""


def _rename(outputs: tuple[str, ...], alias: exp.Expr | None) -> tuple[str, ...]:
    columns = [c.name for c in alias.args.get("columns") or []] if alias is not None else []
    if len(columns) > len(outputs):
        raise QueryRejected("more column aliases than columns")
    return tuple(columns) + outputs[len(columns) :]


def _cte_alias(query: exp.Expr) -> exp.Expr | None:
    parent = query.parent
    while isinstance(parent, exp.Subquery):
        parent = parent.parent
    return parent.args.get("alias") if isinstance(parent, exp.CTE) else None
