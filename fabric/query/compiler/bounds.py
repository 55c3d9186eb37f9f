"""Size bounds: how large one value of a checked query can grow, per target dialect.

A result's rows are bounded by the row limit and its bytes by the engine's result byte
cap, but both are counted as values arrive: one value arrives whole, so the compiler
bounds what can make one value large. Every construct of the allow-list that can
multiply the size of a value is listed here, refused or bounded, with the reason:

- type parameters (`char(n)`, `varchar(n)`, `numeric(p, s)`, `float(p)`,
  `timestamp(p)`): whole numbers written in the query, within the target's own range and
  the configured maximum length (`FABRIC_MAX_TYPE_LENGTH`). PostgreSQL pads `char(n)` to
  n characters, so `CAST(x AS char(10000000))` turned every row into megabytes; on SQL
  Server every text type becomes `nchar`/`nvarchar`, at most 4,000 characters.
- `replace(x, pattern, replacement)`: grows a value by `len(replacement) / len(pattern)`
  at every match, and nested calls multiply (through other functions too): pattern and
  replacement must be string literals, and the growth of replace calls nested in one
  another at most `MAX_REPLACE_GROWTH`.
- `string_agg` (`group_concat`): a group's value grows with its rows. Allowed only right
  inside `left(..., n)`, n a whole number within the type bound (a cast to `varchar(n)`
  would do on some sources, but DuckDB ignores the length), and never as a window
  function (each row would hold its whole window: the result grows with the square of
  the rows). MySQL and MariaDB cut `GROUP_CONCAT` silently at
  `group_concat_max_len` (the connector sets it above any allowed n).
- Not on the allow-list, refused with their reason (`REFUSED_GROWTH`): `array_agg`
  (grows with its group's rows and an array cannot be cut in Fabric SQL), `repeat`,
  `lpad`/`rpad`, `space`, `replicate`, `format`/`printf` with a width, `to_char` padding,
  `overlay`, `regexp_replace`, the JSON and XML aggregates, and every set-returning
  function (`generate_series`, `unnest`, `range`, ...), which multiplies rows.

Concatenation (`||`, `concat`, `concat_ws`) and copies of a value through nested
subqueries and CTEs (which multiply: `v || v` at every level doubles it) are bounded by
`fabric.query.compiler.widths`: one output value may hold at most 256 values read from
the source, and what the query adds to a row itself (literals, padding, parameters,
their copies) at most one batch's bytes. Also allowed, bounded by other limits: `upper`
and `lower` change a character's size by a small factor that does not compound; numeric
arithmetic (`pow`, `exp`, `*`, `round(x, n)`) is bounded by the source's numeric format
(PostgreSQL: 131,072 digits before the point and 16,383 after, about 144 KiB);
literals and parameters repeated on every row, and joins that multiply rows (cross joins
included), are bounded by the row limit, the result byte cap and the query timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from sqlglot import exp

from fabric.errors import QueryRejected
from fabric.query.compiler.guard import type_name

MAX_REPLACE_GROWTH = 16
"""How many times longer a chain of `replace` calls may make a value."""


@dataclass(frozen=True, slots=True)
class TypeRanges:
    """The type parameters a target accepts and keeps sane."""

    text_length: int
    """Longest `char(n)`, `varchar(n)`, `nchar(n)`, `nvarchar(n)`."""
    decimal_precision: int
    decimal_scale: int
    float_precision: int = 53
    fraction_digits: int = 6
    """Digits of a second's fraction in `time(p)` and `timestamp(p)`."""


# What each target accepts: PostgreSQL's `char` and `varchar` take up to 10,485,760
# characters and `numeric` 1,000 digits; MySQL's `DECIMAL` 65 digits, 30 after the
# point (MariaDB's 38); SQL Server's `nchar`/`nvarchar` 4,000 characters (every text type
# becomes one of them there), `decimal` 38 digits, `datetime2(7)`; DuckDB's `DECIMAL` 38.
_RANGES: MappingProxyType[str, TypeRanges] = MappingProxyType(
    {
        "postgres": TypeRanges(10_485_760, 1000, 1000),
        "mysql": TypeRanges(65_535, 65, 30),
        "tsql": TypeRanges(4_000, 38, 38, fraction_digits=7),
        "duckdb": TypeRanges(65_535, 38, 38),
    }
)
_CAREFUL = TypeRanges(4_000, 38, 38)
"""The ranges of a dialect without its own entry: what every source above accepts."""

_LENGTH_TYPES = frozenset(
    {
        exp.DataType.Type.CHAR,
        exp.DataType.Type.VARCHAR,
        exp.DataType.Type.NCHAR,
        exp.DataType.Type.NVARCHAR,
    }
)
_DECIMAL_TYPES = frozenset({exp.DataType.Type.DECIMAL})
# sqlglot reads `float(p)` as DOUBLE with a parameter.
_FLOAT_TYPES = frozenset({exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE})
_FRACTION_TYPES = frozenset(
    {exp.DataType.Type.TIME, exp.DataType.Type.TIMESTAMP, exp.DataType.Type.TIMESTAMPTZ}
)


def type_ranges(dialect: str) -> TypeRanges:
    return _RANGES.get(dialect, _CAREFUL)


def check_sizes(tree: exp.Expr, dialect: str, max_type_length: int) -> None:
    """Refuse a type parameter out of range, and a size-multiplying construct unbounded."""
    ranges = type_ranges(dialect)
    longest = min(ranges.text_length, max_type_length)
    for node in tree.walk():
        if isinstance(node, exp.DataType):
            _check_type(node, dialect, ranges, longest)
        elif isinstance(node, exp.Replace):
            _check_replace(node)
        elif isinstance(node, exp.GroupConcat):
            _check_string_agg(node, longest)


def _check_type(node: exp.DataType, dialect: str, ranges: TypeRanges, longest: int) -> None:
    """A type's parameters: whole numbers, as many as the type takes, within range."""
    params = node.expressions
    if not params:
        return
    name = type_name(node)
    values = [_whole_number(param, name) for param in params]
    kind = node.this
    if kind in _LENGTH_TYPES:
        where = dialect if longest == ranges.text_length else "this gateway"
        _at_most(name, "a length", values, 1, (longest,), where)
    elif kind in _DECIMAL_TYPES:
        maxima = (ranges.decimal_precision, ranges.decimal_scale)
        _at_most(name, "a precision and a scale", values, 2, maxima, dialect)
        if len(values) == 2 and values[1] > values[0]:
            raise QueryRejected(f"type '{name}': the scale may not exceed the precision")
    elif kind in _FLOAT_TYPES:
        _at_most(name, "a precision", values, 1, (ranges.float_precision,), dialect)
    elif kind in _FRACTION_TYPES:
        _at_most(name, "a precision", values, 1, (ranges.fraction_digits,), dialect, low=0)
    else:
        raise QueryRejected(f"type '{name}' takes no parameters in Fabric SQL")


def _whole_number(param: exp.Expr, name: str) -> int:
    value = param.this if isinstance(param, exp.DataTypeParam) else param
    if (
        isinstance(value, exp.Literal)
        and not value.is_string
        and isinstance(value.this, str)
        and value.this.isdigit()
    ):
        return int(value.this)
    raise QueryRejected(
        f"type '{name}' takes whole numbers written in the query as its parameters "
        "(no parameter, MAX or expression)"
    )


def _at_most(
    name: str,
    what: str,
    values: list[int],
    count: int,
    maxima: tuple[int, ...],
    where: str,
    *,
    low: int = 1,
) -> None:
    if len(values) > count:
        raise QueryRejected(f"type '{name}' takes at most {what}")
    for position, (value, highest) in enumerate(zip(values, maxima, strict=False)):
        floor = low if position == 0 else 0
        if not floor <= value <= highest:
            raise QueryRejected(
                f"type '{name}': parameter {position + 1} must be between {floor} and "
                f"{highest} on {where}"
            )


def _check_replace(node: exp.Replace) -> None:
    pattern, replacement = node.expression, node.args.get("replacement")
    if not _string_literal(pattern) or not (
        _string_literal(replacement) or isinstance(replacement, exp.Null)
    ):
        raise QueryRejected(
            "replace takes its pattern and its replacement as string literals, so how "
            "much it can grow a value is known (no column, parameter or expression)"
        )
    growth = _replace_growth(node)
    if growth > MAX_REPLACE_GROWTH:
        raise QueryRejected(
            f"replace would make a value up to {growth:.0f} times longer (the limit is "
            f"{MAX_REPLACE_GROWTH}): use a shorter replacement or fewer nested calls"
        )


def _string_literal(node: exp.Expr | None) -> bool:
    return isinstance(node, exp.Literal) and node.is_string


def _check_string_agg(node: exp.GroupConcat, longest: int) -> None:
    outer = _outside(node, (exp.Filter, exp.WithinGroup, exp.Paren))
    if isinstance(outer, exp.Window):
        raise QueryRejected(
            "string_agg is not allowed as a window function: every row would hold the "
            "values of its whole window"
        )
    length = _cut_length(outer)
    if length is None or length > longest:
        raise QueryRejected(
            "string_agg must be bounded: its value grows with the rows of its group; "
            f"write left(string_agg(...), n), n a whole number at most {longest}"
        )


def _outside(node: exp.Expr, through: tuple[type[exp.Expr], ...]) -> exp.Expr | None:
    """The first node above `node` that is not one of `through`."""
    parent = node.parent
    while isinstance(parent, through):
        parent = parent.parent
    return parent


def _cut_length(outer: exp.Expr | None) -> int | None:
    """n of `left(agg, n)` when `outer`, the node right around an aggregate, is that
    call and n a whole number written in the query; else None."""
    if isinstance(outer, exp.Left):
        length = outer.expression
        if isinstance(length, exp.Literal) and not length.is_string and length.this.isdigit():
            return int(length.this)
    return None


def _replace_growth(node: exp.Replace) -> float:
    """How many times longer `node` and every `replace` around it (directly or through
    other functions: `replace(upper(replace(...)), ...)`) can make a value."""
    growth = 1.0
    current: exp.Expr | None = node
    while current is not None:
        if isinstance(current, exp.Replace):
            pattern, replacement = current.expression, current.args.get("replacement")
            if (
                isinstance(pattern, exp.Literal)
                and isinstance(replacement, exp.Literal)
                and pattern.is_string
                and replacement.is_string
                and pattern.this
            ):
                growth *= max(1.0, len(replacement.this) / len(pattern.this))
        current = current.parent
    return growth
