"""A parameter's type from where it stands: the column it is compared with.

Fabric binds a parameter's value with the type the value has, so a query runs without
knowing them; a client that asks (a Flight SQL prepared statement's parameter schema) is
told what the query implies: `col = :p`, `:p < col`, `col IN (:a, :b)`, `col BETWEEN :lo
AND :hi`, `col LIKE :p` give `:p` the Arrow type of `col` as the selection records it.
A parameter found only elsewhere (in an expression, a function's argument, a select
list), compared with columns of different types, or with a column of a derived table,
has no type: None, which the client sees as `null` ("any").
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
from sqlglot import exp

ParameterTypes = tuple[tuple[str, pa.DataType | None], ...]
"""(name, type) per distinct parameter, in order of first appearance."""

_COMPARISONS = (
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.NullSafeEQ,
    exp.NullSafeNEQ,
    exp.Like,
    exp.ILike,
)


def parameter_types(
    tree: exp.Expr, column_types: Mapping[int, pa.DataType | None]
) -> ParameterTypes:
    """The type each parameter of the resolved `tree` is used as (see the module
    docstring); `column_types` maps the id of each bound Column node to its type."""
    found: dict[str, set[pa.DataType | None]] = {}
    for placeholder in tree.find_all(exp.Placeholder, bfs=False):
        seen = found.setdefault(placeholder.name, set())
        seen.add(_context_type(placeholder, column_types))
    result: list[tuple[str, pa.DataType | None]] = []
    for name, types in found.items():
        (only,) = types if len(types) == 1 else (None,)
        result.append((name, only))
    return tuple(result)


def _context_type(
    placeholder: exp.Placeholder, column_types: Mapping[int, pa.DataType | None]
) -> pa.DataType | None:
    node: exp.Expr = placeholder
    parent = node.parent
    while isinstance(parent, exp.Paren):
        node, parent = parent, parent.parent
    if isinstance(parent, _COMPARISONS):
        other = parent.expression if parent.this is node else parent.this
        return _column_type(other, column_types)
    if isinstance(parent, exp.In | exp.Between) and parent.this is not node:
        return _column_type(parent.this, column_types)
    return None


def _column_type(
    node: exp.Expr | None, column_types: Mapping[int, pa.DataType | None]
) -> pa.DataType | None:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Column):
        return column_types.get(id(node))
    return None
