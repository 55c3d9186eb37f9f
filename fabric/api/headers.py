"""A gRPC call's response headers (initial metadata), gathered and sent once.

gRPC sends a call's initial metadata once. The access log's request id goes in it, and a
handler may need a header of its own there too (Flight SQL's session cookie), so the
door opens a set of pending headers per call (`pending_headers`), a handler adds to it
(`add_header`), and it is sent as a whole (`send_headers`) before the call's first reply,
when the handler ends without one, or with an error (`fabric.api.status.abort_with`)."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc


@dataclass(slots=True)
class _Pending:
    context: grpc.aio.ServicerContext
    pairs: list[tuple[str, str]] = field(default_factory=list)
    sent: bool = False


_PENDING: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
    "fabric_pending_headers", default=None
)


@contextmanager
def pending_headers(
    context: grpc.aio.ServicerContext, pairs: Sequence[tuple[str, str]]
) -> Iterator[None]:
    """Hold `pairs` (and what handlers add) as the call's headers until `send_headers`."""
    token = _PENDING.set(_Pending(context, list(pairs)))
    try:
        yield
    finally:
        _PENDING.reset(token)


async def add_header(context: grpc.aio.ServicerContext, key: str, value: str) -> None:
    """Add a header to the call's initial metadata: held with the others while they are
    pending, else (a call without pending headers) sent at once."""
    pending = _PENDING.get()
    if pending is None or pending.context is not context or pending.sent:
        await context.send_initial_metadata(((key, value),))
        return
    pending.pairs.append((key, value))


async def send_headers(context: grpc.aio.ServicerContext) -> None:
    """Send the call's pending headers, once (nothing when there are none)."""
    pending = _PENDING.get()
    if pending is None or pending.context is not context or pending.sent:
        return
    pending.sent = True
    await context.send_initial_metadata(tuple(pending.pairs))
