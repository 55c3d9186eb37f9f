"""Structured logs that never carry values.

A query's SQL appears in a log line only when the query fails, and then with every
literal masked (`WHERE name = ?`): literals in app SQL are often the very values (names,
e-mail addresses) the gateway must not leak. Parameter values, rows, passwords and tokens
are never passed to a logger in the first place; this module gives the one formatter
and the one masking function the rest of the code uses.

Libraries log too, and their lines can carry what ours never do: psycopg_pool logs a
failed connection attempt with the server's FATAL text, which names databases and
users. Both formatters write a library's record as its message template with every
argument replaced (an exception by its type name) and never a library's traceback text.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from sqlglot.dialects.postgres import Postgres
from sqlglot.tokenizer_core import TokenType

LITERAL_TOKENS = frozenset(
    {
        TokenType.STRING,
        TokenType.NUMBER,
        TokenType.NATIONAL_STRING,
        TokenType.BIT_STRING,
        TokenType.HEX_STRING,
        TokenType.BYTE_STRING,
        TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.UNICODE_STRING,
    }
)
"""sqlglot token types that carry a literal value (masked in logs, never echoed)."""

# Fallback when the text does not even tokenize: quoted runs and digit runs go.
_FALLBACK = re.compile(r"'(?:[^']|'')*'?|\$[^$]*\$.*?(?:\$[^$]*\$|$)|\b\d[\d.eE+-]*\b", re.S)
MAX_LOGGED_SQL = 2_000
MAX_LOGGED_NAME = 200
"""Characters of a name (connection, parameter) a log line keeps."""
MAX_LOGGED_PARAMS = 100
"""Parameter names a log line lists."""
_DIALECT = Postgres()  # Fabric SQL is PostgreSQL-flavoured


def mask_literals(sql: str) -> str:
    """The start of the SQL (at most MAX_LOGGED_SQL characters) with every literal replaced
    by `?`, comments dropped, whitespace squeezed.

    The text is cut before it is masked, so the work is bounded whatever its length; a
    literal or comment the cut opens is masked or dropped to the end of the line.
    """
    sql = sql[:MAX_LOGGED_SQL]
    try:
        tokens = _DIALECT.tokenize(sql)
    except Exception:
        masked = _FALLBACK.sub("?", sql)
        return " ".join(masked.split())
    # Rebuilt from the tokens, so comments (not tokens) vanish; a gap in the original text
    # between two tokens becomes one space.
    parts: list[str] = []
    previous_end = None
    for token in tokens:
        if previous_end is not None and token.start > previous_end + 1:
            parts.append(" ")
        parts.append(
            "?" if token.token_type in LITERAL_TOKENS else sql[token.start : token.end + 1]
        )
        previous_end = token.end
    return "".join(parts)


def shorten(text: str, limit: int = MAX_LOGGED_NAME) -> str:
    """`text` cut to `limit` characters, marked with `...` when it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


OWN_LOGGERS = ("fabric", "connectors", "benchmarks", "tests")
"""Top-level logger names whose records are written as they are: this code never passes a
value to a logger. Every other logger is a library's, and is redacted."""
REDACTED = "<redacted>"


def _is_library(record: logging.LogRecord) -> bool:
    return record.name.partition(".")[0] not in OWN_LOGGERS


def _placeholder(value: object) -> object:
    if isinstance(value, BaseException):
        return type(value).__name__
    if isinstance(value, bool | int | float):
        return value  # counts and sizes: no text of anyone's
    return REDACTED


def safe_message(record: logging.LogRecord) -> str:
    """The record's message; for a library's record, its template with the arguments
    replaced (`_placeholder`) and the exception's type named instead of its text."""
    if not _is_library(record):
        return record.getMessage()
    template = str(record.msg)
    args = record.args
    if args:
        values: Any = (
            {k: _placeholder(v) for k, v in args.items()}
            if isinstance(args, dict)
            else tuple(_placeholder(a) for a in args)
        )
        try:
            template = template % values
        except (TypeError, ValueError, KeyError):
            template = f"{template} [arguments {REDACTED}]"
    if record.exc_info and record.exc_info[0] is not None:
        template += f" ({record.exc_info[0].__name__})"
    return template


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, library records redacted (`safe_message`)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not _is_library(record):
            return super().format(record)
        redacted = logging.makeLogRecord(
            {**record.__dict__, "msg": safe_message(record), "args": None, "exc_info": None}
        )
        redacted.exc_text = None
        redacted.stack_info = None
        return super().format(redacted)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the `extra` fields."""

    _STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": safe_message(record),
        }
        if not _is_library(record):
            # The `extra` fields: only this code's (a library's could carry anything).
            for key, value in record.__dict__.items():
                if key not in self._STANDARD and not key.startswith("_"):
                    entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: exception texts can echo values.
            entry["error_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "warning", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
