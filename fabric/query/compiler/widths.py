"""How wide a row of a resolved query can be, from what the query itself writes.

A row's size is not known before it arrives, and a driver holds a batch of rows before
the engine can count them, so the compiler infers, output by output, an upper bound in
three parts (`Width`): how many values read from the source one value holds (`x || x`
holds two; a derived column read twice holds its value twice), how many bytes the query
adds itself (its literals, `char(n)` padding, a cut `string_agg`), and how many times
each parameter's value appears. The inference follows the query's scopes: a derived
table's or CTE's columns carry the widths of the expressions that define them, so a
value doubled at every level of nested subqueries is seen to grow exponentially.

Two limits follow (`check_row_width`, and `CompiledStatement.bind` for parameters):
one output value may hold at most `MAX_VALUE_PARTS` values read from the source, and
what the query adds to one row (parameters included) at most `QueryLimits.max_row_bytes`.
Everything else about a row's size is the source's own data, which the result byte cap
counts as it arrives.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlglot import exp

from fabric.errors import QueryRejected

MAX_VALUE_PARTS = 256
"""Values read from the source that one output value may hold (`x || y || ...`, and
their copies through nested subqueries)."""
VALUE_BYTES = 64
"""What one value read from the source is taken to weigh when sizing batches: the
source's own data is not known before it arrives."""

_BYTES_PER_CHARACTER = 4
"""The most bytes one character takes in UTF-8."""
_FIXED = 32
"""Bytes of a value whose type has a fixed size (numbers, dates, booleans)."""

_LENGTH_TYPES = frozenset(
    {
        exp.DataType.Type.CHAR,
        exp.DataType.Type.VARCHAR,
        exp.DataType.Type.NCHAR,
        exp.DataType.Type.NVARCHAR,
    }
)
_TEXT_TYPES = frozenset({exp.DataType.Type.TEXT, *_LENGTH_TYPES})
# Values of a fixed size whatever their arguments: aggregates and functions of numbers,
# dates, positions and truth values.
_FIXED_NODES: tuple[type[exp.Expr], ...] = (
    exp.Count,
    exp.Sum,
    exp.Avg,
    exp.Stddev,
    exp.StddevPop,
    exp.StddevSamp,
    exp.Variance,
    exp.VariancePop,
    exp.Corr,
    exp.CovarPop,
    exp.CovarSamp,
    exp.LogicalAnd,
    exp.LogicalOr,
    exp.RowNumber,
    exp.Rank,
    exp.DenseRank,
    exp.PercentRank,
    exp.CumeDist,
    exp.Ntile,
    exp.Length,
    exp.StrPosition,
    exp.StartsWith,
    exp.Extract,
    exp.DateTrunc,
    exp.TimestampTrunc,
    exp.CurrentDate,
    exp.CurrentTimestamp,
    exp.Exists,
    exp.Interval,
    exp.Predicate,
    exp.Connector,
    exp.Not,
)
# Values that are one of their arguments (the widest of them).
_ONE_OF: tuple[type[exp.Expr], ...] = (exp.Coalesce, exp.Greatest, exp.Least)
# Values that are their first argument, or a value like it.
_SAME_AS_FIRST: tuple[type[exp.Expr], ...] = (
    exp.Alias,
    exp.Paren,
    exp.Nullif,
    exp.Trim,
    exp.Upper,
    exp.Lower,
    exp.Min,
    exp.Max,
    exp.Window,
    exp.Filter,
    exp.FirstValue,
    exp.LastValue,
    exp.NthValue,
    exp.GroupConcat,
)


@dataclass(frozen=True, slots=True)
class Width:
    """An upper bound of a value's (or a row's) size: `parts` values read from the
    source, `size` bytes the query adds, and each parameter's value `params[name]` times."""

    parts: int = 0
    size: int = 0
    params: tuple[tuple[str, int], ...] = ()

    def __add__(self, other: Width) -> Width:
        counts = dict(self.params)
        for name, times in other.params:
            counts[name] = counts.get(name, 0) + times
        return Width(self.parts + other.parts, self.size + other.size, tuple(counts.items()))

    def widest(self, other: Width) -> Width:
        """The bound of a value that is one of the two."""
        counts = dict(self.params)
        for name, times in other.params:
            counts[name] = max(counts.get(name, 0), times)
        return Width(
            max(self.parts, other.parts), max(self.size, other.size), tuple(counts.items())
        )

    def times(self, factor: float) -> Width:
        return Width(
            math.ceil(self.parts * factor),
            math.ceil(self.size * factor),
            tuple((name, math.ceil(count * factor)) for name, count in self.params),
        )


_ONE_VALUE = Width(parts=1)
_FIXED_WIDTH = Width(size=_FIXED)


def _sum(widths: Iterable[Width]) -> Width:
    total = Width()
    for width in widths:
        total = total + width
    return total


def _widest(widths: Iterable[Width]) -> Width:
    result = Width()
    for width in widths:
        result = result.widest(width)
    return result


@dataclass
class _Inference:
    """Widths of the outputs of every query of one resolved tree, memoised."""

    outputs: dict[int, list[tuple[str, Width]]] = field(default_factory=dict)

    # -- queries ----------------------------------------------------------------------

    def query(self, node: exp.Expr) -> list[tuple[str, Width]]:
        """(name, width) of each output column of a SELECT or set operation."""
        found = self.outputs.get(id(node))
        if found is not None:
            return found
        if isinstance(node, exp.Subquery):
            result = self.query(node.this)
        elif isinstance(node, exp.SetOperation):
            left, right = self.query(node.left), self.query(node.right)
            result = [
                (name, width.widest(other))
                for (name, width), (_, other) in zip(left, right, strict=False)
            ]
        elif isinstance(node, exp.Select):
            result = [(p.alias_or_name, self.value(p, node)) for p in node.expressions]
        else:
            result = []
        self.outputs[id(node)] = result
        return result

    # -- values -----------------------------------------------------------------------

    def value(self, node: exp.Expr, select: exp.Select) -> Width:
        if isinstance(node, exp.Column):
            return self.column(node, select)
        if isinstance(node, exp.Literal):
            text = str(node.this)
            return Width(
                size=len(text.encode("utf-8", "surrogatepass")) if node.is_string else len(text)
            )
        if isinstance(node, exp.Placeholder):
            return Width(params=((node.name, 1),))
        if isinstance(node, exp.Null | exp.Boolean | exp.Star | exp.DataType | exp.Var):
            return Width(size=1)
        if isinstance(node, exp.Cast):
            return self.cast(node, select)
        if isinstance(node, exp.Left | exp.Right):
            return _cut(self.value(node.this, select), node.expression)
        if isinstance(node, exp.Substring):
            return _cut(self.value(node.this, select), node.args.get("length"))
        if isinstance(node, exp.Replace):
            return self.value(node.this, select).times(_replace_growth(node))
        if isinstance(node, _SAME_AS_FIRST):
            return self.value(node.this, select)
        if isinstance(node, _ONE_OF):
            return _widest(self.value(arg, select) for arg in [node.this, *node.expressions])
        if isinstance(node, exp.Case):
            results = [branch.args.get("true") for branch in node.args.get("ifs") or []]
            results.append(node.args.get("default"))
            return _widest(self.value(r, select) for r in results if r is not None)
        if isinstance(node, exp.If):
            results = [node.args.get("true"), node.args.get("false")]
            return _widest(self.value(r, select) for r in results if r is not None)
        if isinstance(node, exp.Lag | exp.Lead):
            default = node.args.get("default")
            width = self.value(node.this, select)
            return width.widest(self.value(default, select)) if default is not None else width
        if isinstance(node, exp.WithinGroup):
            # percentile_disc returns one of the values it orders; the others a number
            order = node.expression
            if isinstance(node.this, exp.PercentileDisc) and isinstance(order, exp.Order):
                return _widest(self.value(o, select) for o in order.expressions)
            return _FIXED_WIDTH
        if isinstance(node, exp.Ordered):
            return self.value(node.this, select)
        if isinstance(node, exp.Subquery):
            outputs = self.query(node)
            return outputs[0][1] if outputs else Width()
        if isinstance(node, exp.DPipe):
            return self.value(node.this, select) + self.value(node.expression, select)
        if isinstance(node, (*_FIXED_NODES, exp.Binary)):
            return _FIXED_WIDTH
        # Anything else holds at most all of its arguments (concatenation among them).
        return _sum(self.value(child, select) for child in node.iter_expressions())

    def cast(self, node: exp.Cast, select: exp.Select) -> Width:
        to = node.args.get("to")
        inner = self.value(node.this, select)
        if not isinstance(to, exp.DataType) or to.this not in _TEXT_TYPES:
            if isinstance(to, exp.DataType) and to.this == exp.DataType.Type.DECIMAL:
                digits = _number(to.expressions[0]) if to.expressions else None
                return Width(size=(digits or 1000) + 2)
            return _FIXED_WIDTH
        if to.this in _LENGTH_TYPES and to.expressions:
            length = _number(to.expressions[0])
            if length is not None:
                if to.this in (exp.DataType.Type.CHAR, exp.DataType.Type.NCHAR):
                    return Width(size=length * _BYTES_PER_CHARACTER)  # padded to n
                return _cut(inner, exp.Literal.number(length))
        return inner

    def column(self, column: exp.Column, select: exp.Select) -> Width:
        """A column's width: one value of an entity's, or what defines a derived table's
        or CTE's column (looked up in the enclosing queries for a correlated one)."""
        scope: exp.Expr | None = select
        while scope is not None:
            if isinstance(scope, exp.Select):
                source = _sources(scope).get(column.table)
                if source is not None:
                    return self.derived_column(source, column.name)
            scope = scope.parent
        return _ONE_VALUE

    def derived_column(self, source: _Source, name: str) -> Width:
        if source.query is None:
            return _ONE_VALUE  # an entity: its values are read from the source
        outputs = self.query(source.query)
        names = [*source.names, *(n for n, _ in outputs[len(source.names) :])]
        for position, candidate in enumerate(names):
            if candidate == name and position < len(outputs):
                return outputs[position][1]
        # Not found by name (cannot happen on a resolved tree): the widest of them.
        return _widest(width for _, width in outputs)


@dataclass(frozen=True, slots=True)
class _Source:
    """A FROM item: an entity (`query` None) or a derived table or CTE, with the column
    names its alias list gives, by position."""

    query: exp.Expr | None
    names: tuple[str, ...] = ()


def _sources(select: exp.Select) -> dict[str, _Source]:
    """The FROM items of `select`, by alias."""
    items: list[exp.Expr] = []
    from_ = select.args.get("from_")
    if from_ is not None:
        items.append(from_.this)
    items.extend(join.this for join in select.args.get("joins") or [])
    sources: dict[str, _Source] = {}
    for item in items:
        if isinstance(item, exp.Subquery):
            sources[item.alias_or_name] = _Source(item.this, _alias_names(item))
        elif isinstance(item, exp.Table):
            cte = None if item.args.get("db") is not None else _cte(item)
            sources[item.alias_or_name] = _Source(None) if cte is None else cte
    return sources


def _alias_names(node: exp.Expr) -> tuple[str, ...]:
    alias = node.args.get("alias")
    columns = alias.args.get("columns") if isinstance(alias, exp.TableAlias) else None
    return tuple(column.name for column in columns or [])


def _cte(table: exp.Table) -> _Source | None:
    """The CTE `table` names, from the nearest WITH above it."""
    node: exp.Expr | None = table.parent
    while node is not None:
        with_ = node.args.get("with_") if isinstance(node, exp.Query) else None
        if isinstance(with_, exp.With):
            for cte in with_.expressions:
                if cte.alias == table.name:
                    return _Source(cte.this, _alias_names(cte))
        node = node.parent
    return None


def _number(param: exp.Expr) -> int | None:
    value = param.this if isinstance(param, exp.DataTypeParam) else param
    if isinstance(value, exp.Literal) and not value.is_string and str(value.this).isdigit():
        return int(value.this)
    return None


def _cut(width: Width, length: exp.Expr | None) -> Width:
    """`width` cut to a length written in the query (n characters), when it is one."""
    n = _number(length) if length is not None else None
    if n is None:
        return width
    cut = n * _BYTES_PER_CHARACTER
    if width.parts == 0 and not width.params:
        return Width(size=min(width.size, cut))
    return Width(size=cut)


def _replace_growth(node: exp.Replace) -> float:
    pattern, replacement = node.expression, node.args.get("replacement")
    if (
        isinstance(pattern, exp.Literal)
        and isinstance(replacement, exp.Literal)
        and pattern.is_string
        and replacement.is_string
        and pattern.this
    ):
        return max(1.0, len(replacement.this) / len(pattern.this))
    return 1.0


@dataclass(frozen=True, slots=True)
class RowWidth:
    """The bound of one row of a query's result."""

    parts: int
    """Values read from the source one row holds."""
    size: int
    """Bytes the query adds to one row, its parameters apart."""
    params: tuple[tuple[str, int], ...]
    """How many times each parameter's value appears in one row."""


def row_width(tree: exp.Expr) -> RowWidth:
    """The width of one row of the resolved query `tree`; QueryRejected when one of its
    values would hold more than MAX_VALUE_PARTS values read from the source."""
    outputs = _Inference().query(tree)
    for position, (name, width) in enumerate(outputs, start=1):
        if width.parts > MAX_VALUE_PARTS:
            shown = name if len(name) <= 40 else name[:40] + "..."
            raise QueryRejected(
                f"output column {position} ('{shown}') would hold up to {width.parts} values "
                f"read from the source (concatenations, and their copies through nested "
                f"subqueries, multiply); at most {MAX_VALUE_PARTS}"
            )
    total = _sum(width for _, width in outputs)
    return RowWidth(total.parts, total.size, total.params)
