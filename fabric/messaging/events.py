"""Platform events: what changed on the control plane, delivered durably to every replica.

The platform publishes a `PlatformEvent` on an `EventLog`; each runtime replica consumes
with its own durable name, so each replica sees every event, and one that was down gets
the events published meanwhile when it comes back. Delivery is at least once:

- the handler is awaited and the event acknowledged only after it returns;
- when the handler raises, the event is redelivered after a growing delay, up to
  `RedeliveryPolicy.max_deliver` deliveries (then it is logged by id and dropped);
- so handlers must be idempotent; every event carries a unique `id`, and
  `IdempotentHandler` skips ids it has already applied.

Events carry names and versions only (tenant, connection, stage, catalog version), never
a value from a row or a parameter, and they are JSON on the wire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from fabric.errors import InvalidArgument
from fabric.messaging.bus import event_subject, subject_token

log = logging.getLogger(__name__)

EVENT_FORMAT_VERSION = 1
"""`v` field of the JSON encoding; a decoder refuses versions it does not know."""


class EventKind(StrEnum):
    """What happened; the value is also the tail of the event's subject."""

    CONNECTION_UPDATED = "connection.updated"
    CONNECTION_DELETED = "connection.deleted"
    SELECTION_CHANGED = "selection.changed"
    METADATA_REFRESHED = "metadata.refreshed"
    KEYS_ROTATED = "keys.rotated"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class PlatformEvent:
    """One change on the platform. `id` is unique per event (not per delivery), so a
    redelivered event has the same id; `at` is when the platform published it (UTC)."""

    kind: EventKind
    tenant: str
    connection: str
    stage: str | None = None
    catalog_version: int | None = None
    id: str = field(default_factory=_new_id)
    at: dt.datetime = field(default_factory=_utcnow)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EventKind(self.kind))
        event_subject(self.kind.value, self.tenant)  # validates the tenant token
        if not isinstance(self.connection, str) or not self.connection:
            raise InvalidArgument("a platform event needs a connection name")
        if self.stage is not None:
            subject_token(self.stage, "stage")
        if self.catalog_version is not None and (
            isinstance(self.catalog_version, bool) or not isinstance(self.catalog_version, int)
        ):
            raise InvalidArgument("a platform event's catalog_version must be an integer")
        try:
            uuid.UUID(self.id)
        except (ValueError, TypeError, AttributeError):
            raise InvalidArgument("a platform event's id must be a UUID") from None
        if self.at.tzinfo is None:
            raise InvalidArgument("a platform event's time must carry a time zone")

    @property
    def subject(self) -> str:
        """`fabric.events.<tenant>.<kind>`."""
        return event_subject(self.kind.value, self.tenant)

    def to_json(self) -> bytes:
        """The wire form: compact JSON, keys sorted."""
        body: dict[str, Any] = {
            "v": EVENT_FORMAT_VERSION,
            "id": self.id,
            "kind": self.kind.value,
            "tenant": self.tenant,
            "connection": self.connection,
            "stage": self.stage,
            "catalog_version": self.catalog_version,
            "at": self.at.astimezone(dt.UTC).isoformat(),
        }
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PlatformEvent:
        """Decode `to_json` output; anything else raises `InvalidArgument` (the message
        names the problem, never the content)."""
        try:
            body = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("a platform event is not valid JSON") from None
        if not isinstance(body, dict):
            raise InvalidArgument("a platform event must be a JSON object")
        if body.get("v") != EVENT_FORMAT_VERSION:
            raise InvalidArgument("a platform event has an unknown format version")
        try:
            return cls(
                kind=EventKind(body["kind"]),
                tenant=body["tenant"],
                connection=body["connection"],
                stage=body.get("stage"),
                catalog_version=body.get("catalog_version"),
                id=body["id"],
                at=dt.datetime.fromisoformat(body["at"]),
            )
        except (KeyError, ValueError, TypeError, InvalidArgument):
            raise InvalidArgument("a platform event has a missing or malformed field") from None


EventHandler = Callable[[PlatformEvent], Awaitable[None]]
"""Applies one event; returns when applied (then the event is acknowledged)."""


@dataclass(frozen=True, slots=True)
class RedeliveryPolicy:
    """How a consumer retries an event whose handler raised."""

    max_deliver: int = 20
    """Deliveries of one event, the first included; after the last failure the event is
    logged (by id) and dropped so that it cannot block the others forever."""
    initial_delay: float = 0.5
    """Seconds before the first redelivery; doubled on each further failure."""
    max_delay: float = 30.0
    """Upper bound of the redelivery delay, in seconds."""
    ack_wait: float = 30.0
    """NATS: seconds a delivery may stay unacknowledged before the server redelivers it
    (a replica that died mid-handler). A running handler keeps extending it."""

    def __post_init__(self) -> None:
        if self.max_deliver < 1:
            raise InvalidArgument("max_deliver must be at least 1")
        if self.initial_delay < 0 or self.max_delay < self.initial_delay:
            raise InvalidArgument("need 0 <= initial_delay <= max_delay")
        if self.ack_wait <= 0:
            raise InvalidArgument("ack_wait must be positive")

    def delay(self, deliveries: int) -> float:
        """Seconds to wait before redelivering an event that failed `deliveries` times."""
        exponent = max(0, min(deliveries - 1, 30))
        return float(min(self.initial_delay * (2**exponent), self.max_delay))


DEFAULT_REDELIVERY = RedeliveryPolicy()


@runtime_checkable
class EventConsumer(Protocol):
    """A running durable consumer; `stop` ends delivery. Its position is kept, so the same
    durable name consumed again resumes where it stopped (unacknowledged events first)."""

    @property
    def durable_name(self) -> str: ...

    async def stop(self) -> None: ...


@runtime_checkable
class EventLog(Protocol):
    """Durable platform events. Implementations: `InProcessEventLog`, `JetStreamEventLog`."""

    async def publish_event(self, event: PlatformEvent) -> None:
        """Store the event durably; returns once stored, raises `SourceUnavailable` when it
        cannot be. Publishing the same event (same id) again stores it once."""
        ...

    async def consume(
        self,
        durable_name: str,
        handler: EventHandler,
        *,
        tenant: str | None = None,
    ) -> EventConsumer:
        """Start delivering events (of one tenant, or all) to `handler` under a durable
        name. A new durable name starts with events published from now on; an existing
        one resumes. One process consumes a durable name at most once at a time."""
        ...

    async def unacknowledged(self, durable_name: str) -> int:
        """Events delivered to a durable and not acknowledged yet; `NotFound` for an
        unknown durable."""
        ...

    async def outstanding(self, durable_name: str) -> int:
        """Events of a durable's filter it has not acknowledged yet: delivered and
        unacknowledged, and not delivered at all (0: it has caught up); `NotFound` for
        an unknown durable."""
        ...

    async def close(self) -> None:
        """Stop all consumers of this log (idempotent)."""
        ...


class IdempotentHandler:
    """Wraps a handler so that an event id applied once is not applied again.

    JetStream can redeliver an event the handler already applied (the acknowledgement was
    lost in a reconnect); with this wrapper the second delivery is acknowledged without
    running the handler. It remembers the last `capacity` ids of this process; handlers
    should still be harmless to repeat (purge, reload), this only saves the work.
    """

    def __init__(self, handler: EventHandler, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise InvalidArgument("capacity must be at least 1")
        self._handler = handler
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.skipped = 0
        """Deliveries skipped because their id was already applied."""

    def seen(self, event_id: str) -> bool:
        """Whether the event with this id was applied by this wrapper (and remembered)."""
        return event_id in self._seen

    async def __call__(self, event: PlatformEvent) -> None:
        if event.id in self._seen:
            self._seen.move_to_end(event.id)
            self.skipped += 1
            log.debug("platform event %s already applied; skipped", event.id)
            return
        await self._handler(event)
        self._seen[event.id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)


def durable_token(durable_name: str) -> str:
    """A durable consumer name is one subject-safe token (it names a JetStream consumer)."""
    return subject_token(durable_name, "durable consumer name")


async def finish_task(task: asyncio.Task[None], timeout: float) -> None:
    """Wait for a consumer task to end (cancelling it after `timeout`), never raising what
    the task raised: a handler that died with the task is redelivered, not re-raised."""
    await asyncio.wait({task}, timeout=timeout)
    if not task.done():
        task.cancel()
        await asyncio.wait({task})


def watch_task(task: asyncio.Task[None]) -> asyncio.Task[None]:
    """Log (by exception type) a consumer task that ends with an error, when it ends."""

    def report(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error(
                "event consumer %s stopped by %s",
                done.get_name(),
                type(done.exception()).__name__,
            )

    task.add_done_callback(report)
    return task
