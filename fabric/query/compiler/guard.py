"""The guard: every node of a parsed query checked against allow-lists, failing closed.

Node types, clauses (arguments of a node) and types are allowed only when listed here;
functions only when `fabric.query.functions` lists them, and only where the target
dialect can run them; names the query introduces only when the target keeps them whole.
Anything not positively recognised is refused with a message naming it.
"""

from __future__ import annotations

import re

from sqlglot import exp

from connectors import registry
from fabric.errors import QueryRejected
from fabric.model import CatalogSnapshot
from fabric.query.compiler.reader import (
    INPUT_DIALECT,
    READ_ONLY_HINT,
    keyword,
    positional_parameters,
    set_args,
)
from fabric.query.functions import (
    dialect_refusal,
    function_name,
    growth_refusal,
    is_allowed_function,
)

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A Var is generated verbatim, and sqlglot builds some from string literals (date_part's
# unit): anything but a plain word could smuggle SQL into the output.
_SAFE_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Node types (other than functions, see functions.py) a checked query may contain.
_ALLOWED_NODES: frozenset[type[exp.Expr]] = frozenset(
    {
        exp.Select,
        exp.Union,
        exp.Intersect,
        exp.Except,
        exp.Subquery,
        exp.With,
        exp.CTE,
        exp.From,
        exp.Join,
        exp.Table,
        exp.TableAlias,
        exp.Identifier,
        exp.Column,
        exp.Star,
        exp.Alias,
        exp.Where,
        exp.Group,
        exp.Having,
        exp.Order,
        exp.Ordered,
        exp.Limit,
        exp.Offset,
        exp.Distinct,
        exp.Window,
        exp.WindowSpec,
        exp.Filter,
        exp.WithinGroup,
        exp.Placeholder,
        exp.Literal,
        exp.Boolean,
        exp.Null,
        exp.Paren,
        exp.Tuple,
        exp.Interval,
        exp.Var,
        exp.DataType,
        exp.DataTypeParam,
        exp.EQ,
        exp.NEQ,
        exp.GT,
        exp.GTE,
        exp.LT,
        exp.LTE,
        exp.NullSafeEQ,
        exp.NullSafeNEQ,
        exp.And,
        exp.Or,
        exp.Not,
        exp.Add,
        exp.Sub,
        exp.Mul,
        exp.Div,
        exp.Mod,
        exp.Neg,
        exp.Is,
        exp.In,
        exp.Between,
        exp.Like,
        exp.ILike,
        exp.Escape,
        exp.DPipe,
        exp.Any,
        exp.All,
    }
)

# Nodes whose arguments are restricted: a set argument not listed here is refused.
_ALLOWED_ARGS: dict[type[exp.Expr], frozenset[str]] = {
    exp.Select: frozenset(
        {
            "with_",
            "expressions",
            "distinct",
            "from_",
            "joins",
            "where",
            "group",
            "having",
            "windows",
            "order",
            "limit",
            "offset",
        }
    ),
    exp.Union: frozenset({"with_", "this", "expression", "distinct", "order", "limit", "offset"}),
    exp.Intersect: frozenset(
        {"with_", "this", "expression", "distinct", "order", "limit", "offset"}
    ),
    exp.Except: frozenset({"with_", "this", "expression", "distinct", "order", "limit", "offset"}),
    exp.Subquery: frozenset({"this", "alias"}),
    exp.With: frozenset({"expressions"}),
    exp.CTE: frozenset({"this", "alias"}),
    exp.From: frozenset({"this"}),
    exp.Join: frozenset({"this", "on", "side", "kind"}),
    exp.Table: frozenset({"this", "alias", "db", "catalog"}),
    exp.TableAlias: frozenset({"this", "columns"}),
    exp.Column: frozenset({"this", "table", "db", "catalog"}),
    exp.Star: frozenset(),
    exp.Limit: frozenset({"expression"}),
    exp.Offset: frozenset({"expression"}),
    exp.Placeholder: frozenset({"this"}),
    exp.DataType: frozenset({"this", "expressions"}),
    exp.Cast: frozenset({"this", "to"}),
    exp.Ordered: frozenset({"this", "desc", "nulls_first"}),
    exp.Distinct: frozenset({"expressions", "on"}),
}

# Messages for refused clauses, by argument name, where a better one than the default helps.
_CLAUSE_MESSAGES: dict[str, str] = {
    "into": "SELECT ... INTO is not allowed",
    "locks": "locking clauses (FOR UPDATE / FOR SHARE) are not allowed",
    "laterals": "LATERAL is not allowed",
    "using": "JOIN ... USING is not supported; write JOIN ... ON",
    "method": "NATURAL joins are not allowed; write JOIN ... ON",
    "recursive": "WITH RECURSIVE is not allowed",
    "sample": "TABLESAMPLE is not allowed",
    "pivots": "PIVOT / UNPIVOT is not allowed",
    "qualify": "QUALIFY is not allowed",
    "joins": "parenthesised joins are not supported; remove the parentheses",
}

_TYPE_NAME = re.compile(r"[a-z_][a-z0-9_ ]*")

_ALLOWED_TYPES = frozenset(
    {
        exp.DataType.Type.SMALLINT,
        exp.DataType.Type.INT,
        exp.DataType.Type.BIGINT,
        exp.DataType.Type.DECIMAL,
        exp.DataType.Type.FLOAT,
        exp.DataType.Type.DOUBLE,
        exp.DataType.Type.BOOLEAN,
        exp.DataType.Type.CHAR,
        exp.DataType.Type.VARCHAR,
        exp.DataType.Type.NCHAR,
        exp.DataType.Type.NVARCHAR,
        exp.DataType.Type.TEXT,
        exp.DataType.Type.DATE,
        exp.DataType.Type.TIME,
        exp.DataType.Type.TIMESTAMP,
        exp.DataType.Type.TIMESTAMPTZ,
        exp.DataType.Type.INTERVAL,
    }
)


def refuse_node(node: exp.Expr) -> QueryRejected:
    if isinstance(node, (exp.DML, exp.DDL, exp.Command)) or type(node).__module__.endswith(
        (".dml", ".ddl")
    ):
        return QueryRejected(f"{READ_ONLY_HINT} (found {keyword(node)})")
    if isinstance(node, exp.Lock):
        return QueryRejected(_CLAUSE_MESSAGES["locks"])
    if isinstance(node, exp.Into):
        return QueryRejected(_CLAUSE_MESSAGES["into"])
    if isinstance(node, exp.Values):
        return QueryRejected("VALUES lists are not allowed; use SELECT with literals")
    if isinstance(node, exp.Lateral):
        return QueryRejected(_CLAUSE_MESSAGES["laterals"])
    if isinstance(node, exp.Parameter):
        return positional_parameters()
    if isinstance(node, exp.DataType):
        return QueryRejected(f"type '{type_name(node)}' is not allowed")
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
        qualified = f"{node.this.name}.{function_name(node.expression)}"
        return QueryRejected(f"function '{qualified}' is not allowed")
    if isinstance(node, exp.Func):
        name = function_name(node)
        why = growth_refusal(name)
        reason = f": {why}" if why is not None else ""
        if isinstance(node.parent, exp.Table):
            return QueryRejected(f"table function '{name}' is not allowed{reason}")
        return QueryRejected(f"function '{name}' is not allowed{reason}")
    return QueryRejected(f"SQL construct '{node.key}' is not allowed")


def type_name(node: exp.Expr) -> str:
    """The name of a type as written, without its parameters (which may be literals)."""
    head = node.sql(dialect=INPUT_DIALECT).split("(", 1)[0].strip().lower()
    return head if _TYPE_NAME.fullmatch(head) else node.key


def check_dialect_functions(tree: exp.Expr, dialect: str) -> None:
    """The per-dialect part of the function allow-list."""
    for node in tree.find_all(exp.Func):
        reason = dialect_refusal(node, dialect)
        if reason is not None:
            raise QueryRejected(
                f"function '{function_name(node)}' is not available on this connection: "
                f"{dialect} {reason}"
            )


def check_structure(tree: exp.Expr, catalog: CatalogSnapshot) -> None:
    """Walk every node (iteratively) against the allow-lists; raise on the first refusal."""
    for node in tree.walk():
        cls = type(node)
        if cls is exp.Placeholder and not _PARAM_NAME.fullmatch(node.name or ""):
            raise positional_parameters()
        # Some operators (AND, OR) are Func subclasses in sqlglot: test the node list first.
        if cls not in _ALLOWED_NODES and not (
            isinstance(node, exp.Func) and is_allowed_function(node)
        ):
            raise refuse_node(node)
        allowed = _ALLOWED_ARGS.get(cls)
        if allowed is not None:
            for key in set_args(node):
                if key not in allowed:
                    message = _CLAUSE_MESSAGES.get(key)
                    if message is None:
                        message = f"'{key}' is not allowed in {node.key.upper()}"
                    raise QueryRejected(message)
        if cls is exp.Var:
            if not _SAFE_VAR.fullmatch(node.name):
                raise QueryRejected("a date part or unit must be a plain word")
        elif cls is exp.DataType:
            if node.this not in _ALLOWED_TYPES:
                raise QueryRejected(f"type '{type_name(node)}' is not allowed")
        elif cls is exp.Literal:
            if not node.is_string and not _is_number(node.this):
                raise QueryRejected("a numeric literal is malformed")
        elif cls is exp.Star:
            _check_star(node)
        elif cls is exp.Column and isinstance(node.this, exp.Star):
            if not isinstance(node.parent, exp.Select):
                raise QueryRejected("'table.*' is only allowed in the SELECT list")
        elif cls is exp.Join:
            kind = str(node.args.get("kind") or "").upper()
            if kind not in ("", "INNER", "OUTER", "CROSS"):
                raise QueryRejected(f"{kind} joins are not allowed")
        elif cls is exp.CTE:
            if catalog.entity(node.alias) is not None:
                raise QueryRejected(
                    f"CTE name '{node.alias}' shadows the selected entity '{node.alias}'; "
                    "rename the CTE"
                )
        elif cls is exp.Table and not isinstance(node.this, exp.Identifier):
            if isinstance(node.this, exp.Func):
                raise refuse_node(node.this)
            raise QueryRejected("only tables may appear in FROM and JOIN")


_NUMBER = re.compile(r"\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+")


def _is_number(text: object) -> bool:
    return isinstance(text, str) and _NUMBER.fullmatch(text) is not None


def _check_star(node: exp.Expr) -> None:
    parent = node.parent
    if isinstance(parent, exp.Count) and parent.this is node:
        return  # COUNT(*)
    if isinstance(parent, exp.Select) and any(p is node for p in parent.expressions):
        return
    if isinstance(parent, exp.Column) and isinstance(parent.parent, exp.Select):
        return
    raise QueryRejected("'*' is only allowed in the SELECT list and in COUNT(*)")


def check_name_lengths(tree: exp.Expr, dialect: str) -> None:
    """Refuse a name the query writes that is longer than a source of `dialect` keeps,
    or that it cannot hold, before any name is resolved.

    Every written name is measured, quoted or not: output names, table, subquery and CTE
    aliases, column alias lists, window names, and references. PostgreSQL and MariaDB
    would cut a long name silently (a result column coming back renamed, or two names
    cut alike colliding: SQLSTATE 42702, 42712), the others fail the query; MySQL and
    MariaDB refuse a character beyond U+FFFF in any name. An entity name in FROM is not
    measured: the catalog's physical name replaces it, and where it stays as the table's
    alias the source cuts that alias and every reference to it alike.
    """
    limits = registry.identifier_limits(dialect)
    if not limits:
        return
    for node in tree.find_all(exp.Identifier):
        name = node.name
        parent = node.parent
        if isinstance(parent, exp.Table) and parent.this is node:
            continue
        output = isinstance(parent, exp.Alias) and parent.args.get("alias") is node
        for limit in limits:
            shown = name if len(name) <= 40 else name[:40] + "..."
            if limit.bmp_only and any(ord(character) > 0xFFFF for character in name):
                raise QueryRejected(
                    f"name '{shown}' has a character beyond U+FFFF, which {dialect} does "
                    "not allow in names: use another name"
                )
            longest, length = limit.longest(output=output), limit.measure(name)
            if length > longest:
                sort = "an output name" if output else "a name"
                raise QueryRejected(
                    f"name '{shown}' is {length} {limit.unit} long; {dialect} keeps at "
                    f"most {longest} {limit.unit} of {sort}: use a shorter name or alias"
                )
