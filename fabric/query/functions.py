"""The function allow-list: which SQL functions a Fabric query may call.

The compiler fails closed: a function is allowed only when its sqlglot expression class is
listed here (matched by exact type, so an unlisted subclass never slips through). Anything
sqlglot does not recognise parses as `exp.Anonymous` and is refused unless its lower-case
name is in `ALLOWED_ANONYMOUS`. The lists hold deterministic-ish analytics functions only:
nothing that sleeps, reads files or settings, touches sequences or transactions, returns a
set of rows, or can be told to allocate unbounded memory (`repeat`, `lpad`: see
`REFUSED_GROWTH`, and `fabric.query.compiler.bounds` for the allowed functions whose
size is bounded).
"""

from __future__ import annotations

import re
from types import MappingProxyType

from sqlglot import exp

from connectors import registry

AGGREGATES: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Count,
        exp.Sum,
        exp.Avg,
        exp.Min,
        exp.Max,
        exp.Stddev,
        exp.StddevPop,
        exp.StddevSamp,
        exp.Variance,
        exp.VariancePop,
        exp.LogicalAnd,  # bool_and
        exp.LogicalOr,  # bool_or
        exp.GroupConcat,  # string_agg
        exp.PercentileCont,
        exp.PercentileDisc,
        exp.Corr,
        exp.CovarPop,
        exp.CovarSamp,
    }
)
"""Aggregate functions (also usable as window functions with OVER)."""

WINDOW_FUNCTIONS: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.RowNumber,
        exp.Rank,
        exp.DenseRank,
        exp.PercentRank,
        exp.CumeDist,
        exp.Ntile,
        exp.Lag,
        exp.Lead,
        exp.FirstValue,
        exp.LastValue,
        exp.NthValue,
    }
)
"""Window-only functions."""

SCALARS: frozenset[type[exp.Expr]] = frozenset(
    {
        # numbers
        exp.Abs,
        exp.Round,
        exp.Floor,
        exp.Ceil,
        exp.Trunc,
        exp.Sqrt,
        exp.Cbrt,
        exp.Pow,
        exp.Ln,
        exp.Log,
        exp.Exp,
        exp.Sign,
        # null handling and comparison
        exp.Coalesce,
        exp.Nullif,
        exp.Greatest,
        exp.Least,
        # text
        exp.Lower,
        exp.Upper,
        exp.Length,
        exp.Substring,
        exp.Trim,
        exp.Concat,
        exp.ConcatWs,
        exp.Replace,
        exp.StrPosition,  # position / strpos
        exp.Left,
        exp.Right,
        exp.StartsWith,
        # dates and times
        exp.Extract,  # extract / date_part
        exp.DateTrunc,
        exp.TimestampTrunc,  # date_trunc on timestamps
        exp.CurrentDate,
        exp.CurrentTimestamp,  # now() / current_timestamp
        # conditionals and conversion
        exp.Case,
        exp.If,
        exp.Cast,
        exp.Exists,  # EXISTS (subquery); the subquery is checked like any other
    }
)
"""Scalar functions and function-like constructs."""

ALLOWED_FUNCTIONS: frozenset[type[exp.Expr]] = AGGREGATES | WINDOW_FUNCTIONS | SCALARS
"""Every function class a query may use."""

ALLOWED_ANONYMOUS: frozenset[str] = frozenset()
"""Lower-case names of functions sqlglot does not model that are nevertheless allowed.

Empty on purpose: an unknown function is generated verbatim into every dialect, so one is
added here only after checking what it does on every source."""


REFUSED_GROWTH: MappingProxyType[str, str] = MappingProxyType(
    {
        "repeat": "it repeats a value any number of times",
        "replicate": "it repeats a value any number of times",
        "space": "it makes a value of any length",
        "lpad": "it pads a value to any length",
        "rpad": "it pads a value to any length",
        "format": "its width specifiers pad a value to any length",
        "printf": "its width specifiers pad a value to any length",
        "to_char": "its format pads a value to any length",
        "overlay": "it inserts one value into another, and chains multiply",
        "regexp_replace": "its replacements grow a value at every match",
        "array_fill": "it makes an array of any length",
        "array_agg": "a group's value grows with its rows, and an array cannot be cut to a "
        "length in Fabric SQL (aggregate to text: left(string_agg(...), n))",
        "listagg": "a group's value grows with its rows",
        "json_agg": "a group's value grows with its rows",
        "jsonb_agg": "a group's value grows with its rows",
        "json_object_agg": "a group's value grows with its rows",
        "xmlagg": "a group's value grows with its rows",
        "generate_series": "it returns a set of rows",
        "range": "it returns a set of rows",
        "unnest": "it returns a set of rows",
        "regexp_split_to_table": "it returns a set of rows",
        "string_to_table": "it returns a set of rows",
    }
)
"""Functions refused for how they multiply the size of a value or the number of rows,
by the lower-case name a query calls them by (none is on the allow-list: this says why,
in the refusal)."""


def growth_refusal(name: str) -> str | None:
    """Why the function called `name` is refused for the size it can make, or None."""
    return REFUSED_GROWTH.get(name.lower())


def is_allowed_function(node: exp.Expr) -> bool:
    """Whether `node` (an `exp.Func`) is a call the compiler lets through."""
    if type(node) is exp.Anonymous:
        return node.name.lower() in ALLOWED_ANONYMOUS
    return type(node) in ALLOWED_FUNCTIONS


def dialect_refusal(node: exp.Expr, dialect: str) -> str | None:
    """Why `dialect` cannot run the allowed function `node`, or None when it can (the
    exclusions are declared per connector kind in `connectors.registry`)."""
    return registry.excluded_functions(dialect).get(type(node))


_PLAIN_NAME = re.compile(r"[a-z_][a-z0-9_$]*(\.[a-z_][a-z0-9_$]*)?")


def function_name(node: exp.Expr) -> str:
    """The name a user would recognise for a function node, for error messages."""
    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    if isinstance(node, exp.Func):
        # The PostgreSQL spelling is what the user wrote in Fabric SQL; sql_name() would
        # give sqlglot's internal name (EXPLODING_GENERATE_SERIES for generate_series).
        try:
            text = node.sql(dialect="postgres")
        except Exception:  # generation of a refused node may itself be unsupported
            return node.sql_name().lower()
        head = text.split("(", 1)[0].strip().lower()
        # Only a plain (optionally qualified) name: an operator-like function
        # (`x COLLATE 'c'`) would otherwise be shown with its operands and literals.
        return head if _PLAIN_NAME.fullmatch(head) else node.sql_name().lower()
    return type(node).__name__.lower()
