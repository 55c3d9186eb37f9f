"""Values typed on the command line, checked and converted: parameters, settings,
counts, SQL from a file or standard input, passwords.

A mistake here is a usage error (`UsageError`, exit status 2) whose message says what
to type instead; nothing here echoes a password or a parameter's value.
"""

from __future__ import annotations

import argparse
import datetime as dt
import difflib
import re
import sys
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, TextIO

from connectors.registry import ConnectorSpec, SettingType
from fabric.errors import InvalidArgument
from fabric.model import SettingValue

__all__ = [
    "PARAM_TYPES",
    "UsageError",
    "inferred_names",
    "non_negative_int",
    "parse_param",
    "parse_setting",
    "positive_float",
    "positive_int",
    "read_password",
    "read_sql",
    "settings_for",
    "suggest",
]

_PARAM = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<type>[a-z]+))?=(?P<value>.*)$", re.S)
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")
_PLAIN_FLOAT = re.compile(r"-?(?:0|[1-9][0-9]*)\.[0-9]+")
_INT64 = 1 << 63


class UsageError(InvalidArgument):
    """The command line itself is wrong: exit status 2, and a message saying what to type."""


# -- argparse value types ------------------------------------------------------------------


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


# -- parameters ----------------------------------------------------------------------------


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered not in ("true", "false"):
        raise ValueError(text)
    return lowered == "true"


PARAM_TYPES: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "decimal": Decimal,
    "bool": _boolean,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timestamp": dt.datetime.fromisoformat,
    "bytes": bytes.fromhex,
    "null": lambda _: None,
}
"""NAME:TYPE=VALUE types and how each reads its text."""


def _infer(raw: str) -> Any:
    """The value of an untyped `NAME=VALUE`: an integer or a float only when that number
    prints back exactly as typed (so `007`, `+5`, `1.50` and `1e3` stay text, as do
    integers beyond 64 bits), `true`/`false`, `null`, else the text itself."""
    if raw == "null":
        return None
    if raw in ("true", "false"):
        return raw == "true"
    if _CANONICAL_INT.fullmatch(raw):
        number = int(raw)
        return number if -_INT64 <= number < _INT64 and str(number) == raw else raw
    if _PLAIN_FLOAT.fullmatch(raw):
        number_f = float(raw)
        return number_f if repr(number_f) == raw else raw
    return raw


def parse_param(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` (type inferred, see `_infer`) or `NAME:TYPE=VALUE`."""
    match = _PARAM.match(text)
    if match is None:
        raise UsageError(
            "parameters are NAME=VALUE or NAME:TYPE=VALUE (NAME: letters, digits, '_'; "
            f"TYPE: {' '.join(PARAM_TYPES)})"
        )
    name, kind, raw = match["name"], match["type"], match["value"]
    if kind is None:
        return name, _infer(raw)
    convert = PARAM_TYPES.get(kind)
    if convert is None:
        raise UsageError(
            f"parameter {name!r} has an unknown type {kind!r}; use one of {' '.join(PARAM_TYPES)}"
            + _did_you_mean(kind, PARAM_TYPES)
        )
    try:
        return name, convert(raw)
    except (ValueError, ArithmeticError):
        # The value stays out of the message: it may be personal data.
        raise UsageError(f"parameter {name!r} is not a valid {kind}") from None


def inferred_names(texts: Iterable[str]) -> list[str]:
    """Names of the parameters given without a type (NAME=VALUE)."""
    names = []
    for text in texts:
        match = _PARAM.match(text)
        if match is not None and match["type"] is None:
            names.append(match["name"])
    return names


# -- connection settings -------------------------------------------------------------------


def parse_setting(text: str) -> tuple[str, str]:
    """`KEY=VALUE` as typed; `settings_for` converts it to the setting's declared type."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UsageError(f"settings are KEY=VALUE (--set host=db.example.com), got {text!r}")
    return key.strip(), raw


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The choice nearest to `word`, if one is near enough to be a likely typo."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    near = suggest(word, choices)
    return f" (did you mean {near!r}?)" if near else ""


# Names people type for a declared setting that difflib would not find.
_ALIASES = {
    "hostname": "host",
    "server": "host",
    "db": "database",
    "dbname": "database",
    "username": "user",
    "login": "user",
    "file": "path",
}


def _setting_value(spec: ConnectorSpec, key: str, raw: str) -> SettingValue:
    declared = spec.setting(key)
    assert declared is not None
    try:
        if declared.type is SettingType.INTEGER:
            return int(raw)
        if declared.type is SettingType.NUMBER:
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        if declared.type is SettingType.BOOLEAN:
            return _boolean(raw)
    except ValueError:
        expected = {
            SettingType.INTEGER: "a whole number",
            SettingType.NUMBER: "a number",
            SettingType.BOOLEAN: "true or false",
        }[declared.type]
        raise UsageError(f"setting {key!r} must be {expected}, not {raw!r}") from None
    return raw


def settings_for(spec: ConnectorSpec, given: Iterable[tuple[str, str]]) -> dict[str, SettingValue]:
    """`--set` values checked against the settings `spec` declares and converted to their
    types; a misspelled key names the nearest declared one."""
    known = [s.name for s in spec.settings if not s.secret]
    result: dict[str, SettingValue] = {}
    for key, raw in given:
        declared = spec.setting(key)
        if declared is None:
            near = _ALIASES.get(key.lower()) or suggest(key, known)
            hint = f" Did you mean --set {near}=...?" if near in known else ""
            raise UsageError(
                f"{spec.kind} connections have no setting {key!r}.{hint} "
                f"Known settings: {', '.join(known)} (see `fabric connection create --help`)"
            )
        if declared.secret:
            raise UsageError(
                f"setting {key!r} is a secret: give it with --password-prompt or "
                "--password-stdin, never as a setting"
            )
        if key in result:
            raise UsageError(f"setting {key!r} is given twice")
        result[key] = _setting_value(spec, key, raw)
    return result


# -- text from files, standard input, the terminal ------------------------------------------


def read_sql(sql: str | None, file: str | None, stdin: TextIO | None = None) -> str:
    """The query's text: the SQL argument, or the file `-f FILE` names (`-` or an SQL
    argument of `-`: standard input)."""
    stdin = stdin or sys.stdin
    if sql is not None and file is not None and sql != "-":
        raise UsageError("give the SQL as an argument or with -f FILE, not both")
    source = file if file is not None else sql
    if source is None:
        raise UsageError("no SQL: give it as an argument, with -f FILE, or '-' to read stdin")
    if source == "-":
        if stdin.isatty():
            raise UsageError(
                "'-' reads the SQL from standard input, which is a terminal here: pipe it "
                "(fabric query NAME - < q.sql) or use -f FILE"
            )
        text = stdin.read()
    elif file is not None:
        try:
            with open(file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as error:
            raise UsageError(
                f"cannot read the SQL file {file!r}: {error.strerror or error}"
            ) from None
        except UnicodeDecodeError:
            raise UsageError(f"the SQL file {file!r} is not UTF-8 text") from None
    else:
        text = source
    if not text.strip():
        raise UsageError("the SQL is empty")
    return text


def read_password(
    *, from_stdin: bool, prompt: bool, stdin: TextIO | None = None, what: str = "password"
) -> str | None:
    """The password from the first line of standard input, or asked for on the terminal
    without echo; None when neither was asked for."""
    stdin = stdin or sys.stdin
    if from_stdin:
        password = stdin.readline().rstrip("\r\n")
    elif prompt:
        if not stdin.isatty():
            raise UsageError(
                "--password-prompt needs a terminal to ask on; standard input is not one "
                "here: pipe the password with --password-stdin instead"
            )
        import getpass

        try:
            password = getpass.getpass(f"{what}: ")
        except EOFError:
            raise UsageError("no password was typed") from None
    else:
        return None
    if not password:
        raise UsageError("the password is empty")
    return password
