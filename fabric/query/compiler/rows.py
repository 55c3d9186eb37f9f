"""Row bounds of a resolved query: the outermost LIMIT and the key-lookup bound.

The LIMIT caps what the source returns; a lookup by a whole primary key returns at most
one row, which lets the engine run it without a worker thread.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlglot import exp

from fabric.errors import QueryRejected
from fabric.query.compiler.scope import Source


def key_lookup(tree: exp.Expr, sources: Mapping[str, Source]) -> bool:
    """Whether the outermost query reads at most one row of one entity: a SELECT whose
    FROM is that entity alone and whose WHERE ANDs, at its top, `column = constant` for
    every column of the entity's primary key (a constant: a parameter or a literal, so
    never a volatile function evaluated per row). Grouping, DISTINCT, windows and
    aggregates cannot make more rows of one, and the allow-list has no function that
    returns a set of rows. Runs on the resolved tree: columns are qualified by their
    source's alias, with the catalog's spelling."""
    if not isinstance(tree, exp.Select) or len(sources) != 1:
        return False
    ((alias, source),) = sources.items()
    entity = source.entity
    where = tree.args.get("where")
    if entity is None or not entity.primary_key or where is None:
        return False
    pending: list[exp.Expr] = [where.this]
    equal: set[str] = set()
    while pending:
        node = pending.pop()
        if isinstance(node, exp.Paren):
            pending.append(node.this)
        elif isinstance(node, exp.And):
            pending.extend((node.this, node.expression))
        elif isinstance(node, exp.EQ):
            for column, value in ((node.this, node.expression), (node.expression, node.this)):
                if (
                    isinstance(column, exp.Column)
                    and column.table == alias
                    and isinstance(value, exp.Placeholder | exp.Literal)
                ):
                    equal.add(column.name)
    return set(entity.primary_key) <= equal


def apply_row_limit(tree: exp.Expr, max_rows: int) -> int:
    """Cap the outermost query at max_rows + 1 rows; return the LIMIT now in place."""
    cap = max_rows + 1
    limit = tree.args.get("limit")
    if limit is not None:
        value = limit.expression
        if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit():
            wanted = int(value.this)
            if wanted <= max_rows:
                return wanted  # cannot exceed max_rows: nothing to detect
        elif not (
            isinstance(value, exp.Null)
            or (isinstance(value, exp.Var) and value.name.upper() == "ALL")
        ):
            raise QueryRejected(
                "LIMIT of the outermost query must be an integer literal "
                "(a parameter cannot be checked against the row limit)"
            )
    tree.set("limit", exp.Limit(expression=exp.Literal.number(cap)))
    return cap
