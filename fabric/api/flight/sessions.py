"""Flight session options: Fabric's per-call headers, set once for a session.

Flight's SetSessionOptions, GetSessionOptions and CloseSession actions keep options on
the server for a client session, which the `arrow_flight_session_id` cookie names (the
server sends it as `set-cookie` when it opens a session; ADBC's Flight SQL driver sends
it back with its cookie middleware on, `adbc.flight.sql.rpc.with_cookie_middleware`).
The options are the call headers' (`fabric.api.flight.options`), by these names:

    connection   text     the connection statements run on
    cache_ttl    number   seconds a result may be served from memory
    max_rows     integer  rows wanted at most
    timeout      number   seconds a query may take

A number may also be sent as text. Each is checked as its header is; an unknown name
is answered INVALID_NAME and a bad value INVALID_VALUE (per option, as Flight says),
never echoed. An option sent without a value is erased. A session belongs to the token's
tenant, stage and principal: another caller presenting its cookie finds nothing. It is
dropped by CloseSession, or after FABRIC_STATEMENT_IDLE_LIMIT unused, like a statement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from fabric.api.flight.options import (
    CACHE_TTL_HEADER,
    CONNECTION_HEADER,
    MAX_ROWS_HEADER,
    TIMEOUT_HEADER,
    parsed_options,
)
from fabric.errors import InvalidArgument
from fabric.v1 import flight_pb2 as fl

SESSION_COOKIE = "arrow_flight_session_id"
OPTION_HEADERS = {
    "connection": CONNECTION_HEADER,
    "cache_ttl": CACHE_TTL_HEADER,
    "max_rows": MAX_ROWS_HEADER,
    "timeout": TIMEOUT_HEADER,
}
_TEXT_OPTIONS = frozenset({"connection"})
_INTEGER_OPTIONS = frozenset({"max_rows"})
_Error = fl.SetSessionOptionsResult.ErrorValue


@dataclass(slots=True)
class FlightSession:
    principal: str
    values: dict[str, str] = field(default_factory=dict)
    """Checked option values as text, by option name."""

    def defaults(self) -> dict[str, str]:
        """The values by header name, as `query_options` takes them."""
        return {OPTION_HEADERS[name]: value for name, value in self.values.items()}

    def update(self, options: Mapping[str, fl.SessionOptionValue]) -> dict[str, int]:
        """Set (or erase) each option; the errors of those refused (left as they
        were), by name."""
        errors: dict[str, int] = {}
        for name, value in options.items():
            if name not in OPTION_HEADERS:
                errors[name] = _Error.INVALID_NAME
                continue
            kind = value.WhichOneof("option_value")
            if kind is None:
                self.values.pop(name, None)
                continue
            text = _text(name, value, kind)
            if text is None or not _valid(name, text):
                errors[name] = _Error.INVALID_VALUE
                continue
            self.values[name] = text
        return errors

    def options(self) -> dict[str, fl.SessionOptionValue]:
        """The options set, typed as their names say."""
        typed: dict[str, fl.SessionOptionValue] = {}
        for name, text in self.values.items():
            if name in _TEXT_OPTIONS:
                typed[name] = fl.SessionOptionValue(string_value=text)
            elif name in _INTEGER_OPTIONS:
                typed[name] = fl.SessionOptionValue(int64_value=int(text))
            else:
                typed[name] = fl.SessionOptionValue(double_value=float(text))
        return typed

    def __repr__(self) -> str:
        return f"FlightSession(options={sorted(self.values)})"


def _text(name: str, value: fl.SessionOptionValue, kind: str) -> str | None:
    if kind == "string_value":
        text: str = value.string_value.strip()
        return text
    if name in _TEXT_OPTIONS:
        return None
    if kind == "int64_value":
        return str(value.int64_value)
    if kind == "double_value" and math.isfinite(value.double_value):
        number = value.double_value
        if name in _INTEGER_OPTIONS:
            return str(int(number)) if number.is_integer() else None
        return repr(number)
    return None


def _valid(name: str, text: str) -> bool:
    try:
        options = parsed_options({OPTION_HEADERS[name]: text})
    except InvalidArgument:
        return False
    return name != "connection" or bool(options.connection)


def session_id(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The session the call's cookies name, if any."""
    for key, value in metadata or ():
        if key.lower() != "cookie":
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else value
        for part in text.split(";"):
            name, _, found = part.strip().partition("=")
            if name == SESSION_COOKIE and found:
                return found.strip('"')
    return None


def session_cookie(identifier: str) -> tuple[str, str]:
    """The header that gives the client its session."""
    return ("set-cookie", f"{SESSION_COOKIE}={identifier}")
