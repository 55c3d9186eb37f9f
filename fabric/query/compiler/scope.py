"""Scope resolution: every table and column bound to the selection, rewriting the tree.

sqlglot's scope machinery gives the scopes; the binding is the source's own: a name is
looked up as the source dialect looks it up (`names.NameRules`), innermost query first
and then outward, against every column a table physically has, selected or not. When the
source would bind a name to a column the selection hides, the query is refused, with the
message an unknown name gets there. The rewrite leaves physical `"schema"."table" AS
"alias"`, columns qualified by their source alias with the catalog's exact spelling, an
output name only as a whole ORDER BY or DISTINCT ON item (elsewhere the named expression
is written out), and `*` expanded to the selected columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, build_scope

from fabric.errors import QueryRejected, SchemaMismatch
from fabric.model import CatalogSnapshot, Entity, fold_name
from fabric.query.compiler.names import (
    AliasUse,
    Clause,
    NameRules,
    OutputNaming,
    clause_of,
    implicit_name,
    implicit_names,
)
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


class QualifiedEntityName(QueryRejected):
    """A table named `x.entity`: a federated query names another connection's entity
    that way (`fabric.query.federation`); the single-source compiler refuses it."""


@dataclass(slots=True)
class Source:
    """A table in scope: an entity, a derived table or a CTE, under its alias."""

    alias: str
    columns: tuple[str, ...]
    """The names a query may read."""
    entity: Entity | None
    hidden: frozenset[str] | None = frozenset()
    """Names the source has at the source but the selection hides (an entity's hidden
    columns, or those a `*` inside a derived table passed over); None: not known."""
    unnamed: frozenset[str] = frozenset()
    """Names the source may give its outputs that have no alias (`count` for count(*))."""


class _Block(Enum):
    """Why a name found in a source cannot be bound there (worst first)."""

    UNKNOWN = 1
    UNNAMED = 2
    HIDDEN = 3


@dataclass(frozen=True, slots=True)
class _Found:
    """What an unqualified name matched in one level's FROM clause."""

    source: Source | None
    name: str
    """The catalog's spelling of the column (when `source` is set and nothing blocks)."""
    ambiguous: tuple[Source, ...] = ()
    block: _Block | None = None
    blocker: Source | None = None


@dataclass(frozen=True, slots=True)
class _Output:
    """An output of a SELECT that a bare name matched."""

    projection: exp.Expr
    kind: str
    """'alias', 'column' (an unaliased column), 'named' (an unaliased expression whose
    name is certain), 'implicit' (one that may have the name), 'hidden' (a column a `*`
    passed over) or 'unknown' (a `*` over columns not known)."""


class ScopeResolver:
    """Binds every table and column of a checked tree to the selection, rewriting in place.

    Scopes come bottom-up from sqlglot (`Scope.traverse`), so a derived table's or CTE's
    output names are known before the query that reads it. Within a SELECT the select
    list is bound first (ORDER BY and friends may repeat its expressions). A name found
    neither in its own query's FROM clause nor among the output names that count there
    is bound afterwards against the enclosing queries (correlated subqueries).
    Every Table and Column node ends up in `_bound`; anything left over is refused.
    """

    def __init__(
        self,
        catalog: CatalogSnapshot,
        rules: NameRules | None = None,
        *,
        dialect: str = "postgres",
        source_text: str = "",
    ) -> None:
        self.catalog = catalog
        self.rules = rules or NameRules()
        self.dialect = dialect
        self.source_text = source_text
        self.entities: set[str] = set()
        self.reads: dict[str, set[str]] = {}
        """The columns the statement reads, by entity name (an entity read for its rows
        alone, as by COUNT(*), has an empty set)."""
        self._sources: dict[int, dict[str, Source]] = {}
        self._outputs: dict[int, tuple[str, ...]] = {}
        self._unnamed: dict[int, tuple[frozenset[str], ...]] = {}
        self._star_hidden: dict[int, frozenset[str] | None] = {}
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
        columns: list[tuple[exp.Column, Clause, int]] = []
        for node in list(scope.walk()):
            if type(node) is exp.Column and id(node) not in self._bound:
                clause, join = clause_of(node, select)
                columns.append((node, clause, join))
        # The select list first: other clauses may copy its (bound) expressions.
        columns.sort(key=lambda found: found[1] is not Clause.SELECT_LIST)
        for column, clause, join in columns:
            if id(column) not in self._bound:
                self._resolve_local(scope, select, sources, column, clause, join)
        self._outputs[id(select)] = tuple(_output_name(p) for p in select.expressions)
        self._unnamed[id(select)] = tuple(
            frozenset() if _output_name(p) else implicit_names(p, self.source_text)
            for p in select.expressions
        )

    def _set_operation(self, scope: Scope) -> None:
        operation = scope.expression
        leftmost: exp.Expr = operation
        while isinstance(leftmost, exp.SetOperation):
            leftmost = leftmost.this.unnest()
        outputs = self._outputs.get(id(leftmost))
        if outputs is None:
            raise QueryRejected("each side of a set operation must be a SELECT")
        self._outputs[id(operation)] = outputs
        self._unnamed[id(operation)] = self._unnamed.get(id(leftmost), ())
        self._star_hidden[id(operation)] = self._star_hidden.get(id(leftmost), frozenset())
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
            return self._derived(item.alias, query, item.args.get("alias"), "a subquery in FROM")
        raise QueryRejected(f"SQL construct '{item.key}' is not allowed in FROM")

    def _derived(
        self, alias: str, query: exp.Expr, alias_node: exp.Expr | None, what: str
    ) -> Source:
        """A derived table or CTE: its outputs (renamed by a column alias list), the names
        its `*` passed over, and the implicit names of its outputs without an alias."""
        outputs = self._outputs.get(id(query))
        if outputs is None:
            raise QueryRejected(f"{what} could not be checked")
        columns = _rename(outputs, alias_node)
        implicit = self._unnamed.get(id(query), ())
        unnamed = frozenset(
            name
            for position, names in enumerate(implicit)
            if not columns[position]
            for name in names
        )
        hidden = self._star_hidden.get(id(query), frozenset())
        return Source(alias, columns, None, hidden, unnamed)

    def _table(self, scope: Scope, table: exp.Table) -> Source:
        parts = [part.name for part in table.parts]
        if table.args.get("catalog") is not None:
            raise QueryRejected(f"cross-database name '{'.'.join(parts)}' is not allowed")
        if table.args.get("db") is not None:
            if table.db.lower() in _SYSTEM_SCHEMAS or table.db.lower().startswith("pg_"):
                raise QueryRejected(f"system catalog '{'.'.join(parts)}' is not allowed")
            raise QualifiedEntityName(
                f"schema-qualified name '{'.'.join(parts)}' is not allowed; "
                f"refer to entities by name ('{table.name}')"
            )
        alias_node = table.args.get("alias")
        alias = table.alias_or_name
        self._bound.add(id(table))
        cte = scope.cte_sources.get(table.name)
        if isinstance(cte, Scope) and cte.is_cte:
            query = cte.expression
            return self._derived(alias, query, _cte_alias(query), f"CTE '{table.name}'")
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
        hidden = None if entity.hidden_columns is None else frozenset(entity.hidden_columns)
        return Source(alias, tuple(column.name for column in entity.columns), entity, hidden)

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
        # What a `*` passes over still names columns at the source: a query over this
        # one must not bind those names elsewhere.
        passed_over: frozenset[str] | None = frozenset()
        if not any(
            isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
            for p in select.expressions
        ):
            self._star_hidden[id(select)] = passed_over
            return
        projections: list[exp.Expr] = []
        expanded: list[Source] = []
        for projection in select.expressions:
            if isinstance(projection, exp.Star):
                if not sources:
                    raise QueryRejected("SELECT * needs a FROM clause")
                for source in sources.values():
                    projections.extend(self._star_columns(source))
                    expanded.append(source)
            elif isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
                named = sources.get(projection.table)
                if named is None:
                    raise QueryRejected(
                        f"'{projection.table}.*' refers to '{projection.table}', "
                        "which is not in the FROM clause"
                    )
                projections.extend(self._star_columns(named))
                expanded.append(named)
            else:
                projections.append(projection)
        select.set("expressions", projections)
        for source in expanded:
            if source.hidden is None or passed_over is None:
                passed_over = None
            else:
                passed_over = passed_over | source.hidden
        self._star_hidden[id(select)] = passed_over

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

    # -- columns in their own query -------------------------------------------------

    def _resolve_local(
        self,
        scope: Scope,
        select: exp.Select,
        sources: dict[str, Source],
        column: exp.Column,
        clause: Clause,
        join: int,
    ) -> None:
        if column.args.get("db") is not None or column.args.get("catalog") is not None:
            raise QueryRejected(
                f"column reference '{column.sql(dialect=INPUT_DIALECT)}' has too many parts"
            )
        if not isinstance(column.this, exp.Identifier):
            raise QueryRejected(f"SQL construct '{column.this.key}' is not allowed as a column")
        visible = _visible(sources, clause, join)
        if column.table:
            source = sources.get(column.table)
            if source is None:
                self._defer(scope, column)
            elif source.alias not in visible:
                raise _not_joined_yet(column)
            else:
                self._bind(column, source)
            return
        use = self.rules.alias_use(clause)
        if use is AliasUse.FIRST:
            outputs = self._outputs_named(select, column)
            if outputs:
                self._bind_output(scope, select, column, clause, outputs)
                return
            use = AliasUse.NONE
        found = _find(visible, column)
        if use is AliasUse.NONE:
            if found is None:
                self._defer(scope, column)
            else:
                self._bind_found(scope, column, found)
            return
        if found is not None:
            if use in (AliasUse.EXCLUSIVE, AliasUse.REFUSED) and found.block is None:
                outputs = self._outputs_named(select, column)
            else:
                outputs = []
            if outputs and not _same_column(outputs, found):
                raise QueryRejected(
                    f"'{column.name}' in the {clause.value} is both an output name and a "
                    f"column of the FROM clause, which {self.dialect} may read either way; "
                    "qualify the column or rename the output"
                )
            self._bind_found(scope, column, found)
            return
        outputs = self._outputs_named(select, column)
        if not outputs:
            self._defer(scope, column)
        elif use in (AliasUse.FALLBACK, AliasUse.EXCLUSIVE):
            self._bind_output(scope, select, column, clause, outputs)
        else:
            raise QueryRejected(
                f"{self.dialect} would read '{column.name}' in the {clause.value} as the "
                "output of that name; the gateway does not: repeat the expression"
            )

    def _outputs_named(self, select: exp.Select, column: exp.Column) -> list[_Output]:
        name = column.name
        quoted = bool(column.this.args.get("quoted"))
        folded = self.rules.case_insensitive_outputs and not quoted

        def same(candidate: str) -> bool:
            return fold_name(candidate) == fold_name(name) if folded else candidate == name

        found: list[_Output] = []
        own = _projection_of(column, select)
        for projection in select.expressions:
            if projection is own:
                continue  # an expression is not its own output
            if isinstance(projection, exp.Alias):
                if same(projection.alias):
                    found.append(_Output(projection, "alias"))
            elif isinstance(projection, exp.Column):
                if same(projection.name):
                    found.append(_Output(projection, "column"))
            elif self.rules.output_naming is not OutputNaming.NONE:
                certain = implicit_name(projection, self.source_text)
                if self.rules.output_naming is OutputNaming.POSTGRES and certain is not None:
                    if same(certain):
                        found.append(_Output(projection, "named"))
                elif any(same(name) for name in implicit_names(projection, self.source_text)):
                    found.append(_Output(projection, "implicit"))
        passed_over = self._star_hidden.get(id(select), frozenset())
        if passed_over is None:
            if not found:
                found.append(_Output(column, "unknown"))
        elif any(same(hidden) for hidden in passed_over):
            found.append(_Output(column, "hidden"))
        return found

    def _bind_output(
        self,
        scope: Scope,
        select: exp.Select,
        column: exp.Column,
        clause: Clause,
        outputs: list[_Output],
    ) -> None:
        kinds = {output.kind for output in outputs}
        if "hidden" in kinds or "unknown" in kinds:
            raise _not_in_scope(column, "")
        if "implicit" in kinds:
            raise QueryRejected(
                f"'{column.name}' may name an output that has no alias; give that output "
                "an alias (or qualify the column)"
            )
        targets = {_named_expression(o.projection).sql(dialect=INPUT_DIALECT) for o in outputs}
        if len(targets) > 1:
            raise QueryRejected(
                f"{clause.value} '{column.name}' is ambiguous: several outputs have that name"
            )
        projection = outputs[0].projection
        if clause in (Clause.ORDER_ITEM, Clause.DISTINCT_ON_ITEM) and isinstance(
            projection, exp.Alias
        ):
            # Left as the output's name: every source reads a whole ORDER BY (or DISTINCT
            # ON) item as an output name before an input column.
            column.set("this", exp.Identifier(this=projection.alias, quoted=True))
            self._bound.add(id(column))
            return
        target = _named_expression(projection)
        if clause is Clause.GROUP_ITEM and (
            isinstance(target, (exp.Literal, exp.Null, exp.Boolean, exp.Placeholder))
            or target.find(exp.AggFunc, exp.Window, exp.Subquery, exp.Select) is not None
        ):
            raise QueryRejected(
                f"GROUP BY '{column.name}' names an output that is a constant, a parameter, "
                "an aggregate or a subquery; group by an expression of columns"
            )
        if target.find(exp.Subquery, exp.Select) is not None:
            raise QueryRejected(
                f"'{column.name}' in the {clause.value} names an output that holds a "
                "subquery; repeat the expression"
            )
        self._inline(scope, column, target)

    def _inline(self, scope: Scope, column: exp.Column, target: exp.Expr) -> None:
        """Replace `column` by a copy of `target` (an expression of the select list,
        already bound), bound the same way."""
        copy = target.copy()
        originals = [n for n in target.walk() if type(n) is exp.Column]
        copies = [n for n in copy.walk() if type(n) is exp.Column]
        for original, copied in zip(originals, copies, strict=True):
            if id(original) in self._bound:
                self._bound.add(id(copied))
            else:
                self._pending.append((scope, copied))
        column.replace(copy)

    def _bind_found(self, scope: Scope, column: exp.Column, found: _Found) -> None:
        if found.block is not None:
            raise _blocked(column, found, self._hint(scope, column))
        if found.ambiguous:
            _ambiguous(column, list(found.ambiguous))
        assert found.source is not None
        self._bind(column, found.source)

    def _defer(self, scope: Scope, column: exp.Column) -> None:
        if _outer_scope(scope) is None:
            self._not_found(scope, column)
        self._pending.append((scope, column))

    def _not_found(self, scope: Scope, column: exp.Column) -> None:
        sources = self._sources.get(id(scope), {})
        # A selected column the stage's table lacks is told apart from one never selected.
        for source in sources.values():
            if source.entity is not None and column.table in ("", source.alias):
                lost = _matching(source.entity.missing, column.this)
                if lost:
                    raise self._missing_in_stage(source.entity, lost[0])
        _not_found(column, sources, self._hint(scope, column))

    def _hint(self, scope: Scope, column: exp.Column) -> str:
        """For the message of a name bound nowhere it may be: that it is an output name of
        its own query which the dialect does not read where it stands. The same whether
        or not a hidden column has the name, so the message does not tell them apart."""
        select = scope.expression
        if column.table or not isinstance(select, exp.Select):
            return ""
        clause, _ = clause_of(column, select)
        if self.rules.alias_use(clause) is not AliasUse.NONE:
            return ""
        if not any(isinstance(p, exp.Alias) and p.alias == column.name for p in select.expressions):
            return ""
        return (
            f" ('{column.name}' is an output name, which {self.dialect} does not read in "
            f"the {clause.value}: repeat the expression)"
        )

    # -- columns of enclosing queries -----------------------------------------------

    def _resolve_outer(self, scope: Scope, column: exp.Column) -> None:
        found_outer = _outer_scope(scope)
        nearer = [scope]  # scopes the database searches before `outer` for a qualifier
        while found_outer is not None:
            outer, anchor = found_outer
            sources = self._sources.get(id(outer), {})
            select = outer.expression
            visible = sources
            if isinstance(select, exp.Select):
                visible = _visible(sources, *clause_of(anchor, select))
            if column.table:
                source = sources.get(column.table)
                if source is not None:
                    if source.alias not in visible:
                        raise _not_joined_yet(column)
                    self._bind(column, source)
                    return
            else:
                found = _find(visible, column)
                if found is not None:
                    if found.block is None and not found.ambiguous:
                        assert found.source is not None
                        self._check_not_shadowed(column, found.source.alias, nearer)
                    self._bind_found(scope, column, found)
                    return
                if self.rules.outer_aliases and isinstance(select, exp.Select):
                    outputs = self._outputs_named(select, column)
                    if any(output.kind == "alias" for output in outputs):
                        raise QueryRejected(
                            f"{self.dialect} would read '{column.name}' as an output of an "
                            "enclosing query; the gateway does not: repeat the expression "
                            "in the subquery"
                        )
            nearer.append(outer)
            found_outer = _outer_scope(outer)
        self._not_found(scope, column)

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
        hidden = source.hidden is not None and bool(_matching(tuple(source.hidden), column.this))
        if len(found) != 1 or hidden:
            if len(found) > 1 or (found and hidden):
                raise QueryRejected(
                    f"column reference '{source.alias}.{column.name}' is ambiguous; quote it"
                )
            # The same message whether the source hides the column or lacks it.
            if source.entity is not None:
                lost = _matching(source.entity.missing, column.this)
                if lost:
                    raise self._missing_in_stage(source.entity, lost[0])
                raise QueryRejected(f"column '{source.entity.name}.{column.name}' is not selected")
            if _matching(tuple(source.unnamed), column.this):
                raise _unnamed(column, source)
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


def missing_in_stage(entity: Entity, column: str, stage: str | None) -> SchemaMismatch:
    """The error for a selected column the stage's table lacks (as its last refresh
    found); the names come from the catalog, never from the source's messages."""
    return SchemaMismatch(
        f"column '{entity.name}.{column}' is selected, but the table "
        f"{entity.schema}.{entity.table} of stage '{stage}' did not have it at the last "
        "refresh there; the source's schema no longer matches the selection: add the "
        "column in that stage or unselect it, then refresh"
    )


# -- lookups ---------------------------------------------------------------------------


def _matching(columns: tuple[str, ...], identifier: exp.Expr) -> list[str]:
    name = identifier.name
    if identifier.args.get("quoted"):
        return [column for column in columns if column == name]
    # An unquoted name matches ignoring ASCII case only, as PostgreSQL folds it: a
    # non-ASCII letter must match exactly (`\u212a`, the Kelvin sign, is not `k`).
    folded = fold_name(name)
    return [column for column in columns if fold_name(column) == folded]


def _visible(sources: dict[str, Source], clause: Clause, join: int) -> dict[str, Source]:
    """The FROM items a name in `clause` may bind to: in the ON clause of a join, only
    the tables joined so far (as every source has it)."""
    if clause is not Clause.JOIN_ON or join < 0:
        return sources
    return dict(list(sources.items())[: join + 2])


def _find(sources: dict[str, Source], column: exp.Column) -> _Found | None:
    """What the unqualified name of `column` matches in one level's FROM clause (hidden
    columns included), or None when nothing there has the name."""
    identifier = column.this
    matches: list[tuple[Source, list[str]]] = []
    block: _Block | None = None
    blocker: Source | None = None
    for source in sources.values():
        names = _matching(source.columns, identifier)
        if source.hidden is None:
            kind = None if names else _Block.UNKNOWN
        elif _matching(tuple(source.hidden), identifier):
            kind = _Block.HIDDEN
        elif not names and _matching(tuple(source.unnamed), identifier):
            kind = _Block.UNNAMED
        else:
            kind = None
        if kind is not None and (block is None or kind.value < block.value):
            block, blocker = kind, source
        if names or kind is not None:
            matches.append((source, names))
    if not matches:
        return None
    if block is not None:
        return _Found(None, "", block=block, blocker=blocker)
    if len(matches) > 1:
        return _Found(None, "", ambiguous=tuple(source for source, _ in matches))
    source, names = matches[0]
    if len(names) > 1:
        return _Found(None, "", ambiguous=(source,))
    return _Found(source, names[0])


def _same_column(outputs: list[_Output], found: _Found) -> bool:
    """Whether every output a name matched is the very input column it also names, so
    either reading gives the same column."""
    if found.source is None or found.ambiguous:
        return False
    for output in outputs:
        target = _named_expression(output.projection)
        if not isinstance(target, exp.Column) or not isinstance(target.this, exp.Identifier):
            return False
        if target.table not in ("", found.source.alias):
            return False
        if found.name not in _matching(found.source.columns, target.this):
            return False
    return True


def _projection_of(node: exp.Expr, select: exp.Select) -> exp.Expr | None:
    """The item of `select`'s select list that holds `node`, if one does."""
    while node.parent is not None and node.parent is not select:
        node = node.parent
    return node if node.parent is select and node.arg_key == "expressions" else None


def _named_expression(projection: exp.Expr) -> exp.Expr:
    return projection.this if isinstance(projection, exp.Alias) else projection


# -- refusals --------------------------------------------------------------------------


def _blocked(column: exp.Column, found: _Found, hint: str) -> QueryRejected:
    source = found.blocker
    assert source is not None
    if found.block is _Block.UNKNOWN:
        what = f"entity '{source.entity.name}'" if source.entity else f"'{source.alias}'"
        return QueryRejected(
            f"column '{column.name}' cannot be bound as the source would: the catalog does "
            f"not record which columns {what} leaves unselected; refresh the connection's "
            "catalog, or qualify the column"
        )
    if found.block is _Block.UNNAMED:
        return _unnamed(column, source)
    return _not_in_scope(column, hint)


def _unnamed(column: exp.Column, source: Source) -> QueryRejected:
    return QueryRejected(
        f"column '{column.name}' may name an output of '{source.alias}' that has no alias; "
        "give that output an alias"
    )


def _not_in_scope(column: exp.Column, hint: str) -> QueryRejected:
    # The message an unknown name gets: it must not tell a hidden column from no column.
    return QueryRejected(f"column '{column.name}' is not selected in any table in scope{hint}")


def _not_joined_yet(column: exp.Column) -> QueryRejected:
    return QueryRejected(
        f"column '{column.table}.{column.name}' refers to '{column.table}', which is not "
        "joined yet where it is used; an ON clause sees only the tables joined before it"
    )


def _ambiguous(column: exp.Column, candidates: list[Source]) -> None:
    names = ", ".join(source.alias for source in candidates)
    raise QueryRejected(
        f"column reference '{column.name}' is ambiguous ({names}); qualify it with a table name"
    )


def _not_found(column: exp.Column, sources: dict[str, Source], hint: str = "") -> None:
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
    raise _not_in_scope(column, hint)


def _outer_scope(scope: Scope) -> tuple[Scope, exp.Expr] | None:
    """The scope a correlated reference may look in next, with the node of `scope` (or
    of the set operation holding it) inside that scope's query; None when it may not."""
    current = scope
    while current.is_set_operation and current.parent is not None:
        current = current.parent
    parent = current.parent if current.is_subquery else None
    return None if parent is None else (parent, current.expression)


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
