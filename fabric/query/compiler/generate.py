"""Generation: target-dialect text from the checked tree, with the driver's placeholders."""

from __future__ import annotations

import re
import secrets

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel

from connectors.base import ParamStyle
from fabric.errors import InternalError


def generate(
    tree: exp.Expr, dialect: Dialect, param_style: ParamStyle, source_text: str
) -> tuple[str, tuple[str, ...]]:
    """Generate `dialect`'s text with the driver's placeholders, and their names in order.

    Placeholders are generated as unique sentinel words first and substituted in the text
    afterwards, so the placeholder order is the text order whatever the generator did
    (reordered or repeated an expression), and `%` can be doubled without touching them.
    """
    nonce = secrets.token_hex(6)
    while nonce in source_text.lower():
        nonce = secrets.token_hex(6)
    names: list[str] = []
    sentinels: dict[int, exp.Var] = {}
    placeholders = list(tree.find_all(exp.Placeholder))
    for placeholder in placeholders:
        sentinels[id(placeholder)] = exp.Var(this=f"fabricp{nonce}n{len(names)}e")
        names.append(placeholder.name)
    # A list argument (an IN list) is rebuilt once: replacing its elements one by one
    # costs the list's length each time, quadratic for a long list of parameters.
    rebuilt: set[tuple[int, str]] = set()
    for placeholder in placeholders:
        parent, key = placeholder.parent, placeholder.arg_key
        siblings = parent.args.get(key) if parent is not None and key is not None else None
        if parent is not None and key is not None and isinstance(siblings, list):
            if (id(parent), key) not in rebuilt:
                rebuilt.add((id(parent), key))
                parent.set(key, [sentinels.get(id(node), node) for node in siblings])
        else:
            placeholder.replace(sentinels[id(placeholder)])
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
