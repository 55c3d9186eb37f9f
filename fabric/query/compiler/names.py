"""How a source binds a bare name: where a SELECT's output names stand for its columns.

A bare (unqualified) column name in a query is looked up, innermost query first, among
the columns of that query's FROM clause (every column the table physically has, selected
or not) and, in some clauses and some dialects, among the SELECT's own output names;
then outward, through the queries that enclose it (a correlated reference). Where output
names count, and which wins when a name is both an input column and an output name,
differs per dialect. `NameRules` holds one dialect's answer, clause by clause; the rules
below were found on PostgreSQL 15, MariaDB 10.11 and DuckDB 2.0 (tests/integration/
test_name_binding.py keeps checking the select list, WHERE, GROUP BY, HAVING and ORDER BY
against them) and, for SQL Server, taken from its documentation and made strict where it
is silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from sqlglot import exp

from fabric.query.functions import function_name

__all__ = [
    "DUCKDB_NAMES",
    "MYSQL_NAMES",
    "POSTGRES_NAMES",
    "TSQL_NAMES",
    "AliasUse",
    "Clause",
    "NameRules",
    "OutputNaming",
    "clause_of",
    "implicit_name",
    "implicit_names",
]


class Clause(Enum):
    """Where in a SELECT a name stands."""

    SELECT_LIST = "select list"
    JOIN_ON = "JOIN ... ON"
    WHERE = "WHERE"
    GROUP_ITEM = "GROUP BY item"
    """A bare name that is a whole GROUP BY item (`GROUP BY x`)."""
    GROUP_EXPR = "GROUP BY expression"
    """A name inside a GROUP BY expression (`GROUP BY x + 1`)."""
    HAVING = "HAVING"
    ORDER_ITEM = "ORDER BY item"
    ORDER_EXPR = "ORDER BY expression"
    DISTINCT_ON_ITEM = "DISTINCT ON item"
    DISTINCT_ON_EXPR = "DISTINCT ON expression"
    WINDOW = "window or FILTER"
    """Inside OVER (...), a named WINDOW, or an aggregate's FILTER (WHERE ...)."""
    OTHER = "elsewhere"


class AliasUse(Enum):
    """Whether a bare name may stand for an output name of the same SELECT, and which
    wins when it is also an input column."""

    NONE = "output names are not visible"
    FIRST = "an output name wins over an input column"
    FALLBACK = "an input column wins; else an output name is used"
    EXCLUSIVE = "a name that is both is refused as ambiguous; else whichever it is"
    FALLBACK_REFUSED = (
        "an input column wins; else the source would use an output name, which the gateway refuses"
    )
    REFUSED = "the source may use an output name here; a name that is one is refused"


class OutputNaming(Enum):
    """What names a source gives the outputs a query did not alias."""

    NONE = "none a bare name can match (an expression's text, or no name at all)"
    POSTGRES = "PostgreSQL's (`count(*)` is `count`): bound when the name is certain"
    UNKNOWN = "perhaps some: a bare name that may be one is refused"


@dataclass(frozen=True, slots=True)
class NameRules:
    """One dialect's rules for output names; the defaults are the strict ones (SQL's
    own: output names only as whole ORDER BY items, and a collision refused)."""

    aliases: Mapping[Clause, AliasUse] = field(
        default_factory=lambda: MappingProxyType({Clause.ORDER_ITEM: AliasUse.EXCLUSIVE})
    )
    """Per clause, how output names are used (absent: NONE)."""
    outer_aliases: bool = True
    """A subquery may see an enclosing SELECT's output names (after its input columns).
    The gateway refuses such a reference, so True is the careful default."""
    output_naming: OutputNaming = OutputNaming.UNKNOWN
    """The names of outputs without an alias, which a bare name may match."""
    case_insensitive_outputs: bool = True
    """Output names match a bare name ignoring case (PostgreSQL compares them exactly,
    after folding an unquoted name to lower case)."""

    def alias_use(self, clause: Clause) -> AliasUse:
        return self.aliases.get(clause, AliasUse.NONE)


POSTGRES_NAMES = NameRules(
    aliases=MappingProxyType(
        {
            Clause.ORDER_ITEM: AliasUse.FIRST,
            Clause.DISTINCT_ON_ITEM: AliasUse.FIRST,
            Clause.GROUP_ITEM: AliasUse.FALLBACK,
        }
    ),
    outer_aliases=False,
    output_naming=OutputNaming.POSTGRES,
    case_insensitive_outputs=False,
)
"""PostgreSQL: ORDER BY and DISTINCT ON items look at output names first, GROUP BY items
at input columns first (SQL-92 rules); expressions, WHERE and HAVING never see them."""

DUCKDB_NAMES = NameRules(
    aliases=MappingProxyType(
        {
            Clause.ORDER_ITEM: AliasUse.FIRST,
            Clause.DISTINCT_ON_ITEM: AliasUse.FIRST,
            Clause.GROUP_ITEM: AliasUse.FALLBACK,
            Clause.WHERE: AliasUse.FALLBACK,
            Clause.ORDER_EXPR: AliasUse.FALLBACK,
            # DuckDB picks the alias or the column depending on what is grouped.
            Clause.HAVING: AliasUse.EXCLUSIVE,
            # Lateral aliases (`SELECT a AS y, y + 1`): an input column wins.
            Clause.SELECT_LIST: AliasUse.FALLBACK_REFUSED,
            Clause.GROUP_EXPR: AliasUse.FALLBACK_REFUSED,
            Clause.DISTINCT_ON_EXPR: AliasUse.REFUSED,
            Clause.WINDOW: AliasUse.REFUSED,
        }
    ),
    outer_aliases=True,
    output_naming=OutputNaming.NONE,
    case_insensitive_outputs=True,
)
"""DuckDB: PostgreSQL's rules, plus output names wherever no input column has the name
(WHERE, GROUP BY, HAVING, ORDER BY expressions, the select list, windows)."""

MYSQL_NAMES = NameRules(
    aliases=MappingProxyType(
        {
            Clause.ORDER_ITEM: AliasUse.FIRST,
            Clause.GROUP_ITEM: AliasUse.FALLBACK,
            Clause.GROUP_EXPR: AliasUse.EXCLUSIVE,
            # A name that is both: MariaDB refuses it in HAVING when it is grouped, else
            # takes the alias; in an ORDER BY expression it takes the column, unless the
            # query groups.
            Clause.HAVING: AliasUse.EXCLUSIVE,
            Clause.ORDER_EXPR: AliasUse.EXCLUSIVE,
            Clause.WINDOW: AliasUse.REFUSED,
        }
    ),
    outer_aliases=True,
    output_naming=OutputNaming.NONE,
    case_insensitive_outputs=True,
)
"""MySQL and MariaDB: output names in GROUP BY, HAVING and ORDER BY (expressions too) and
in windows, and a subquery sees the enclosing SELECT's output names; WHERE, ON and the
select list never see them."""

TSQL_NAMES = NameRules(
    aliases=MappingProxyType({Clause.ORDER_ITEM: AliasUse.EXCLUSIVE}),
    outer_aliases=False,
    output_naming=OutputNaming.NONE,
    case_insensitive_outputs=True,
)
"""SQL Server: output names only as whole ORDER BY items. No server runs here to check
which wins when a name is also an input column, so that is refused."""


# -- where a name stands ------------------------------------------------------------------


def clause_of(node: exp.Expr, select: exp.Select) -> tuple[Clause, int]:
    """The clause of `select` that holds `node`, and for JOIN ... ON the join's index
    (else -1). A node inside a window or an aggregate's FILTER is in Clause.WINDOW."""
    child = node
    in_window = False
    while child.parent is not select:
        parent = child.parent
        if parent is None:
            return Clause.OTHER, -1
        if (isinstance(parent, exp.Window) and child.arg_key != "this") or (
            isinstance(parent, exp.Filter) and child.arg_key == "expression"
        ):
            in_window = True
        child = parent
    key = child.arg_key
    if in_window or key == "windows":
        return Clause.WINDOW, -1
    if key == "expressions":
        return Clause.SELECT_LIST, -1
    if key == "joins":
        return Clause.JOIN_ON, child.index or 0
    if key == "where":
        return Clause.WHERE, -1
    if key == "having":
        return Clause.HAVING, -1
    whole = node.parent
    if key == "group":
        return (Clause.GROUP_ITEM if whole is child else Clause.GROUP_EXPR), -1
    if key == "order":
        item = isinstance(whole, exp.Ordered) and whole.parent is child
        return (Clause.ORDER_ITEM if item else Clause.ORDER_EXPR), -1
    if key == "distinct":
        item = whole is child or (isinstance(whole, exp.Tuple) and whole.parent is child)
        return (Clause.DISTINCT_ON_ITEM if item else Clause.DISTINCT_ON_EXPR), -1
    return Clause.OTHER, -1


# -- names of outputs without an alias ------------------------------------------------------

# PostgreSQL names a cast by its type's internal name (`1::integer` is `int4`).
_PG_TYPE_NAMES: dict[object, str] = {
    exp.DataType.Type.SMALLINT: "int2",
    exp.DataType.Type.INT: "int4",
    exp.DataType.Type.BIGINT: "int8",
    exp.DataType.Type.DECIMAL: "numeric",
    exp.DataType.Type.FLOAT: "float4",
    exp.DataType.Type.DOUBLE: "float8",
    exp.DataType.Type.BOOLEAN: "bool",
    exp.DataType.Type.CHAR: "bpchar",
    exp.DataType.Type.NCHAR: "bpchar",
    exp.DataType.Type.VARCHAR: "varchar",
    exp.DataType.Type.NVARCHAR: "varchar",
    exp.DataType.Type.TIMESTAMPTZ: "timestamptz",
}
# Functions PostgreSQL's grammar renames (TRIM is btrim, ...) or sqlglot reads as another.
_PG_FUNCTION_NAMES: dict[str, tuple[str, ...]] = {
    "trim": ("btrim", "ltrim", "rtrim"),
    "extract": ("date_part", "extract"),
    "current_timestamp": ("now", "current_timestamp", "localtimestamp"),
    "length": ("char_length", "character_length", "length"),
    "substring": ("substr", "substring"),
    "power": ("pow", "power"),
    "ceil": ("ceiling", "ceil"),
    "var_samp": ("variance", "var_samp"),
    "position": ("strpos", "position"),
}
UNNAMED = "?column?"


def implicit_names(node: exp.Expr, source_text: str) -> frozenset[str]:
    """The names PostgreSQL may give an output without an alias (a superset: every
    spelling the expression may have had), after PostgreSQL's FigureColname."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        return frozenset({node.name})
    if isinstance(node, (exp.Cast, exp.TryCast)):
        inner = node.this
        while isinstance(inner, exp.Paren):
            inner = inner.this
        if isinstance(inner, (exp.Column, exp.Func)) and not isinstance(inner, exp.Cast):
            return implicit_names(inner, source_text)
        to = node.to
        names = {to.sql(dialect="postgres").split("(", 1)[0].strip().lower(), UNNAMED}
        if to.this in _PG_TYPE_NAMES:
            names.add(_PG_TYPE_NAMES[to.this])
        return frozenset(names | implicit_names(inner, source_text))
    if isinstance(node, (exp.Window, exp.Filter, exp.WithinGroup)):
        return implicit_names(node.this, source_text)
    if isinstance(node, (exp.Case, exp.If)):
        return frozenset({"case"})
    if isinstance(node, exp.Exists):
        return frozenset({"exists"})
    if isinstance(node, exp.Subquery):
        query = node.unnest()
        if isinstance(query, exp.Select) and query.expressions:
            first = query.expressions[0]
            if isinstance(first, exp.Alias):
                return frozenset({first.alias})
            return implicit_names(first, source_text)
        return frozenset({UNNAMED})
    if isinstance(node, exp.Boolean):
        return frozenset({"bool"})
    if isinstance(node, exp.Interval):
        return frozenset({"interval"})
    if isinstance(node, exp.Func) and not isinstance(node, (exp.Binary, exp.Unary)):
        names = {function_name(node), node.sql_name().lower(), UNNAMED}
        written = _written_name(node, source_text)
        if written:
            names.add(written)
        for name in list(names):
            names.update(_PG_FUNCTION_NAMES.get(name, ()))
        return frozenset(names)
    return frozenset({UNNAMED})


def implicit_name(node: exp.Expr, source_text: str) -> str | None:
    """The name PostgreSQL gives an output without an alias, when it is certain (a
    column, a cast of one, a function as written, CASE, EXISTS); else None."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        return node.name
    if isinstance(node, (exp.Cast, exp.TryCast)):
        inner = node.this
        while isinstance(inner, exp.Paren):
            inner = inner.this
        return inner.name if isinstance(inner, exp.Column) else None
    if isinstance(node, (exp.Window, exp.Filter)):
        return implicit_name(node.this, source_text)
    if isinstance(node, exp.Case):
        return "case"
    if isinstance(node, exp.Exists):
        return "exists"
    if isinstance(node, exp.Func) and not isinstance(node, (exp.Binary, exp.Unary)):
        written = _written_name(node, source_text)
        if written and written not in _PG_FUNCTION_NAMES and written == function_name(node):
            return written
    return None


def _written_name(node: exp.Expr, source_text: str) -> str:
    """A function's name as the query wrote it (sqlglot may read it as another, `substr`
    as SUBSTRING), folded as PostgreSQL folds an unquoted name; "" when unknown."""
    start, end = node.meta.get("start"), node.meta.get("end")
    if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start <= end:
        return ""
    text = source_text[start : end + 1]
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('""', '"')
    return text.lower() if text.replace("_", "").isalnum() else ""
