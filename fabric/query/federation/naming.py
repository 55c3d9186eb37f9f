"""Which connections a query reads: an entity of another connection is written
`connection.entity` (the connection's name where a schema would stand).

An unqualified name is an entity of the request's connection (or a CTE of the query);
without a request connection every entity must be qualified.
"""

from __future__ import annotations

from sqlglot import exp

from fabric.errors import InvalidArgument, QueryRejected


def cte_names(tree: exp.Expr) -> set[str]:
    return {cte.alias for cte in tree.find_all(exp.CTE)}


def qualify_connections(tree: exp.Expr, default: str) -> set[str]:
    """Put each table's connection in its schema position (the request's connection
    for an unqualified entity name) and return the connections named. Refuses a
    three-part name and an unqualified entity when the request names no connection."""
    ctes = cte_names(tree)
    found: set[str] = set()
    for table in tree.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier):
            continue  # refused by the structure check
        if table.args.get("catalog") is not None:
            parts = ".".join(part.name for part in table.parts)
            raise QueryRejected(
                f"cross-database name '{parts}' is not allowed; write connection.entity"
            )
        if table.args.get("db") is not None:
            found.add(table.db)
            continue
        if table.name in ctes:
            continue
        if not default:
            raise InvalidArgument(
                f"entity '{table.name}' names no connection: write connection.entity, or "
                "set the request's connection for unqualified names"
            )
        table.set("db", exp.to_identifier(default))
        found.add(default)
    return found


def strip_connection(tree: exp.Expr, connection: str) -> None:
    """Drop the connection qualifier of every table of `connection` (the query then
    reads that connection alone, as a single-source query)."""
    for table in tree.find_all(exp.Table):
        if table.args.get("db") is not None and table.db == connection:
            table.set("db", None)
