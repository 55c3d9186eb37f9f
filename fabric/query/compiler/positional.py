"""Positional parameters (`?`) as Fabric's named ones, for doors whose clients write `?`.

Fabric SQL names its parameters (`:name`). Flight SQL, JDBC and ODBC clients write `?`
and bind by position, so a door that serves them renames each `?` to `:p1`, `:p2`, ...
in text order before the query is compiled. The `?` are found by the tokenizer Fabric
SQL is read with, so a `?` inside a string, a quoted name or a comment is left alone.
A text that mixes `?` with `:name` is refused: the two numberings could collide.
"""

from __future__ import annotations

import itertools

from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import TokenError
from sqlglot.tokenizer_core import TokenType

from fabric.errors import QueryRejected
from fabric.query.compiler.reader import INPUT_DIALECT, check_text_length

POSITIONAL_PREFIX = "p"
"""`?` number n (from 1) becomes the parameter `:p<n>`."""

_NAME_TOKENS = frozenset({TokenType.VAR, TokenType.IDENTIFIER})


def named_from_positional(sql: str, max_length: int) -> tuple[str, int]:
    """`sql` with every positional `?` renamed `:p1`, `:p2`, ... and how many there were.

    A text without `?` comes back as it is (0); one longer than `max_length` is refused
    before it is tokenized, one that does not tokenize is left for the compiler to
    refuse with its own message."""
    if "?" not in sql:
        return sql, 0
    check_text_length(sql, max_length)
    try:
        tokens = Dialect.get_or_raise(INPUT_DIALECT).tokenize(sql)
    except TokenError:
        return sql, 0
    places = [t for t in tokens if t.token_type == TokenType.PLACEHOLDER and t.text == "?"]
    if not places:
        return sql, 0
    for before, after in itertools.pairwise(tokens):
        if (
            before.token_type == TokenType.COLON
            and after.token_type in _NAME_TOKENS
            and after.start == before.end + 1
        ):
            raise QueryRejected(
                "a query may use positional parameters (?) or named ones (:name), not both"
            )
    parts: list[str] = []
    done = 0
    for number, token in enumerate(places, start=1):
        parts += (sql[done : token.start], f" :{POSITIONAL_PREFIX}{number} ")
        done = token.end + 1
    parts.append(sql[done:])
    return "".join(parts), len(places)
