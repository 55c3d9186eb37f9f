"""Compile Fabric SQL into checked, parameterised SQL for one source dialect.

Fabric SQL is PostgreSQL-flavoured SQL with named parameters (`:name`). A compile is:

1. cheap checks on the text and its tokens, before the recursive parser sees it: empty,
   too long, nested too deeply, not starting like a query, more than one statement;
2. one parse (sqlglot, `postgres`), then a walk of the whole tree against an allow-list of
   node types, clauses and functions (anything not positively recognised is refused);
3. scope-by-scope resolution of every table to a selected entity and of every column to a
   selected column (sqlglot's scope machinery gives the scopes; the binding rules are ours),
   rewriting as it goes: physical `"schema"."table" AS "alias"`, columns qualified by their
   source alias with the catalog's exact spelling, `*` expanded to the selected columns;
4. the row limit on the outermost query, then generation from the checked tree with
   sentinel placeholders that become the driver's `?` or `%s`.

Decisions (documented for the engine and the Studio):

- Schema-qualified (`sales.orders`) and cross-database (`db.sales.orders`) names are
  refused: apps use entity names, and a physical name would bypass the selection.
- VALUES lists, LATERAL, table functions, NATURAL joins and JOIN ... USING are refused.
  NATURAL would join on hidden columns too; USING merges columns in ways `*` expansion
  would have to imitate per dialect. Write JOIN ... ON.
- WITH RECURSIVE is refused: analytics queries rarely need it and it can run unbounded.
- LIMIT on the outermost query must be an integer literal (or ALL/absent): a parameter
  cannot be compared with max_rows at compile time. OFFSET may be a parameter.
- Row bound: `row_bound` is 1 when the outermost query reads one entity alone and its
  WHERE ANDs `column = parameter or literal` over the entity's whole primary key (from
  the catalog); otherwise `row_limit`. The engine runs small bounds without a worker
  thread; a stale key in the catalog costs speed there, never rows.
- Truncation: `row_limit` is max_rows + 1 unless the query's own literal LIMIT is not
  larger than max_rows. The engine reads at most `row_limit` rows; reading more than
  `max_rows` rows means the result was truncated (drop the extra row, flag truncated).
- Identifiers are all quoted in the output; unquoted input identifiers are folded to
  lower case first (PostgreSQL rules), so output column names are the same on every
  source. Unquoted names match catalog names case-insensitively, quoted ones exactly.
- With ParamStyle.FORMAT every `%` in the text is written `%%`, so connectors must always
  pass a parameter sequence (possibly empty), never None, to the driver.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError, TokenError, UnsupportedError
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.scope import Scope, build_scope
from sqlglot.tokenizer_core import Token, TokenType

from connectors.base import ParamStyle
from fabric.errors import InternalError, InvalidArgument, QueryRejected
from fabric.model import CatalogSnapshot, Entity
from fabric.query.functions import dialect_refusal, function_name, is_allowed_function

__all__ = ["INPUT_DIALECT", "TARGET_DIALECTS", "CompiledStatement", "StatementCompiler"]

INPUT_DIALECT = "postgres"
"""The dialect Fabric SQL is read in."""

TARGET_DIALECTS: frozenset[str] = frozenset({"duckdb", "postgres", "tsql", "mysql"})
"""Dialects the compiler generates for; each has golden files in tests/golden/compiler."""

_DISTINCT_ON_DIALECTS = frozenset({"duckdb", "postgres"})

_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A Var is generated verbatim, and sqlglot builds some from string literals (date_part's
# unit): anything but a plain word could smuggle SQL into the output.
_SAFE_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_OPENERS = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE})
_CLOSERS = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END})
# A run of prefix operators (NOT NOT NOT ..., - - - ...) nests in the parser as deeply as
# parentheses do, so it counts towards the nesting limit.
_PREFIX_OPERATORS = frozenset({TokenType.NOT, TokenType.DASH, TokenType.PLUS})
_QUERY_STARTS = frozenset({TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN})

_SYSTEM_SCHEMAS = frozenset(
    {
        "pg_catalog",
        "information_schema",
        "pg_toast",
        "sys",
        "mysql",
        "performance_schema",
        "duckdb",
        "system",
        "temp",
    }
)
_SYSTEM_TABLE_PREFIXES = ("pg_", "sys", "duckdb_", "sqlite_", "information_schema")

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

_READ_ONLY_HINT = "only read-only SELECT queries are allowed"


@dataclass(frozen=True, slots=True)
class CompiledStatement:
    """A checked statement in one target dialect, independent of parameter values."""

    sql: str
    """Target-dialect text with the driver's placeholders."""
    param_names: tuple[str, ...]
    """One name per placeholder, in text order (a name used twice appears twice)."""
    row_limit: int
    """The LIMIT on the outermost query: max_rows + 1, or the query's own smaller LIMIT."""
    row_bound: int
    """The most rows the source can return: `row_limit`, or 1 for a lookup by the whole
    primary key of the only table in FROM (see `_key_lookup`). A small bound lets the
    engine run the query without a worker thread."""
    max_rows: int
    """Rows the caller may receive; reading more than this many means truncated."""
    entities: tuple[str, ...]
    """Entity names the statement reads (sorted, unique)."""
    fingerprint: str
    """Stable hash of (dialect, sql), for cache keys and metrics labels."""

    @property
    def may_truncate(self) -> bool:
        """Whether the source can return more rows than the caller may receive."""
        return self.row_limit > self.max_rows

    def bind(self, params: Mapping[str, Any]) -> tuple[Any, ...]:
        """Parameter values in placeholder order; InvalidArgument on a missing or extra name."""
        known = set(self.param_names)
        for name in self.param_names:
            if name not in params:
                raise InvalidArgument(f"missing parameter '{name}'")
        extra = sorted(name for name in params if name not in known)
        if extra:
            expected = ", ".join(sorted(known)) or "none"
            raise InvalidArgument(f"unknown parameter '{extra[0]}' (the query takes: {expected})")
        return tuple(params[name] for name in self.param_names)


@dataclass(slots=True)
class _Source:
    """A table in scope: an entity, a derived table or a CTE, under its alias."""

    alias: str
    columns: tuple[str, ...]
    entity: Entity | None


class StatementCompiler:
    """Turns Fabric SQL into a CompiledStatement, or raises QueryRejected saying why not.

    Stateless after construction, so one instance may serve every thread.
    """

    def __init__(self, *, max_sql_length: int = 100_000, max_nesting_depth: int = 64) -> None:
        if max_sql_length < 1 or max_nesting_depth < 1:
            raise ValueError("max_sql_length and max_nesting_depth must be positive")
        self.max_sql_length = max_sql_length
        self.max_nesting_depth = max_nesting_depth
        self._reader = Dialect.get_or_raise(INPUT_DIALECT)

    def compile(
        self,
        sql: str,
        catalog: CatalogSnapshot,
        *,
        dialect: str,
        param_style: ParamStyle,
        max_rows: int,
    ) -> CompiledStatement:
        if dialect not in TARGET_DIALECTS:
            raise InvalidArgument(f"dialect '{dialect}' is not supported by the compiler")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise InvalidArgument("max_rows must be a positive integer")
        tokens = self._tokenize(sql)
        try:
            tree = self._parse(sql, tokens)
            _check_structure(tree, catalog)
            _check_dialect_functions(tree, dialect)
            # PostgreSQL folding: unquoted identifiers become lower case, quoted stay as is.
            tree = normalize_identifiers(tree, dialect=INPUT_DIALECT)
            resolver = _Resolver(catalog)
            resolver.resolve(tree)
            row_limit = _apply_row_limit(tree, max_rows)
            row_bound = min(row_limit, 1) if _key_lookup(tree, resolver.root_sources) else row_limit
            if dialect not in _DISTINCT_ON_DIALECTS and any(
                d.args.get("on") for d in tree.find_all(exp.Distinct)
            ):
                # sqlglot emulates it with a subquery that moves our LIMIT inside: wrong rows.
                raise QueryRejected(f"DISTINCT ON is not supported on {dialect}")
            tree = _adapt_for_dialect(tree, dialect)
            for identifier in tree.find_all(exp.Identifier):
                identifier.set("quoted", True)
            text, names = _generate(tree, dialect, param_style, sql)
        except RecursionError:
            raise QueryRejected(
                f"query is nested too deeply (the limit is {self.max_nesting_depth} levels)"
            ) from None
        except UnsupportedError as error:
            raise QueryRejected(
                f"the query uses a construct {dialect} does not support: {error}"
            ) from None
        except SqlglotError:
            # sqlglot's own messages may quote query text; say less rather than echo it.
            raise QueryRejected("the query could not be checked (unsupported construct)") from None
        fingerprint = hashlib.blake2b(f"{dialect}\x00{text}".encode(), digest_size=16).hexdigest()
        return CompiledStatement(
            sql=text,
            param_names=names,
            row_limit=row_limit,
            row_bound=row_bound,
            max_rows=max_rows,
            entities=tuple(sorted(resolver.entities)),
            fingerprint=fingerprint,
        )

    # -- before the parser ------------------------------------------------------------

    def _tokenize(self, sql: str) -> list[Token]:
        if not isinstance(sql, str) or not sql.strip():
            raise QueryRejected("the query text is empty")
        if len(sql) > self.max_sql_length:
            raise QueryRejected(f"the query text is longer than {self.max_sql_length} characters")
        try:
            tokens: list[Token] = self._reader.tokenize(sql)
        except TokenError:
            # The tokenizer's message quotes the text; keep it out of the error.
            raise QueryRejected(
                "the query text could not be read (unterminated string, quoted name or comment?)"
            ) from None
        if not tokens:
            raise QueryRejected("the query text is empty")
        self._check_tokens(tokens)
        return tokens

    def _check_tokens(self, tokens: list[Token]) -> None:
        first = tokens[0]
        if first.token_type not in _QUERY_STARTS:
            if first.token_type == TokenType.VALUES:
                raise QueryRejected("VALUES lists are not allowed; use SELECT with literals")
            word = first.text.upper() if first.text.isidentifier() else repr(first.text)
            raise QueryRejected(f"{_READ_ONLY_HINT} (found {word})")
        depth = 0
        prefix_run = 0
        deepest = 0
        ended = False
        for token in tokens:
            kind = token.token_type
            if ended and kind != TokenType.SEMICOLON:
                raise QueryRejected("only one statement is allowed")
            if kind == TokenType.SEMICOLON:
                ended = True
                continue
            if kind in _OPENERS:
                depth += 1
            elif kind in _CLOSERS:
                depth -= 1
            prefix_run = prefix_run + 1 if kind in _PREFIX_OPERATORS else 0
            deepest = max(deepest, depth + prefix_run)
            if deepest > self.max_nesting_depth:
                raise QueryRejected(
                    f"query is nested too deeply (the limit is {self.max_nesting_depth} "
                    f"levels, near line {token.line})"
                )

    def _parse(self, sql: str, tokens: list[Token]) -> exp.Expr:
        try:
            parsed = self._reader.parser(error_level=ErrorLevel.IMMEDIATE).parse(tokens, sql)
        except ParseError as error:
            detail = error.errors[0] if error.errors else {}
            description = str(detail.get("description") or "invalid syntax")
            raise QueryRejected(
                f"syntax error at line {detail.get('line', '?')}, column "
                f"{detail.get('col', '?')}: {description}"
            ) from None
        statements = [statement for statement in parsed if statement is not None]
        if len(statements) != 1:
            raise QueryRejected("only one statement is allowed")
        tree = statements[0]
        # A parenthesised query at top level, `(SELECT ...)`, is the query itself.
        while type(tree) is exp.Subquery and set(_set_args(tree)) == {"this"}:
            tree = tree.this
        if not isinstance(tree, (exp.Select, exp.SetOperation)):
            raise QueryRejected(f"{_READ_ONLY_HINT} (found {_keyword(tree)})")
        tree.pop()  # detach from any Subquery wrapper so it is the root
        return tree


def _set_args(node: exp.Expr) -> list[str]:
    return [key for key, value in node.args.items() if value not in (None, False, "", [])]


def _keyword(node: exp.Expr) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return node.key.upper()


def _refuse_node(node: exp.Expr) -> QueryRejected:
    if isinstance(node, (exp.DML, exp.DDL, exp.Command)) or type(node).__module__.endswith(
        (".dml", ".ddl")
    ):
        return QueryRejected(f"{_READ_ONLY_HINT} (found {_keyword(node)})")
    if isinstance(node, exp.Lock):
        return QueryRejected(_CLAUSE_MESSAGES["locks"])
    if isinstance(node, exp.Into):
        return QueryRejected(_CLAUSE_MESSAGES["into"])
    if isinstance(node, exp.Values):
        return QueryRejected("VALUES lists are not allowed; use SELECT with literals")
    if isinstance(node, exp.Lateral):
        return QueryRejected(_CLAUSE_MESSAGES["laterals"])
    if isinstance(node, exp.Parameter):
        return _positional_parameters()
    if isinstance(node, exp.DataType):
        return QueryRejected(f"type '{node.sql(dialect=INPUT_DIALECT).lower()}' is not allowed")
    if isinstance(node, exp.Dot) and isinstance(node.expression, exp.Func):
        qualified = f"{node.this.name}.{function_name(node.expression)}"
        return QueryRejected(f"function '{qualified}' is not allowed")
    if isinstance(node, exp.Func):
        if isinstance(node.parent, exp.Table):
            return QueryRejected(f"table function '{function_name(node)}' is not allowed")
        return QueryRejected(f"function '{function_name(node)}' is not allowed")
    return QueryRejected(f"SQL construct '{node.key}' is not allowed")


def _positional_parameters() -> QueryRejected:
    return QueryRejected(
        "positional parameters ('?', '$1', '%s') are not allowed; use named parameters (:name)"
    )


def _check_dialect_functions(tree: exp.Expr, dialect: str) -> None:
    """The per-dialect part of the function allow-list."""
    for node in tree.find_all(exp.Func):
        reason = dialect_refusal(node, dialect)
        if reason is not None:
            raise QueryRejected(
                f"function '{function_name(node)}' is not available on this connection: "
                f"{dialect} {reason}"
            )


def _check_structure(tree: exp.Expr, catalog: CatalogSnapshot) -> None:
    """Walk every node (iteratively) against the allow-lists; raise on the first refusal."""
    for node in tree.walk():
        cls = type(node)
        if cls is exp.Placeholder and not _PARAM_NAME.fullmatch(node.name or ""):
            raise _positional_parameters()
        # Some operators (AND, OR) are Func subclasses in sqlglot: test the node list first.
        if cls not in _ALLOWED_NODES and not (
            isinstance(node, exp.Func) and is_allowed_function(node)
        ):
            raise _refuse_node(node)
        allowed = _ALLOWED_ARGS.get(cls)
        if allowed is not None:
            for key in _set_args(node):
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
                raise QueryRejected(f"type '{node.sql(dialect=INPUT_DIALECT)}' is not allowed")
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
                raise QueryRejected(f"table function '{function_name(node.this)}' is not allowed")
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


class _Resolver:
    """Binds every table and column of a checked tree to the selection, rewriting in place.

    Scopes come bottom-up from sqlglot (`Scope.traverse`), so a derived table's or CTE's
    output names are known before the query that reads it. A column not found in its own
    scope is bound afterwards against the enclosing scopes (correlated subqueries).
    Every Table and Column node ends up in `_bound`; anything left over is refused.
    """

    def __init__(self, catalog: CatalogSnapshot) -> None:
        self.catalog = catalog
        self.entities: set[str] = set()
        self._sources: dict[int, dict[str, _Source]] = {}
        self._outputs: dict[int, tuple[str, ...]] = {}
        self._bound: set[int] = set()
        self._pending: list[tuple[Scope, exp.Column]] = []
        self.root_sources: dict[str, _Source] = {}
        """The FROM items of the outermost query, by alias (after `resolve`)."""

    def resolve(self, tree: exp.Expr) -> None:
        root = build_scope(tree)
        if root is None:
            raise QueryRejected(_READ_ONLY_HINT)
        for scope in root.traverse():
            if isinstance(scope.expression, exp.Select):
                self._select(scope)
            elif isinstance(scope.expression, exp.SetOperation):
                self._set_operation(scope)
            else:
                raise QueryRejected(f"SQL construct '{scope.expression.key}' is not allowed")
        for scope, column in self._pending:
            self._resolve_outer(scope, column)
        self.root_sources = self._sources.get(id(root), {})
        for node in tree.walk():
            if isinstance(node, (exp.Column, exp.Table)) and id(node) not in self._bound:
                # Fail closed: a reference the scopes did not account for is not trusted.
                text = node.sql(dialect=INPUT_DIALECT)
                raise QueryRejected(f"reference '{text}' is not allowed here")

    # -- scopes ---------------------------------------------------------------------

    def _select(self, scope: Scope) -> None:
        select = scope.expression
        assert isinstance(select, exp.Select)
        sources: dict[str, _Source] = {}
        from_ = select.args.get("from_")
        items: list[exp.Expr] = [from_.this] if from_ is not None else []
        items.extend(join.this for join in select.args.get("joins") or [])
        for item in items:
            source = self._source(scope, item)
            if source.alias in sources:
                raise QueryRejected(
                    f"table name '{source.alias}' appears twice in one FROM clause; "
                    "give each an alias"
                )
            sources[source.alias] = source
        self._sources[id(scope)] = sources
        self._expand_stars(select, sources)
        _inline_group_aliases(select, sources)
        aliases = {p.alias for p in select.expressions if isinstance(p, exp.Alias)}
        for node in list(scope.walk()):
            if type(node) is exp.Column and id(node) not in self._bound:
                self._resolve_local(scope, select, sources, aliases, node)
        self._outputs[id(select)] = tuple(_output_name(p) for p in select.expressions)

    def _set_operation(self, scope: Scope) -> None:
        operation = scope.expression
        leftmost: exp.Expr = operation
        while isinstance(leftmost, exp.SetOperation):
            leftmost = leftmost.this.unnest()
        outputs = self._outputs.get(id(leftmost))
        if outputs is None:
            raise QueryRejected("each side of a set operation must be a SELECT")
        self._outputs[id(operation)] = outputs
        self._sources[id(scope)] = {}
        for node in list(scope.walk()):
            if type(node) is not exp.Column or id(node) in self._bound:
                continue
            column: exp.Column = node
            found = _matching(outputs, column.this) if not column.table else []
            if len(found) != 1:
                raise QueryRejected(
                    f"ORDER BY of a {operation.key.upper()} may only name its output columns "
                    f"('{column.sql(dialect=INPUT_DIALECT)}' is not one)"
                )
            column.set("this", exp.Identifier(this=found[0], quoted=True))
            self._bound.add(id(column))

    # -- sources --------------------------------------------------------------------

    def _source(self, scope: Scope, item: exp.Expr) -> _Source:
        if isinstance(item, exp.Table):
            return self._table(scope, item)
        if isinstance(item, exp.Subquery):
            query = item.unnest()
            if not isinstance(query, (exp.Select, exp.SetOperation)):
                raise QueryRejected("parenthesised joins are not supported; remove the parentheses")
            if not item.alias:
                raise QueryRejected("a subquery in FROM needs an alias")
            outputs = self._outputs.get(id(query))
            if outputs is None:
                raise QueryRejected("a subquery in FROM could not be checked")
            return _Source(item.alias, _rename(outputs, item.args.get("alias")), None)
        raise QueryRejected(f"SQL construct '{item.key}' is not allowed in FROM")

    def _table(self, scope: Scope, table: exp.Table) -> _Source:
        parts = [part.name for part in table.parts]
        if table.args.get("catalog") is not None:
            raise QueryRejected(f"cross-database name '{'.'.join(parts)}' is not allowed")
        if table.args.get("db") is not None:
            if table.db.lower() in _SYSTEM_SCHEMAS or table.db.lower().startswith("pg_"):
                raise QueryRejected(f"system catalog '{'.'.join(parts)}' is not allowed")
            raise QueryRejected(
                f"schema-qualified name '{'.'.join(parts)}' is not allowed; "
                f"refer to entities by name ('{table.name}')"
            )
        alias_node = table.args.get("alias")
        alias = table.alias_or_name
        self._bound.add(id(table))
        cte = scope.cte_sources.get(table.name)
        if isinstance(cte, Scope) and cte.is_cte:
            outputs = self._outputs.get(id(cte.expression))
            if outputs is None:
                raise QueryRejected(f"CTE '{table.name}' could not be checked")
            return _Source(alias, _rename(outputs, _cte_alias(cte.expression)), None)
        if alias_node is not None and alias_node.columns:
            raise QueryRejected("column aliases on a table are not allowed; alias the columns")
        entity = self._entity(table.this)
        table.set("this", exp.Identifier(this=entity.table, quoted=True))
        table.set("db", exp.Identifier(this=entity.schema, quoted=True) if entity.schema else None)
        if alias_node is None:
            # Keep the entity name as alias so `orders.id` still refers to this table.
            table.set("alias", exp.TableAlias(this=exp.Identifier(this=alias, quoted=True)))
        self.entities.add(entity.name)
        return _Source(alias, tuple(column.name for column in entity.columns), entity)

    def _entity(self, identifier: exp.Expr) -> Entity:
        name = identifier.name
        entity = self.catalog.entity(name)
        if entity is not None and identifier.args.get("quoted") and entity.name != name:
            entity = None  # a quoted name must match exactly
        if entity is not None:
            return entity
        lowered = name.lower()
        if lowered in _SYSTEM_SCHEMAS or lowered.startswith(_SYSTEM_TABLE_PREFIXES):
            raise QueryRejected(f"system catalog '{name}' is not allowed")
        raise QueryRejected(
            f"table '{name}' is not selected for apps on connection '{self.catalog.connection}'"
        )

    def _expand_stars(self, select: exp.Select, sources: dict[str, _Source]) -> None:
        if not any(
            isinstance(p, exp.Star) or (isinstance(p, exp.Column) and isinstance(p.this, exp.Star))
            for p in select.expressions
        ):
            return
        projections: list[exp.Expr] = []
        for projection in select.expressions:
            if isinstance(projection, exp.Star):
                if not sources:
                    raise QueryRejected("SELECT * needs a FROM clause")
                for source in sources.values():
                    projections.extend(self._star_columns(source))
            elif isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
                named = sources.get(projection.table)
                if named is None:
                    raise QueryRejected(
                        f"'{projection.table}.*' refers to '{projection.table}', "
                        "which is not in the FROM clause"
                    )
                projections.extend(self._star_columns(named))
            else:
                projections.append(projection)
        select.set("expressions", projections)

    def _star_columns(self, source: _Source) -> list[exp.Expr]:
        if any(not name for name in source.columns):
            raise QueryRejected(
                f"'*' over '{source.alias}' includes an unnamed expression; give it an alias"
            )
        columns: list[exp.Expr] = []
        for name in source.columns:
            column = exp.Column(
                this=exp.Identifier(this=name, quoted=True),
                table=exp.Identifier(this=source.alias, quoted=True),
            )
            self._bound.add(id(column))
            columns.append(column)
        return columns

    # -- columns --------------------------------------------------------------------

    def _resolve_local(
        self,
        scope: Scope,
        select: exp.Select,
        sources: dict[str, _Source],
        aliases: set[str],
        column: exp.Column,
    ) -> None:
        if column.args.get("db") is not None or column.args.get("catalog") is not None:
            raise QueryRejected(
                f"column reference '{column.sql(dialect=INPUT_DIALECT)}' has too many parts"
            )
        if not isinstance(column.this, exp.Identifier):
            raise QueryRejected(f"SQL construct '{column.this.key}' is not allowed as a column")
        qualifier = column.table
        if qualifier:
            source = sources.get(qualifier)
            if source is not None:
                self._bind(column, source)
            else:
                self._defer(scope, column)
            return
        name = column.name
        context = _alias_context(column, select)
        if context == "order" and name in aliases:
            self._bound.add(id(column))  # ORDER BY an output name (PostgreSQL looks there first)
            return
        candidates = _candidates(sources, column.this)
        if len(candidates) == 1:
            self._bind(column, candidates[0])
        elif candidates:
            _ambiguous(column, candidates)
        else:
            self._defer(scope, column)

    def _defer(self, scope: Scope, column: exp.Column) -> None:
        if _outer_scope(scope) is None:
            _not_found(column, self._sources.get(id(scope), {}))
        self._pending.append((scope, column))

    def _resolve_outer(self, scope: Scope, column: exp.Column) -> None:
        outer = _outer_scope(scope)
        nearer = [scope]  # scopes the database searches before `outer` for a qualifier
        while outer is not None:
            sources = self._sources.get(id(outer), {})
            if column.table:
                source = sources.get(column.table)
                if source is not None:
                    self._bind(column, source)
                    return
            else:
                candidates = _candidates(sources, column.this)
                if len(candidates) == 1:
                    self._check_not_shadowed(column, candidates[0].alias, nearer)
                    self._bind(column, candidates[0])
                    return
                if candidates:
                    _ambiguous(column, candidates)
            nearer.append(outer)
            outer = _outer_scope(outer)
        _not_found(column, self._sources.get(id(scope), {}))

    def _check_not_shadowed(self, column: exp.Column, alias: str, nearer: list[Scope]) -> None:
        # The output qualifies the column with `alias`; if a nearer FROM clause also has a
        # table called `alias`, the database binds it there instead, to a column of that
        # table that may not be selected (`... FROM managers x WHERE EXISTS (SELECT 1
        # FROM employees x WHERE salary > 0)` would read employees.salary).
        for scope in nearer:
            if alias in self._sources.get(id(scope), {}):
                raise QueryRejected(
                    f"column '{column.name}' would come from '{alias}' in an outer query, "
                    f"but the subquery also has a table named '{alias}'; "
                    "give the tables different aliases"
                )

    def _bind(self, column: exp.Column, source: _Source) -> None:
        found = _matching(source.columns, column.this)
        if len(found) != 1:
            if found:
                raise QueryRejected(
                    f"column reference '{source.alias}.{column.name}' is ambiguous; quote it"
                )
            if source.entity is not None:
                raise QueryRejected(f"column '{source.entity.name}.{column.name}' is not selected")
            raise QueryRejected(
                f"column '{source.alias}.{column.name}' does not exist in '{source.alias}'"
            )
        column.set("this", exp.Identifier(this=found[0], quoted=True))
        column.set("table", exp.Identifier(this=source.alias, quoted=True))
        self._bound.add(id(column))


def _matching(columns: tuple[str, ...], identifier: exp.Expr) -> list[str]:
    name = identifier.name
    if identifier.args.get("quoted"):
        return [column for column in columns if column == name]
    lowered = name.lower()
    return [column for column in columns if column.lower() == lowered]


def _candidates(sources: dict[str, _Source], identifier: exp.Expr) -> list[_Source]:
    return [source for source in sources.values() if _matching(source.columns, identifier)]


def _ambiguous(column: exp.Column, candidates: list[_Source]) -> None:
    names = ", ".join(source.alias for source in candidates)
    raise QueryRejected(
        f"column reference '{column.name}' is ambiguous ({names}); qualify it with a table name"
    )


def _not_found(column: exp.Column, sources: dict[str, _Source]) -> None:
    if column.table:
        entity = next(
            (s.entity for s in sources.values() if s.entity and s.entity.name == column.table),
            None,
        )
        if entity is not None:
            raise QueryRejected(f"column '{entity.name}.{column.name}' is not selected")
        raise QueryRejected(
            f"column '{column.table}.{column.name}' refers to '{column.table}', "
            "which is not in the FROM clause"
        )
    raise QueryRejected(f"column '{column.name}' is not selected in any table in scope")


def _alias_context(column: exp.Column, select: exp.Select) -> str | None:
    parent = column.parent
    if isinstance(parent, exp.Ordered) and parent.parent is select.args.get("order"):
        return "order"
    return None


def _inline_group_aliases(select: exp.Select, sources: dict[str, _Source]) -> None:
    """Replace each GROUP BY reference to an output alias with the aliased expression.

    PostgreSQL, DuckDB and MySQL look a GROUP BY name up among the FROM clause's columns
    before the output names, and the source has columns the selection hides:
    `SELECT amount AS secret ... GROUP BY secret` would group by the hidden `secret`.
    T-SQL has no alias references at all. The copy is checked like any other expression.
    """
    group = select.args.get("group")
    if group is None:
        return
    outputs: dict[str, list[exp.Expr]] = {}
    for projection in select.expressions:
        if isinstance(projection, exp.Alias):
            outputs.setdefault(projection.alias, []).append(projection.this)
    for item in list(group.expressions):
        if (
            type(item) is not exp.Column
            or item.table
            or not isinstance(item.this, exp.Identifier)
            or _candidates(sources, item.this)  # an input column wins, as in PostgreSQL
        ):
            continue
        targets = outputs.get(item.name)
        if not targets:
            continue
        if len(targets) > 1:
            raise QueryRejected(f"GROUP BY '{item.name}' is ambiguous: several outputs have it")
        target = targets[0]
        if isinstance(target, (exp.Literal, exp.Null, exp.Boolean, exp.Placeholder)) or (
            target.find(exp.AggFunc, exp.Window, exp.Subquery, exp.Select) is not None
        ):
            raise QueryRejected(
                f"GROUP BY '{item.name}' names an output that is a constant, a parameter, "
                "an aggregate or a subquery; group by an expression of columns"
            )
        item.replace(target.copy())


def _outer_scope(scope: Scope) -> Scope | None:
    """The scope a correlated reference may look in next, or None when it may not."""
    current = scope
    while current.is_set_operation and current.parent is not None:
        current = current.parent
    return current.parent if current.is_subquery else None


def _output_name(projection: exp.Expr) -> str:
    if isinstance(projection, exp.Alias):
        return projection.alias
    if isinstance(projection, exp.Column):
        return projection.name
    return ""


def _rename(outputs: tuple[str, ...], alias: exp.Expr | None) -> tuple[str, ...]:
    columns = [c.name for c in alias.args.get("columns") or []] if alias is not None else []
    if len(columns) > len(outputs):
        raise QueryRejected("more column aliases than columns")
    return tuple(columns) + outputs[len(columns) :]


def _cte_alias(query: exp.Expr) -> exp.Expr | None:
    parent = query.parent
    while isinstance(parent, exp.Subquery):
        parent = parent.parent
    return parent.args.get("alias") if isinstance(parent, exp.CTE) else None


def _key_lookup(tree: exp.Expr, sources: Mapping[str, _Source]) -> bool:
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


def _apply_row_limit(tree: exp.Expr, max_rows: int) -> int:
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


# -- dialect adaptation ------------------------------------------------------------------
#
# Rewrites of the checked tree where sqlglot would generate text the target rejects or
# reads differently (proven by tests/unit/test_dialects.py: MySQL text runs on a real
# MariaDB, T-SQL text is parsed back and checked for constructs SQL Server refuses).

_INTERVAL_UNITS = frozenset(
    {"YEAR", "QUARTER", "MONTH", "WEEK", "DAY", "HOUR", "MINUTE", "SECOND", "MILLISECOND"}
)
# Aggregates that ignore NULL inputs, so `agg(x) FILTER (WHERE c)` is `agg(CASE WHEN c
# THEN x END)` exactly.
_NULL_IGNORING_AGGREGATES: tuple[type[exp.Expr], ...] = (
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
    exp.GroupConcat,
)
_TSQL_TEXT_TYPES = {
    exp.DataType.Type.TEXT: exp.DataType.Type.NVARCHAR,
    exp.DataType.Type.VARCHAR: exp.DataType.Type.NVARCHAR,
    exp.DataType.Type.CHAR: exp.DataType.Type.NCHAR,
}


def _adapt_for_dialect(tree: exp.Expr, dialect: str) -> exp.Expr:
    """Make the checked tree generate text `dialect` accepts with PostgreSQL's meaning,
    or raise QueryRejected naming the construct."""
    if dialect not in ("tsql", "mysql"):
        return tree
    for ordered_set in tree.find_all(exp.WithinGroup):
        inner = ordered_set.this
        name = function_name(inner).upper() if isinstance(inner, exp.Func) else "an"
        raise QueryRejected(
            f"{name} ordered-set aggregate (WITHIN GROUP) is not supported on {dialect}"
        )
    for interval in list(tree.find_all(exp.Interval)):
        _simple_interval(interval, dialect)
    if dialect == "mysql":
        for filtered in list(tree.find_all(exp.Filter)):
            filtered.replace(_filter_as_case(filtered, dialect))
        for truncated in list(tree.find_all(exp.DateTrunc, exp.TimestampTrunc)):
            # MySQL has no DATE_TRUNC; sqlglot's DATE_ADD rewrite starts from a string
            # literal and so returns text: cast it back to the timestamp PostgreSQL returns.
            truncated.replace(
                exp.Cast(this=truncated.copy(), to=exp.DataType.build("DATETIME", dialect="mysql"))
            )
        return tree
    # T-SQL
    for arithmetic in list(tree.find_all(exp.Add, exp.Sub)):
        if isinstance(arithmetic.expression, exp.Interval):
            negate = isinstance(arithmetic, exp.Sub)
            arithmetic.replace(_dateadd(arithmetic.this, arithmetic.expression, negate=negate))
        elif isinstance(arithmetic.this, exp.Interval) and isinstance(arithmetic, exp.Add):
            arithmetic.replace(_dateadd(arithmetic.expression, arithmetic.this, negate=False))
    if any(True for _ in tree.find_all(exp.Interval)):
        raise QueryRejected("an INTERVAL on tsql may only be added to or subtracted from a date")
    for today in list(tree.find_all(exp.CurrentDate)):
        today.replace(exp.Cast(this=exp.Anonymous(this="GETDATE"), to=exp.DataType.build("DATE")))
    for concat in list(tree.find_all(exp.DPipe)):
        # `+` adds numbers; PostgreSQL's `||` concatenates text (NULL in, NULL out, as `+`)
        concat.replace(
            exp.Add(this=_as_nvarchar(concat.this), expression=_as_nvarchar(concat.expression))
        )
    for data_type in list(tree.find_all(exp.DataType)):
        replacement = _TSQL_TEXT_TYPES.get(data_type.this)
        if replacement is not None:
            data_type.set("this", replacement)
    for select in list(tree.find_all(exp.Select)):
        for projection in select.expressions:
            value = projection.this if isinstance(projection, exp.Alias) else projection
            if _is_predicate(value):
                value.replace(_predicate_as_bit(value))
    return tree


def _is_predicate(node: exp.Expr) -> bool:
    return isinstance(node, exp.Predicate | exp.Connector | exp.Not | exp.Boolean) or (
        isinstance(node, exp.Paren) and _is_predicate(node.this)
    )


def _predicate_as_bit(node: exp.Expr) -> exp.Expr:
    """T-SQL has no boolean values: a predicate as a value becomes BIT (NULL when unknown)."""
    bit = exp.DataType.build("BIT")
    return exp.Case(
        ifs=[
            exp.If(this=node.copy(), true=exp.Cast(this=exp.Literal.number(1), to=bit)),
            exp.If(
                this=exp.Not(this=exp.Paren(this=node.copy())),
                true=exp.Cast(this=exp.Literal.number(0), to=bit.copy()),
            ),
        ]
    )


def _as_nvarchar(node: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Literal) and node.is_string:
        return node
    return exp.Cast(this=node, to=exp.DataType.build("NVARCHAR(MAX)", dialect="tsql"))


def _simple_interval(node: exp.Interval, dialect: str) -> None:
    """Only `INTERVAL 'n' UNIT` (one whole number, one unit) has a MySQL and T-SQL form."""
    unit = node.args.get("unit")
    amount = node.this
    unit_name = unit.name.upper() if isinstance(unit, exp.Var) else ""
    unit_name = unit_name[:-1] if unit_name.endswith("S") else unit_name
    text = amount.name if isinstance(amount, exp.Literal) else ""
    if unit_name not in _INTERVAL_UNITS or not re.fullmatch(r"-?\d+", text.strip()):
        raise QueryRejected(
            f"on {dialect} an INTERVAL must be one whole number and one unit "
            "(INTERVAL '90' DAY); write several intervals for a mixed one"
        )
    node.set("this", exp.Literal.string(text.strip()))
    node.set("unit", exp.Var(this=unit_name))


def _dateadd(target: exp.Expr, interval: exp.Interval, *, negate: bool) -> exp.Expr:
    amount = int(interval.this.name)
    return exp.Anonymous(
        this="DATEADD",
        expressions=[
            exp.Var(this=interval.args["unit"].name),
            exp.Literal.number(-amount if negate else amount),
            target.copy(),
        ],
    )


def _filter_as_case(node: exp.Filter, dialect: str) -> exp.Expr:
    aggregate = node.this
    condition = node.expression.this if isinstance(node.expression, exp.Where) else None
    if not isinstance(aggregate, _NULL_IGNORING_AGGREGATES) or condition is None:
        raise QueryRejected(f"FILTER (WHERE ...) on this aggregate is not supported on {dialect}")
    aggregate = aggregate.copy()
    argument = aggregate.this
    if isinstance(argument, exp.Star):
        when = exp.If(this=condition.copy(), true=exp.Literal.number(1))
        aggregate.set("this", exp.Case(ifs=[when]))
    elif isinstance(argument, exp.Distinct):
        argument.set(
            "expressions",
            [
                exp.Case(ifs=[exp.If(this=condition.copy(), true=e.copy())])
                for e in argument.expressions
            ],
        )
    elif argument is not None:
        when = exp.If(this=condition.copy(), true=argument.copy())
        aggregate.set("this", exp.Case(ifs=[when]))
    else:
        raise QueryRejected(f"FILTER (WHERE ...) on this aggregate is not supported on {dialect}")
    return aggregate


def _generate(
    tree: exp.Expr, dialect: str, param_style: ParamStyle, source_text: str
) -> tuple[str, tuple[str, ...]]:
    """Generate `dialect` text with the driver's placeholders, and their names in order.

    Placeholders are generated as unique sentinel words first and substituted in the text
    afterwards, so the placeholder order is the text order whatever the generator did
    (reordered or repeated an expression), and `%` can be doubled without touching them.
    """
    nonce = secrets.token_hex(6)
    while nonce in source_text.lower():
        nonce = secrets.token_hex(6)
    names: list[str] = []
    for placeholder in list(tree.find_all(exp.Placeholder)):
        placeholder.replace(exp.Var(this=f"fabricp{nonce}n{len(names)}e"))
        names.append(placeholder.name)
    text = tree.sql(dialect=dialect, comments=False, unsupported_level=ErrorLevel.RAISE)
    if param_style is ParamStyle.FORMAT:
        text = text.replace("%", "%%")
    marker = "?" if param_style is ParamStyle.QMARK else "%s"
    ordered: list[str] = []
    sentinel = re.compile(rf"fabricp{nonce}n(\d+)e", re.IGNORECASE)

    def substitute(match: re.Match[str]) -> str:
        before = text[match.start() - 1] if match.start() else " "
        after = text[match.end()] if match.end() < len(text) else " "
        if before.isalnum() or before in "_'\"`[" or after.isalnum() or after in "_'\"`]":
            raise InternalError("a parameter placeholder was generated inside a name or string")
        ordered.append(names[int(match.group(1))])
        return marker

    text = sentinel.sub(substitute, text)
    if set(ordered) != set(names):
        raise InternalError("a parameter placeholder was lost in generation")
    return text, tuple(ordered)
