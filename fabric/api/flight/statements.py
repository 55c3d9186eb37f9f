"""What the Flight SQL door holds between calls: prepared statements and started results.

Flight SQL spreads one query over several calls (prepare, bind, GetFlightInfo, DoGet,
close), so the door keeps state between them, in `StatementRegistry`s with the rules of
the gRPC API's open statements: found only by the tenant and stage (and principal) that
made them, released on close, when consumed, when their connection is purged, and by a
sweeper after FABRIC_STATEMENT_IDLE_LIMIT; bounded by FABRIC_MAX_OPEN_STATEMENTS.

- A `PreparedQuery` holds a checked query text, its parameter names and the values
  bound last (dropped with it).
- A `StartedResult` is a query GetFlightInfo started (so its FlightInfo can carry the
  result's schema): the engine's result stream with its schema taken, until DoGet reads
  it. Releasing it closes the stream, which cancels the query at its source.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from fabric.api.flight.options import QueryOptions
from fabric.query.runs import Summary


@dataclass(slots=True)
class PreparedQuery:
    connection: str
    sql: str
    """The text as compiled (positional `?` already renamed)."""
    names: tuple[str, ...]
    """Parameter names in order of first use: the parameter schema."""
    fingerprint: str
    """The compiled statement's, naming its result schema (`schemas.ResultSchemas`)."""
    options: QueryOptions
    principal: str
    params: dict[str, Any] = field(default_factory=dict)
    bound: bool = False

    def __repr__(self) -> str:
        # Parameter values stay out of logs and tracebacks.
        return f"PreparedQuery(connection={self.connection!r}, names={self.names!r})"


@dataclass(slots=True)
class StartedResult:
    items: AsyncGenerator[bytes | Summary, None]
    """The engine's result stream; its schema message has been taken."""
    schema: bytes
    loop: asyncio.AbstractEventLoop
    principal: str
    reader: asyncio.Task[Any] | None = None
    """The DoGet call streaming it, while one does."""
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop the query: the DoGet streaming it ends CANCELLED (its stream is closed on
        the way out, which cancels the source query); one not yet read is closed."""
        self.cancelled = True
        if self.reader is not None:
            self.loop.call_soon_threadsafe(self.reader.cancel)

    def close(self) -> None:
        """Release the result (from any thread): its stream is closed on the loop.

        A stream DoGet read to its end, or closed, has nothing left to close (the
        common case): no task, future and loop wake-up are spent on a no-op."""
        if getattr(self.items, "ag_frame", self) is None:  # finished or closed already
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: so is the stream
            asyncio.run_coroutine_threadsafe(self.items.aclose(), self.loop)

    def __repr__(self) -> str:
        return f"StartedResult(reading={self.reader is not None}, cancelled={self.cancelled})"
