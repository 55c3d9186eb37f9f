"""Reading Fabric SQL: cheap checks on the text and its tokens, then one parse."""

from __future__ import annotations

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel, ParseError, TokenError
from sqlglot.tokenizer_core import Token, TokenType

from fabric.errors import QueryRejected

INPUT_DIALECT = "postgres"
"""The dialect Fabric SQL is read in."""

READ_ONLY_HINT = "only read-only SELECT queries are allowed"

_OPENERS = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE})
_CLOSERS = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END})
# A run of prefix operators (NOT NOT NOT ..., - - - ...) nests in the parser as deeply as
# parentheses do, so it counts towards the nesting limit.
_PREFIX_OPERATORS = frozenset({TokenType.NOT, TokenType.DASH, TokenType.PLUS})
_QUERY_STARTS = frozenset({TokenType.SELECT, TokenType.WITH, TokenType.L_PAREN})


class QueryReader:
    """Turns query text into one sqlglot tree of a SELECT or set operation, refusing
    texts too long, nested too deeply, not starting like a query, or of several
    statements before the recursive parser sees them."""

    def __init__(self, *, max_sql_length: int, max_nesting_depth: int) -> None:
        self.max_sql_length = max_sql_length
        self.max_nesting_depth = max_nesting_depth
        self._dialect = Dialect.get_or_raise(INPUT_DIALECT)

    def tokenize(self, sql: str) -> list[Token]:
        if not isinstance(sql, str) or not sql.strip():
            raise QueryRejected("the query text is empty")
        if len(sql) > self.max_sql_length:
            raise QueryRejected(f"the query text is longer than {self.max_sql_length} characters")
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
        return tokens

    def _check_tokens(self, tokens: list[Token]) -> None:
        first = tokens[0]
        if first.token_type not in _QUERY_STARTS:
            if first.token_type == TokenType.VALUES:
                raise QueryRejected("VALUES lists are not allowed; use SELECT with literals")
            word = first.text.upper() if first.text.isidentifier() else repr(first.text)
            raise QueryRejected(f"{READ_ONLY_HINT} (found {word})")
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

    def parse(self, sql: str, tokens: list[Token]) -> exp.Expr:
        try:
            parsed = self._dialect.parser(error_level=ErrorLevel.IMMEDIATE).parse(tokens, sql)
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
        while type(tree) is exp.Subquery and set(set_args(tree)) == {"this"}:
            tree = tree.this
        if not isinstance(tree, (exp.Select, exp.SetOperation)):
            raise QueryRejected(f"{READ_ONLY_HINT} (found {keyword(tree)})")
        tree.pop()  # detach from any Subquery wrapper so it is the root
        return tree


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
