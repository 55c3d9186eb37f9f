"""A schema with hidden columns and a grammar of nested queries over it, for checking that
the compiler binds every name as the source does (tests/integration/test_name_binding.py).

The tables share column names on purpose, and a name hidden in one table is visible in
another (`x` is hidden in t1 and visible in t3; `h` is hidden in t1 and t2), so a name
can bind to an inner table, an outer table, an output alias or a hidden column depending
on where it stands. Every column holds values no other column holds, so a name bound to
another column than the source binds it changes the result.

The grammar writes plain SQL that PostgreSQL, MariaDB and DuckDB all read: nested
SELECTs (scalar and correlated subqueries, EXISTS and IN), derived tables with aliases,
CTEs, joins, GROUP BY / HAVING / ORDER BY naming outputs and inputs by names that
collide, and table aliases named like tables and columns.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st
from sqlglot import parse_one

from fabric.model import CatalogSnapshot, ColumnInfo, Entity

# table -> its physical columns, in order
PHYSICAL: dict[str, tuple[str, ...]] = {
    "t1": ("id", "a", "b", "h", "x"),
    "t2": ("id", "a", "c", "h"),
    "t3": ("id", "x", "c", "b"),
}
# table -> the columns apps may read; the rest are hidden
SELECTED: dict[str, tuple[str, ...]] = {
    "t1": ("id", "a", "b"),
    "t2": ("id", "a", "c"),
    "t3": ("id", "x", "c", "b"),
}


def _rows(table: str) -> list[tuple[int, ...]]:
    """A few rows; groupable columns repeat, and no two columns share a value."""
    if table == "t1":
        return [(i, i % 3, 10 + i % 2, 100 + i, 200 + i) for i in range(1, 6)]
    if table == "t2":
        return [(i, 20 + i % 2, 30 + i, 300 + i) for i in range(1, 5)]
    return [(i, 40 + i % 3, 50 + i % 2, 60 + i) for i in range(2, 7)]


ROWS: dict[str, list[tuple[int, ...]]] = {table: _rows(table) for table in PHYSICAL}


def catalog(schema: str, *, hide: bool) -> CatalogSnapshot:
    """The selection over `schema`: only SELECTED when `hide`, else every column."""
    entities = {}
    for table, physical in PHYSICAL.items():
        chosen = SELECTED[table] if hide else physical
        entities[table] = Entity(
            table,
            schema,
            table,
            tuple(ColumnInfo(name, "integer", pa.int32()) for name in chosen),
            hidden_columns=tuple(name for name in physical if name not in chosen),
        )
    return CatalogSnapshot(tenant="t", connection="c", version=1, entities=entities)


def with_schema(snapshot: CatalogSnapshot, schema: str) -> CatalogSnapshot:
    entities = {k: replace(e, schema=schema) for k, e in snapshot.entities.items()}
    return replace(snapshot, entities=entities)


def ordered(sql: str) -> bool:
    """Whether the outermost query of `sql` (as the grammar writes it) has an ORDER BY."""
    tree = parse_one(sql, read="postgres")
    return tree.args.get("order") is not None


def canonical(rows: list[tuple[Any, ...]] | list[Any], in_order: bool) -> list[tuple[Any, ...]]:
    """Rows as a list of tuples of plain values (ints for integral numbers), sorted
    unless their order is the query's (an ORDER BY), so results of different drivers
    compare."""

    def plain(value: Any) -> Any:
        if isinstance(value, Decimal) and value == value.to_integral_value():
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    normal = [tuple(plain(v) for v in row) for row in rows]
    return normal if in_order else sorted(normal, key=repr)


# -- the grammar ------------------------------------------------------------------------

NAMES = ("id", "a", "b", "c", "h", "x")
"""Bare names a query uses: each is visible in some table and hidden or absent in others."""
OUTPUT_NAMES = ("h", "x", "h", "x", "a", "b", "y", "n")
"""Output aliases: most collide with an input column somewhere."""
TABLE_ALIASES = (None, None, None, "s", "p", "t1", "t3", "x")


@dataclass(frozen=True)
class Rel:
    """A FROM item as the generator believes it: its name in the query and columns."""

    name: str
    columns: tuple[str, ...]
    hidden: tuple[str, ...] = ()
    """Columns the selection hides (the generator aims names at them)."""


@dataclass(frozen=True)
class Level:
    """The FROM items of one query level, innermost level first in a list of them."""

    rels: tuple[Rel, ...]


def _draw_name(draw: st.DrawFn, levels: list[Level]) -> str:
    """A column reference: a column of the innermost FROM clause (qualified or bare), a
    bare column of an enclosing one (a correlated reference), or any name."""
    inner = [(rel, c) for rel in levels[0].rels for c in rel.columns] if levels else []
    outer = [(rel, c) for level in levels[1:] for rel in level.rels for c in rel.columns]
    # Inside a subquery, often a name of an enclosing query, preferably one the inner
    # table hides: the source binds it to the hidden column, not the outer one.
    choice = draw(st.integers(0, 9))
    if outer and choice >= 6:
        hidden_here = {c for rel in levels[0].rels for c in rel.hidden}
        aimed = [c for _, c in outer if c in hidden_here]
        if draw(st.booleans()) and aimed:
            return draw(st.sampled_from(aimed))
        return draw(st.sampled_from([c for _, c in outer]))
    choice = draw(st.integers(0, 9))
    if choice < 3 and inner:
        rel, column = draw(st.sampled_from(inner))
        return f"{rel.name}.{column}"
    if choice < 7 and inner:
        # A name only one table of the level has, when there is one (else any).
        counts = Counter(c for _, c in inner)
        unique = [c for _, c in inner if counts[c] == 1]
        if draw(st.booleans()) or unique:
            return draw(st.sampled_from(unique or [c for _, c in inner]))
        rel, column = draw(st.sampled_from(inner))
        return f"{rel.name}.{column}"
    if choice < 9 and outer:
        return draw(st.sampled_from([c for _, c in outer]))
    return draw(st.sampled_from(NAMES))


def _draw_value(draw: st.DrawFn, levels: list[Level]) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return str(draw(st.integers(0, 60)))
    if kind == 1:
        return f"{_draw_name(draw, levels)} + {draw(st.integers(0, 3))}"
    return _draw_name(draw, levels)


@st.composite
def condition(draw: st.DrawFn, levels: list[Level], depth: int, ctes: tuple[Rel, ...]) -> str:
    kind = draw(st.integers(0, 8))
    if kind <= 3 or depth >= 2:
        op = draw(st.sampled_from(["=", "<", ">", "<>", ">="]))
        return f"{_draw_value(draw, levels)} {op} {_draw_value(draw, levels)}"
    if kind == 4:
        left = draw(condition(levels, depth + 1, ctes))
        right = draw(condition(levels, depth + 1, ctes))
        return f"({left} {draw(st.sampled_from(['AND', 'OR']))} {right})"
    if kind in (5, 6):
        # PostgreSQL drops an EXISTS subquery's select list before it checks privileges,
        # so the oracle could not see a name there: the list is a constant.
        inner, _ = draw(select(levels, depth + 1, ctes, width=1, aggregate=False, constant=True))
        return f"EXISTS ({inner})"
    inner, _ = draw(select(levels, depth + 1, ctes, width=1, aggregate=False))
    negate = draw(st.sampled_from(["", "NOT "]))
    return f"{_draw_name(draw, levels)} {negate}IN ({inner})"


@st.composite
def from_item(
    draw: st.DrawFn,
    index: int,
    depth: int,
    ctes: tuple[Rel, ...],
    taken: set[str],
    kind: str | None = None,
) -> tuple[str, Rel]:
    # Subqueries mostly read the tables with hidden columns.
    kinds = ["t1", "t2", "t3", "t1", "t3"] if depth == 0 else ["t1", "t2", "t1", "t2", "t3"]
    if depth < 2:
        kinds.append("derived")
    if ctes:
        kinds.append("cte")
    kind = kind or draw(st.sampled_from(kinds))
    if kind == "derived":
        inner, outputs = draw(select([], depth + 1, ctes, width=None, aggregate=None))
        name = f"d{depth}{index}"
        return f"({inner}) AS {name}", Rel(name, tuple(o for o in outputs if o))
    hidden: tuple[str, ...] = ()
    if kind == "cte":
        cte = draw(st.sampled_from(ctes))
        base, columns = cte.name, cte.columns
    else:
        base, columns = kind, PHYSICAL[kind]
        hidden = tuple(c for c in columns if c not in SELECTED[kind])
    alias = draw(st.sampled_from(TABLE_ALIASES))
    if alias == base or alias in taken:
        alias = None
    name = alias or base
    if name in taken:
        name = f"{base}_{depth}{index}"
        alias = name
    return (base if alias is None else f"{base} AS {alias}"), Rel(name, columns, hidden)


def _implicit(expression: str) -> str:
    """The name PostgreSQL gives an unaliased output the grammar writes ("" for none a
    query could write)."""
    if "(" in expression:
        return expression.split("(", 1)[0].strip().lower()
    return expression.rsplit(".", 1)[-1] if " " not in expression else ""


@st.composite
def select(
    draw: st.DrawFn,
    outer: list[Level],
    depth: int,
    ctes: tuple[Rel, ...],
    *,
    width: int | None,
    aggregate: bool | None,
    first: str | None = None,
    constant: bool = False,
) -> tuple[str, tuple[str, ...]]:
    """A SELECT (over `outer` levels for correlation) and the names of its outputs;
    `first` forces the kind of its first FROM item, `constant` makes the select list 1."""
    taken: set[str] = set()
    items: list[str] = []
    rels: list[Rel] = []
    for index in range(1 + (draw(st.integers(0, 2)) == 0)):
        text, rel = draw(from_item(index, depth, ctes, taken, first if index == 0 else None))
        taken.add(rel.name)
        items.append(text)
        rels.append(rel)
    levels = [Level(tuple(rels)), *outer]
    sql_from = items[0]
    for index, item in enumerate(items[1:], start=1):
        on_levels = [Level(tuple(rels[: index + 1])), *outer]
        join = draw(st.sampled_from(["JOIN", "LEFT JOIN"]))
        sql_from += f" {join} {item} ON {draw(condition(on_levels, 2, ctes))}"
    grouped = draw(st.booleans()) if aggregate is None else aggregate
    count = width or draw(st.integers(1, 2))
    projections: list[str] = []
    outputs: list[str] = []
    key = ""
    for index in range(count):
        if grouped and index == 0:
            key = _draw_name(draw, levels)
            expression = key
        elif grouped:
            function = draw(st.sampled_from(["count", "max", "sum", "min"]))
            expression = f"{function}({_draw_name(draw, levels)})"
        else:
            kind = draw(st.integers(0, 5))
            # Only where the output is read: PostgreSQL drops an unread output's
            # subquery before it checks privileges, so the oracle could not see it.
            if kind == 0 and depth == 0:
                inner, _ = draw(scalar(levels, depth + 1, ctes))
                expression = f"({inner})"
            elif kind == 1:
                expression = _draw_value(draw, levels)
            else:
                expression = _draw_name(draw, levels)
        if draw(st.integers(0, 2)) or expression.startswith("("):
            # Often named like a column the FROM clause hides (GROUP BY / ORDER BY bind
            # such a name to the hidden column first, or to the output).
            hidden_here = sorted({c for rel in rels for c in rel.hidden})
            if draw(st.booleans()) and hidden_here:
                name = draw(st.sampled_from(hidden_here))
            else:
                name = draw(st.sampled_from(OUTPUT_NAMES))
            projections.append(f"{expression} AS {name}")
            outputs.append(name)
        else:
            projections.append(expression)
            outputs.append(_implicit(expression))
    if constant:
        projections, outputs = ["1"], [""]
    named = [name for name in outputs if name]
    sql = f"SELECT {', '.join(projections)} FROM {sql_from}"
    if draw(st.booleans()):
        sql += f" WHERE {draw(condition(levels, depth, ctes))}"
    if grouped:
        others = draw(st.sampled_from(NAMES))
        group = draw(st.sampled_from([key, key, outputs[0] or key, outputs[0] or key, others]))
        if draw(st.integers(0, 4)) == 0:
            group = f"{group} + 0"
        sql += f" GROUP BY {group}"
        if draw(st.booleans()):
            having = draw(
                st.sampled_from(
                    [
                        "count(*) > 0",
                        f"max({_draw_name(draw, levels)}) > {draw(st.integers(0, 60))}",
                        f"{draw(st.sampled_from(named + list(NAMES)))} > 0",
                    ]
                )
            )
            sql += f" HAVING {having}"
    if depth == 0 and draw(st.booleans()):
        order = draw(
            st.sampled_from(
                [*named, *NAMES, f"{draw(st.sampled_from(named + list(NAMES)))} + 0", "1"]
            )
        )
        sql += f" ORDER BY {order}{draw(st.sampled_from(['', ' DESC']))}"
    return sql, tuple(outputs)


@st.composite
def scalar(
    draw: st.DrawFn, outer: list[Level], depth: int, ctes: tuple[Rel, ...]
) -> tuple[str, tuple[str, ...]]:
    """A one-row subquery: an aggregate over a table, often correlated."""
    text, rel = draw(from_item(0, 2, ctes, set()))
    levels = [Level((rel,)), *outer]
    function = draw(st.sampled_from(["max", "min", "count", "sum"]))
    sql = f"SELECT {function}({_draw_name(draw, levels)}) FROM {text}"
    if draw(st.integers(0, 3)):
        sql += f" WHERE {draw(condition(levels, max(depth, 1), ctes))}"
    return sql, (function,)


@st.composite
def queries(draw: st.DrawFn) -> str:
    ctes: tuple[Rel, ...] = ()
    prefix = ""
    if draw(st.integers(0, 3)) == 0:
        body, outputs = draw(select([], 1, (), width=None, aggregate=None))
        name = draw(st.sampled_from(["w", "cte"]))
        ctes = (Rel(name, tuple(o for o in outputs if o)),)
        prefix = f"WITH {name} AS ({body}) "
    # A CTE the query does not read is not checked by PostgreSQL: read it.
    first = "cte" if ctes else None
    sql, _ = draw(select([], 0, ctes, width=None, aggregate=None, first=first))
    return prefix + sql
