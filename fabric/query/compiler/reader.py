"""Reading Fabric SQL: cheap checks on the text and its tokens, then one parse."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, ParseError, TokenError
from sqlglot.parser import Parser
from sqlglot.tokenizer_core import Token, TokenType

from fabric.errors import QueryRejected
from fabric.observability.logging import LITERAL_TOKENS

INPUT_DIALECT = "postgres"
"""The dialect Fabric SQL is read in."""

READ_ONLY_HINT = "only read-only SELECT queries are allowed"

_OPENERS = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE})
_CLOSERS = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END})
# A run of prefix operators (NOT NOT NOT ..., - - - ...) nests in the parser as deeply as
# parentheses do, so it counts towards the nesting limit.
_PREFIX_OPERATORS = frozenset({TokenType.NOT, TokenType.DASH, TokenType.PLUS})
_QUERY_STARTS = frozenset({TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN})
# Postfix links that extend one operand: `x.f`, `x::int`, `x COLLATE "C"`, `j->'a'`, and
# `[...]` right after a closing bracket or parenthesis (`x[1][2]`). The parser's work on a
# chain of them grows with the square of its length, so a chain is bounded on its own.
_CHAIN_LINKS = frozenset(
    {
        TokenType.DOT,
        TokenType.DCOLON,
        TokenType.COLLATE,
        TokenType.ARROW,
        TokenType.DARROW,
        TokenType.HASH_ARROW,
        TokenType.DHASH_ARROW,
    }
)
_SUBSCRIPTED = frozenset({TokenType.R_BRACKET, TokenType.R_PAREN})
# Tokens that may sit inside a chain without ending it: names, the type after `::`, the
# collation or key after COLLATE and `->`, and any bracketed part (counted one level deeper).
_CHAIN_OPERANDS = (
    frozenset(
        {
            TokenType.VAR,
            TokenType.IDENTIFIER,
            TokenType.STRING,
            TokenType.NUMBER,
            TokenType.STAR,
        }
    )
    | Parser.TYPE_TOKENS
    | _OPENERS
    | _CLOSERS
)
_SET_OPERATIONS = frozenset({TokenType.UNION, TokenType.INTERSECT, TokenType.EXCEPT})
_CTE_BODY_STARTS = frozenset({TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN})


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """How large and how intricate a query text may be before it is parsed.

    Every limit is checked by one pass over the tokens, so a refused text costs no more
    than tokenizing it; within the limits the parser's and compiler's work stays small.
    """

    max_length: int = 100_000
    """Characters of query text."""
    max_tokens: int = 20_000
    """Tokens of query text (words, names, literals, operators, punctuation)."""
    max_depth: int = 64
    """Levels of nesting: parentheses, brackets, CASE, runs of prefix operators."""
    max_chain: int = 32
    """Links in one postfix chain: subscripts, field accesses, casts, collations."""
    max_parts: int = 100
    """Queries and subqueries (SELECTs), CTEs, joins, set-operation branches, and arms of
    one CASE, each counted on its own."""
    max_type_length: int = 65_535
    """Longest `char(n)` / `varchar(n)` (and bound of `left(string_agg(...), n)`), below
    each target's own maximum (`fabric.query.compiler.bounds`); checked after the parse."""
    max_row_bytes: int = 8 << 20
    """Bytes the query may add to one row of its result itself (padding, literals,
    parameters, and their copies: `fabric.query.compiler.widths`)."""

    def __post_init__(self) -> None:
        for name in (
            "max_length",
            "max_tokens",
            "max_depth",
            "max_chain",
            "max_parts",
            "max_type_length",
            "max_row_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


class QueryReader:
    """Turns query text into one sqlglot tree of a SELECT or set operation, refusing
    texts too long, too large or too intricate (see QueryLimits), not starting like a
    query, or of several statements before the recursive parser sees them."""

    def __init__(self, limits: QueryLimits) -> None:
        self.limits = limits
        self._dialect = Dialect.get_or_raise(INPUT_DIALECT)

    def check_length(self, sql: str) -> None:
        """Refuse an over-long text; constant time, so it may come before any other work
        on a request."""
        check_text_length(sql, self.limits.max_length)

    def tokenize(self, sql: str) -> list[Token]:
        if not isinstance(sql, str) or not sql.strip():
            raise QueryRejected("the query text is empty")
        check_text(sql, self.limits.max_length)
        try:
            tokens: list[Token] = self._dialect.tokenize(sql)
        except TokenError:
            # The tokenizer's message quotes the text; keep it out of the error.
            raise QueryRejected(
                "the query text could not be read (unterminated string, quoted name or comment?)"
            ) from None
        if not tokens:
            raise QueryRejected("the query text is empty")
        self._check_tokens(tokens)
        if len(tokens) > self.limits.max_tokens:
            raise QueryRejected(f"the query text has more than {self.limits.max_tokens} tokens")
        return tokens

    def _check_tokens(self, tokens: list[Token]) -> None:
        first = tokens[0]
        if first.token_type not in _QUERY_STARTS:
            if first.token_type == TokenType.VALUES:
                raise QueryRejected("VALUES lists are not allowed; use SELECT with literals")
            raise QueryRejected(f"{READ_ONLY_HINT} (found {_first_word(first)})")
        limits = self.limits
        depth = 0
        prefix_run = 0
        ended = False
        # Per nesting level: links in the current postfix chain, and WHEN arms of the CASE
        # opened there. Index 0 is the top level; a level deeper than the limit is refused
        # before it is used, so the lists never grow past it.
        chain = [0] * (limits.max_depth + 2)
        arms = [0] * (limits.max_depth + 2)
        ctes = 0
        set_operations = 0
        selects = 0
        joins = 0
        previous = TokenType.SEMICOLON
        for index, token in enumerate(tokens):
            kind = token.token_type
            if ended and kind != TokenType.SEMICOLON:
                raise QueryRejected("only one statement is allowed")
            if kind == TokenType.SEMICOLON:
                ended = True
                continue
            if kind in _CHAIN_LINKS or (kind == TokenType.L_BRACKET and previous in _SUBSCRIPTED):
                chain[depth] += 1
                if chain[depth] > limits.max_chain:
                    raise QueryRejected(
                        f"query chains too many subscripts, field accesses, casts or "
                        f"collations on one value (the limit is {limits.max_chain}, "
                        f"near line {token.line})"
                    )
            elif kind not in _CHAIN_OPERANDS:
                chain[depth] = 0
            if kind in _OPENERS:
                depth += 1
                if depth <= limits.max_depth:
                    chain[depth] = 0
                    arms[depth] = 0
            elif kind in _CLOSERS:
                depth = max(depth - 1, 0)
            elif kind == TokenType.WHEN:
                arms[depth] += 1
                if arms[depth] > limits.max_parts:
                    raise self._too_many("arms in one CASE", token)
            elif kind == TokenType.SELECT:
                selects += 1
                if selects > limits.max_parts:
                    raise self._too_many("queries and subqueries", token)
            elif kind == TokenType.JOIN:
                joins += 1
                if joins > limits.max_parts:
                    raise self._too_many("joins", token)
            elif kind in _SET_OPERATIONS:
                set_operations += 1
                if set_operations >= limits.max_parts:
                    raise self._too_many("set-operation branches", token)
            if kind == TokenType.L_PAREN and _opens_cte_body(tokens, index):
                ctes += 1
                if ctes > limits.max_parts:
                    raise self._too_many("CTEs", token)
            prefix_run = prefix_run + 1 if kind in _PREFIX_OPERATORS else 0
            if depth + prefix_run > limits.max_depth:
                raise QueryRejected(
                    f"query is nested too deeply (the limit is {limits.max_depth} "
                    f"levels, near line {token.line})"
                )
            previous = kind

    def _too_many(self, what: str, token: Token) -> QueryRejected:
        return QueryRejected(
            f"query has too many {what} (the limit is {self.limits.max_parts}, "
            f"near line {token.line})"
        )

    def parse(self, sql: str, tokens: list[Token]) -> exp.Expr:
        try:
            parsed = self._dialect.parser(error_level=ErrorLevel.IMMEDIATE).parse(tokens, sql)
        except ParseError as error:
            detail = error.errors[0] if error.errors else {}
            description = without_literals(str(detail.get("description") or "invalid syntax"))
            line, column = detail.get("line"), detail.get("col")
            raise QueryRejected(
                f"syntax error at line {detail.get('line', '?')}, column "
                f"{detail.get('col', '?')}: {description}",
                position=(
                    (line, column) if isinstance(line, int) and isinstance(column, int) else None
                ),
            ) from None
        statements = [statement for statement in parsed if statement is not None]
        if len(statements) != 1:
            raise QueryRejected("only one statement is allowed")
        tree = statements[0]
        # A parenthesised query at top level, `(SELECT ...)`, is the query itself.
        while type(tree) is exp.Subquery and set(set_args(tree)) == {"this"}:
            tree = tree.this
        if not isinstance(tree, (exp.Select, exp.SetOperation)):
            raise QueryRejected(f"{READ_ONLY_HINT} (found {keyword(tree)})")
        tree.pop()  # detach from any Subquery wrapper so it is the root
        return tree


def check_text_length(sql: str, max_length: int) -> None:
    """QueryRejected when `sql` is longer than `max_length` characters (the text itself
    is never echoed)."""
    if isinstance(sql, str) and len(sql) > max_length:
        raise QueryRejected(f"the query text is longer than {max_length} characters")


def check_text(sql: str, max_length: int | None) -> None:
    """The checks on the raw text, before it is tokenized: its length (unless
    `max_length` is None), and no NUL.

    PostgreSQL's protocol ends a string at a NUL, so a NUL inside a literal or a quoted
    name would cut the statement there at the source (and other sources would keep it):
    the same text would mean different things. No SQL needs one, so it is refused,
    wherever it is, with its position (never the text around it).
    """
    if max_length is not None:
        check_text_length(sql, max_length)
    position = sql.find("\x00") if isinstance(sql, str) else -1
    if position >= 0:
        line = sql.count("\n", 0, position) + 1
        column = position - (sql.rfind("\n", 0, position) + 1) + 1
        raise QueryRejected(
            f"the query text contains a NUL character (U+0000) at position {position + 1} "
            f"(line {line}, column {column}); NUL is not allowed anywhere in SQL text",
            position=(line, column),
        )


def _first_word(token: Token) -> str:
    """The token a refused text starts with, for the message: a keyword or name as
    written, any other token by its kind (a literal is never repeated)."""
    if token.token_type not in LITERAL_TOKENS and token.text.isidentifier():
        return token.text.upper()[:40]
    return token.token_type.name.lower().replace("_", " ")


def _opens_cte_body(tokens: list[Token], index: int) -> bool:
    """Whether the `(` at `index` opens a CTE body: `name AS (SELECT ...`, also with
    `[NOT] MATERIALIZED` between (a named window, `w AS (PARTITION BY ...`, is not one)."""
    before = index - 1
    if before >= 0 and tokens[before].text.upper() == "MATERIALIZED":
        before -= 1
        if before >= 0 and tokens[before].token_type == TokenType.NOT:
            before -= 1
    if before < 0 or tokens[before].token_type != TokenType.ALIAS:
        return False
    after = index + 1
    return after < len(tokens) and tokens[after].token_type in _CTE_BODY_STARTS


# Quoted runs (strings, quoted names) and numbers in a message taken from sqlglot, which
# may quote the query; a cut-off quote is masked to the end.
_MESSAGE_LITERALS = re.compile(r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|\b\d[\d.eE+-]*\b")
_MAX_QUOTED_MESSAGE = 200


def without_literals(message: str) -> str:
    """A message from sqlglot with every quoted run and number replaced by `?`, cut short:
    fit to pass on to the caller."""
    return _MESSAGE_LITERALS.sub("?", message[:_MAX_QUOTED_MESSAGE])


def set_args(node: exp.Expr) -> list[str]:
    """The names of the arguments `node` has set (not None, False, empty)."""
    return [key for key, value in node.args.items() if value not in (None, False, "", [])]


def keyword(node: exp.Expr) -> str:
    """The SQL keyword a refused statement starts with, for messages."""
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return node.key.upper()


def positional_parameters() -> QueryRejected:
    return QueryRejected(
        "positional parameters ('?', '$1', '%s') are not allowed; use named parameters (:name)"
    )
