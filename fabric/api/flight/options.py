"""Per-call query options of the Flight SQL door, read from call headers.

Flight SQL has no field for Fabric's connection name, cache lifetime or row cap, but
every Flight SQL client can send gRPC headers with each call (ADBC:
`adbc.flight.sql.rpc.call_header.<name>`; the Flight SQL JDBC driver: URL properties
it does not know itself). The headers:

    x-fabric-connection   the connection a statement runs on (required for statements)
    x-fabric-cache-ttl    seconds the result may be served from memory (default 0)
    x-fabric-max-rows     rows wanted at most (default and cap: FABRIC_MAX_ROWS)
    x-fabric-timeout      seconds the query may take (capped by FABRIC_QUERY_TIMEOUT)

A value that does not parse is refused with the header named, never echoed.

The same four can be set once for a Flight session instead (SetSessionOptions,
`fabric.api.flight.sessions`): a session's values are the defaults of each call, and a
call's own header wins.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fabric.errors import InvalidArgument

CONNECTION_HEADER = "x-fabric-connection"
CACHE_TTL_HEADER = "x-fabric-cache-ttl"
MAX_ROWS_HEADER = "x-fabric-max-rows"
TIMEOUT_HEADER = "x-fabric-timeout"
_HEADERS = (CONNECTION_HEADER, CACHE_TTL_HEADER, MAX_ROWS_HEADER, TIMEOUT_HEADER)
_MAX_CONNECTION_NAME = 256


@dataclass(frozen=True, slots=True)
class QueryOptions:
    connection: str = ""
    cache_ttl: float = 0.0
    max_rows: int | None = None
    timeout: float | None = None

    def deadline(self) -> float | None:
        """The monotonic time the query must end by, counted from now (None: the
        gateway's FABRIC_QUERY_TIMEOUT alone)."""
        return None if self.timeout is None else time.monotonic() + self.timeout

    def require_connection(self) -> str:
        if not self.connection:
            raise InvalidArgument(
                f"name the connection to query in the '{CONNECTION_HEADER}' header (ADBC: "
                f"option adbc.flight.sql.rpc.call_header.{CONNECTION_HEADER}; JDBC: a URL "
                "property of that name)"
            )
        return self.connection


def query_options(
    metadata: Iterable[tuple[str, str | bytes]] | None,
    defaults: Mapping[str, str] | None = None,
) -> QueryOptions:
    """The options a call's headers carry; `defaults` (by header name: a session's
    options, already checked) for those it does not."""
    found: dict[str, str] = {}
    for key, value in metadata or ():
        name = key.lower()
        if name not in _HEADERS:
            continue
        if name in found:
            raise InvalidArgument(f"send the '{name}' header once")
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                raise InvalidArgument(f"the '{name}' header is not ASCII") from None
        found[name] = value.strip()
    for name, value in (defaults or {}).items():
        found.setdefault(name, value)
    return parsed_options(found)


def parsed_options(found: Mapping[str, str]) -> QueryOptions:
    """The options from their text values, by header name; InvalidArgument naming the
    first that does not parse."""
    connection = found.get(CONNECTION_HEADER, "")
    if len(connection) > _MAX_CONNECTION_NAME:
        raise InvalidArgument(f"the '{CONNECTION_HEADER}' header is too long")
    return QueryOptions(
        connection=connection,
        cache_ttl=_seconds(found, CACHE_TTL_HEADER, zero_ok=True) or 0.0,
        max_rows=_count(found, MAX_ROWS_HEADER),
        timeout=_seconds(found, TIMEOUT_HEADER, zero_ok=False),
    )


def _seconds(found: Mapping[str, str], name: str, *, zero_ok: bool) -> float | None:
    raw = found.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        bound = "zero or more" if zero_ok else "more than zero"
        raise InvalidArgument(f"the '{name}' header must be a number of seconds, {bound}")
    return value


def _count(found: Mapping[str, str], name: str) -> int | None:
    raw = found.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18 or int(raw) <= 0:
        raise InvalidArgument(f"the '{name}' header must be a whole number above zero")
    return int(raw)
