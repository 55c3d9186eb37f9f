"""Property tests of the compiler over generated queries (hypothesis).

Queries come from a small grammar over a catalog whose entity names are the physical table
names in the default schema, so the compiler's output can be fed back to it. The physical
tables also have columns the selection hides (h1, h2) and there is an unselected table (u);
the grammar uses them on purpose. For every generated query:

1. the compiler succeeds or raises QueryRejected, never anything else;
2. what it accepts references, read with PostgreSQL's own name resolution over the
   *physical* tables, only selected tables and selected columns (an independent oracle:
   it binds a qualifier to the nearest FROM clause that has it, and an unqualified GROUP
   BY name to an input column before an output name, as the database does);
3. the generated SQL, with its placeholders turned back into named parameters, compiles
   again to the same SQL, entities and referenced columns.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp, parse_one
from sqlglot.optimizer.scope import Scope, build_scope

from connectors.base import ParamStyle
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot, ColumnInfo, Entity
from fabric.query.compiler import StatementCompiler

SELECTED: dict[str, tuple[str, ...]] = {"t1": ("a", "b", "c"), "t2": ("a", "d", "e")}
# t1 physically has a `d` too, hidden there but selected in t2: the shadowing cases need it.
PHYSICAL: dict[str, tuple[str, ...]] = {
    "t1": ("a", "b", "c", "h1", "d"),
    "t2": ("a", "d", "e", "h2"),
    "u": ("x", "a"),
}
HIDDEN_NAMES = ("h1", "h2", "x", "d")

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def _catalog() -> CatalogSnapshot:
    entities = {
        name: Entity(
            name,
            "",
            name,
            tuple(ColumnInfo(c, "integer", pa.int64()) for c in cols),
            hidden_columns=tuple(c for c in PHYSICAL[name] if c not in cols),
        )
        for name, cols in SELECTED.items()
    }
    return CatalogSnapshot(tenant="t", connection="c", version=1, entities=entities)


CATALOG = _catalog()
COMPILER = StatementCompiler()


# -- the grammar ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Src:
    alias: str
    columns: tuple[str, ...]


@st.composite
def _column(draw: st.DrawFn, visible: list[_Src]) -> str:
    source = draw(st.sampled_from(visible))
    if draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(HIDDEN_NAMES))
    else:
        name = draw(st.sampled_from(source.columns))
    if draw(st.booleans()):
        return f"{source.alias}.{name}"
    return name


@st.composite
def _value(draw: st.DrawFn, visible: list[_Src], depth: int) -> str:
    kind = draw(st.sampled_from(["column", "column", "literal", "param", "string", "arith"]))
    if kind == "column":
        return draw(_column(visible))
    if kind == "literal":
        return str(draw(st.integers(0, 9)))
    if kind == "param":
        return f":p{draw(st.integers(1, 3))}"
    if kind == "string":
        return draw(st.sampled_from(["'x'", "'it''s'", "'a%b'", "'--'", "'/*'", "';'"]))
    return f"({draw(_column(visible))} + {draw(st.integers(0, 9))})"


@st.composite
def _condition(draw: st.DrawFn, visible: list[_Src], outer: list[_Src], depth: int) -> str:
    kind = draw(st.sampled_from(["compare", "compare", "and", "null", "in", "exists"]))
    scope = visible + outer
    if kind == "compare":
        op = draw(st.sampled_from(["=", "<", ">=", "<>"]))
        return f"{draw(_value(scope, depth))} {op} {draw(_value(scope, depth))}"
    if kind == "and" and depth < 3:
        left = draw(_condition(visible, outer, depth + 1))
        right = draw(_condition(visible, outer, depth + 1))
        return f"({left} {draw(st.sampled_from(['AND', 'OR']))} {right})"
    if kind == "null":
        return f"{draw(_column(scope))} IS NOT NULL"
    if kind in ("in", "exists") and depth < 2:
        sql, _ = draw(_select(outer=scope, depth=depth + 1, columns=1))
        if kind == "in":
            return f"{draw(_column(scope))} IN ({sql})"
        return f"EXISTS ({sql})"
    return f"{draw(_column(scope))} = 1"


@st.composite
def _table(draw: st.DrawFn, index: int, depth: int, outer: list[_Src]) -> tuple[str, _Src]:
    kind = draw(st.sampled_from(["t1", "t2", "t1", "t2", "t1", "t2", "u", "derived"]))
    alias = draw(st.sampled_from([None, None, f"s{index}", f"s{index}", "x", "t1"]))
    if kind == "derived" and depth < 2:
        sql, outputs = draw(_select(outer=[], depth=depth + 1, columns=None))
        name = alias or f"d{index}"
        return f"({sql}) AS {name}", _Src(name, outputs)
    table = "t1" if kind == "derived" else kind
    name = alias or table
    text = table if alias is None else f"{table} AS {alias}"
    return text, _Src(name, SELECTED.get(table, PHYSICAL[table]))


@st.composite
def _select(
    draw: st.DrawFn, *, outer: list[_Src], depth: int, columns: int | None
) -> tuple[str, tuple[str, ...]]:
    """A SELECT and its output names (as the generator believes them)."""
    count = draw(st.integers(1, 2))
    items: list[str] = []
    visible: list[_Src] = []
    for index in range(count):
        text, source = draw(_table(index + 10 * depth, depth, outer))
        items.append(text)
        visible.append(source)
    from_clause = items[0]
    for index, item in enumerate(items[1:], start=1):
        on = draw(_condition(visible[: index + 1], [], 2))
        from_clause += f" {draw(st.sampled_from(['JOIN', 'LEFT JOIN']))} {item} ON {on}"
    wanted = columns or draw(st.integers(1, 3))
    projections: list[str] = []
    outputs: list[str] = []
    aggregate = draw(st.booleans())
    for index in range(wanted):
        kind = draw(st.sampled_from(["column", "column", "alias", "agg", "star"]))
        if kind == "star" and columns is None and index == 0 and not aggregate:
            source = draw(st.sampled_from(visible))
            projections.append(f"{source.alias}.*")
            outputs.extend(source.columns)
            continue
        value = draw(_column(visible))
        if aggregate and index == 0:
            kind = draw(st.sampled_from(["column", "alias"]))  # the grouping key
        elif aggregate or kind == "agg":
            function = draw(st.sampled_from(["count", "sum", "max", "min"]))
            value = f"{function}({value})"
        name = draw(st.sampled_from([f"o{index}", f"o{index}", *HIDDEN_NAMES, "a"]))
        if kind == "alias" or "(" in value:
            projections.append(f"{value} AS {name}")
            outputs.append(name)
        else:
            projections.append(value)
            outputs.append(value.rsplit(".", 1)[-1])
    sql = f"SELECT {', '.join(projections)} FROM {from_clause}"
    if draw(st.booleans()):
        sql += f" WHERE {draw(_condition(visible, outer, depth))}"
    if aggregate:
        key = projections[0].split(" AS ")[0]
        group = draw(st.sampled_from([key, outputs[0], outputs[0], *HIDDEN_NAMES]))
        sql += f" GROUP BY {group}"
    if depth == 0 and draw(st.booleans()):
        sql += f" ORDER BY {draw(st.sampled_from([*outputs, *HIDDEN_NAMES, '1']))}"
    return sql, tuple(outputs)


@st.composite
def queries(draw: st.DrawFn) -> str:
    sql, outputs = draw(_select(outer=[], depth=0, columns=None))
    shape = draw(st.sampled_from(["plain", "plain", "union", "cte"]))
    if shape == "union":
        other, _ = draw(_select(outer=[], depth=1, columns=len(outputs)))
        operator = draw(st.sampled_from(["UNION", "UNION ALL", "EXCEPT"]))
        sql = f"{sql.split(' ORDER BY ')[0]} {operator} {other}"
    elif shape == "cte":
        name = draw(st.sampled_from(["w", "u", "t1"]))
        inner, _ = draw(_select(outer=[], depth=1, columns=None))
        sql = f"WITH {name} AS ({inner}) SELECT * FROM {name}"
    return sql


# -- the oracle: PostgreSQL name resolution over the physical tables --------------------------


def _physical_sources(scope: Scope) -> dict[str, tuple[str, object]]:
    """alias -> ("table", name) for base tables, ("derived", None) for anything else."""
    found: dict[str, tuple[str, object]] = {}
    for alias, (_node, source) in scope.selected_sources.items():
        if isinstance(source, exp.Table) and not isinstance(source, Scope):
            found[alias] = ("table", source.name)
        else:
            found[alias] = ("derived", None)
    return found


def references(sql: str) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    """Physical tables and (table, column) pairs a PostgreSQL query reads, or AssertionError
    when it reads something outside the selection."""
    tree = parse_one(sql, read="postgres")
    root = build_scope(tree)
    assert root is not None
    tables: set[str] = set()
    columns: set[tuple[str, str]] = set()
    for scope in root.traverse():
        local = _physical_sources(scope)
        for _, (kind, name) in local.items():
            if kind == "table":
                assert isinstance(name, str)
                assert name in SELECTED, f"unselected table {name} read by {sql}"
                tables.add(name)
        aliases = set()
        if isinstance(scope.expression, exp.Select):
            aliases = {p.alias for p in scope.expression.expressions if isinstance(p, exp.Alias)}
        for column in scope.columns:
            if not column.table:
                # Unqualified: only an output name in ORDER BY/GROUP BY is left so by the
                # compiler. GROUP BY prefers an input column (of the physical table!).
                in_group = isinstance(column.parent, exp.Group)
                physical = [
                    name
                    for kind, name in local.values()
                    if kind == "table" and column.name in PHYSICAL[str(name)]
                ]
                if in_group or not (column.name in aliases or scope.is_set_operation):
                    assert not physical or all(column.name in SELECTED[str(t)] for t in physical), (
                        f"hidden column {column.name} read by {sql}"
                    )
                    assert column.name in aliases or physical, f"unresolved {column.sql()}"
                continue
            binding = _resolve(scope, column.table)
            assert binding is not None, f"qualifier {column.table} not found in {sql}"
            kind, name = binding
            if kind == "table":
                assert column.name in SELECTED[str(name)], (
                    f"hidden column {name}.{column.name} read by {sql}"
                )
                columns.add((str(name), column.name))
    return frozenset(tables), frozenset(columns)


def _resolve(scope: Scope, qualifier: str) -> tuple[str, object] | None:
    current: Scope | None = scope
    while current is not None:
        local = _physical_sources(current)
        if qualifier in local:
            return local[qualifier]
        current = current.parent
    return None


# -- the properties ---------------------------------------------------------------------------


def _compile(sql: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    compiled = COMPILER.compile(
        sql, CATALOG, dialect="postgres", param_style=ParamStyle.QMARK, max_rows=100
    )
    return compiled.sql, compiled.param_names, compiled.entities


def _named(sql: str, names: tuple[str, ...]) -> str:
    pending = iter(names)
    text = re.sub(r"\?", lambda _: f":{next(pending)}", sql)
    assert next(pending, None) is None
    return text


@PROPERTY_SETTINGS
@given(queries())
def test_compiler_accepts_only_the_selection_and_round_trips(sql: str) -> None:
    try:
        first, names, entities = _compile(sql)
    except QueryRejected:
        return  # refusing is always allowed; any other exception fails the test
    tables, columns = references(first)
    assert set(entities) == tables
    again, names_again, entities_again = _compile(_named(first, names))
    assert (again, names_again, entities_again) == (first, names, entities)
    assert references(again) == (tables, columns)


@PROPERTY_SETTINGS
@given(st.text(alphabet=st.sampled_from(list("SELECT FROMt12u.,*()'\";-/:$ahx=\n")), max_size=80))
def test_compiler_raises_only_its_own_error_on_noise(sql: str) -> None:
    with contextlib.suppress(QueryRejected):  # any other exception fails the test
        _compile(sql)


def test_oracle_catches_what_the_compiler_must_refuse() -> None:
    # The oracle itself is checked against hand-written leaks.
    for leak in (
        'SELECT "t1"."h1" FROM "t1" AS "t1"',
        'SELECT "x"."a" FROM "u" AS "x"',
        'SELECT 1 AS "h1" FROM "t1" AS "t1" GROUP BY "h1"',
        'SELECT "x"."a" FROM "t2" AS "x" WHERE EXISTS(SELECT 1 FROM "t1" AS "x" WHERE "x"."d" = 1)',
    ):
        try:
            references(leak)
        except AssertionError:
            continue
        raise AssertionError(f"the oracle missed {leak}")
