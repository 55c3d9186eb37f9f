"""Platform events in the running product: the platform announces changes, replicas apply them.

Publishing side (the platform process, `--role platform` or `--role all` with NATS):

- `Announcements` is the `ChangeListener` the platform services are built with. It tells
  the in-process listeners first (the local `EnginePurger`: that never fails the call),
  then publishes a `PlatformEvent` through `PlatformEventPublisher`:

      ConnectionAdmin.update           -> connection.updated
      ConnectionAdmin.delete           -> connection.deleted
      CatalogService.Select / Unselect -> selection.changed (stage, new catalog version)
      CatalogService.Refresh           -> metadata.refreshed (when it changed something)

- A publish that JetStream does not confirm is an error the admin caller sees
  (`EventNotPublished`, UNAVAILABLE). The change itself is committed by then, and the
  message says so: the caller must not repeat it. The event is kept in a bounded outbox
  and published again in the background until JetStream stores it (same event id, so it
  is stored once), and every failure is counted (`bus_events_publish_failed`). Purges
  commute, so an event that arrives late, after newer ones, does no harm.

Consuming side (each runtime replica): `PlatformEventApplier` is the handler of the
replica's durable consumer. It purges the local engine through an `EnginePurger`
(compiled statements, cached results and connectors of the connection, and the running
queries the change revokes;
the configuration is read again from the metadata store on the next query), once per
event id (`IdempotentHandler`), and returns only when the purge is done, so the event is
acknowledged after it was applied. `keys.rotated` needs nothing from the engine (keys are
read from the KMS on use) and is acknowledged as ignored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping

from fabric.errors import FabricError, SourceUnavailable
from fabric.messaging.events import (
    EventConsumer,
    EventKind,
    EventLog,
    IdempotentHandler,
    PlatformEvent,
)
from fabric.platform.departure import (
    CONNECTION_CHANGED,
    CONNECTION_DELETED,
    ChangeListener,
    ChangeListeners,
    EnginePurger,
)

log = logging.getLogger(__name__)

DEFAULT_PUBLISH_TIMEOUT = 5.0
DEFAULT_RETRY_INTERVAL = 2.0
DEFAULT_MAX_PENDING = 10_000


class EventNotPublished(SourceUnavailable):
    """The change is committed, but its platform event was not stored on the bus (yet)."""


class PlatformEventPublisher:
    """Publishes platform events to an `EventLog`; a `ChangeListener` too.

    Build it inside the event loop that owns the event log (its bus). `publish` is for
    coroutines on that loop; the `ChangeListener` methods are for the platform's worker
    threads and block until JetStream confirmed the event (or raise `EventNotPublished`).
    Called on the loop's own thread (which must not block) they publish in the
    background instead, failures going to the outbox as usual.
    """

    def __init__(
        self,
        events: EventLog,
        *,
        timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if timeout <= 0 or retry_interval <= 0 or max_pending < 1:
            raise ValueError("timeout, retry_interval and max_pending must be positive")
        self._events = events
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.max_pending = max_pending
        self._pending: OrderedDict[str, PlatformEvent] = OrderedDict()
        self._lock = threading.Lock()
        self._counts = {"published": 0, "publish_failed": 0, "republished": 0, "outbox_dropped": 0}
        self._wake = asyncio.Event()
        self._retrier: asyncio.Task[None] | None = None

    # -- publishing -----------------------------------------------------------------------

    async def _store(self, event: PlatformEvent) -> None:
        try:
            await asyncio.wait_for(self._events.publish_event(event), self.timeout)
        except TimeoutError:
            raise SourceUnavailable(
                f"JetStream did not confirm the event within {self.timeout:g}s"
            ) from None

    async def publish(self, event: PlatformEvent, change: str) -> None:
        """Store `event`; `change` says what was committed ("connection 'crm' was
        deleted"), for the error message when the event cannot be stored."""
        try:
            await self._store(event)
        except FabricError as error:
            self._count("publish_failed")
            self._keep(event)
            log.error(
                "platform event %s (%s) not published (%s); kept for retry",
                event.id,
                event.kind.value,
                error.code,
            )
            raise EventNotPublished(
                f"{change} and the change is committed, but the runtime replicas could not "
                f"be told: the {event.kind.value} event was not stored on the bus "
                f"({error.message}). Fabric keeps publishing it in the background; do not "
                "repeat the change. Until it is stored, replicas may keep serving results "
                "they cached for this connection."
            ) from None
        self._count("published")

    def publish_blocking(self, event: PlatformEvent, change: str) -> None:
        """`publish` from a thread other than the loop's (the platform's workers)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            task = self._loop.create_task(self.publish(event, change))
            task.add_done_callback(_retrieve)
            return
        future = asyncio.run_coroutine_threadsafe(self.publish(event, change), self._loop)
        try:
            future.result(self.timeout + 5.0)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._count("publish_failed")
            self._keep(event)
            raise EventNotPublished(
                f"{change} and the change is committed, but publishing its "
                f"{event.kind.value} event did not finish in time; Fabric keeps publishing "
                "it in the background; do not repeat the change."
            ) from None

    # ChangeListener
    def connection_changed(self, tenant: str, connection: str) -> None:
        self.publish_blocking(
            PlatformEvent(EventKind.CONNECTION_UPDATED, tenant, connection),
            f"connection {connection!r} was updated",
        )

    def connection_deleted(self, tenant: str, connection: str) -> None:
        self.publish_blocking(
            PlatformEvent(EventKind.CONNECTION_DELETED, tenant, connection),
            f"connection {connection!r} was deleted",
        )

    # -- the outbox -----------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _keep(self, event: PlatformEvent) -> None:
        with self._lock:
            self._pending[event.id] = event
            while len(self._pending) > self.max_pending:
                dropped, _ = self._pending.popitem(last=False)
                self._counts["outbox_dropped"] += 1
                log.error("platform event %s dropped from the full outbox", dropped)
        self._loop.call_soon_threadsafe(self._wake.set)

    @property
    def pending(self) -> int:
        """Events not stored yet, waiting in the outbox."""
        with self._lock:
            return len(self._pending)

    async def flush(self) -> int:
        """Try to store every waiting event once, oldest first; stops at the first failure
        (the bus is still away). Returns how many were stored."""
        stored = 0
        while True:
            with self._lock:
                if not self._pending:
                    return stored
                event = next(iter(self._pending.values()))
            try:
                await self._store(event)
            except FabricError:
                return stored
            with self._lock:
                self._pending.pop(event.id, None)
                self._counts["republished"] += 1
            stored += 1
            log.info("platform event %s (%s) published after a retry", event.id, event.kind.value)

    async def _retry(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                await asyncio.sleep(self.retry_interval)
                await self.flush()

    def start(self) -> None:
        """Start the background retry of the outbox (idempotent)."""
        if self._retrier is None:
            self._retrier = self._loop.create_task(self._retry(), name="events:outbox")

    async def stop(self) -> None:
        """Try the outbox once more, then stop the retry; events still waiting are logged
        by id (the stale-metadata sweeper on each replica is the backstop)."""
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
            self._retrier = None
        if self.pending:
            await self.flush()
        with self._lock:
            left = list(self._pending)
        for event_id in left:
            log.error("platform event %s was never stored on the bus", event_id)

    def snapshot(self) -> Mapping[str, float]:
        with self._lock:
            figures = {f"bus_events_{name}": float(n) for name, n in self._counts.items()}
            figures["bus_events_pending"] = float(len(self._pending))
        return figures


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("background event publish failed; the event is in the outbox")


class _RefreshListener:
    """The `ChangeListener` of CatalogService.Refresh: local purge, then metadata.refreshed."""

    def __init__(self, owner: Announcements) -> None:
        self._owner = owner

    def connection_changed(self, tenant: str, connection: str) -> None:
        self._owner.local.connection_changed(tenant, connection)
        publisher = self._owner.publisher
        if publisher is not None:
            publisher.publish_blocking(
                PlatformEvent(EventKind.METADATA_REFRESHED, tenant, connection),
                f"the metadata of connection {connection!r} was refreshed",
            )

    def connection_deleted(self, tenant: str, connection: str) -> None:
        self._owner.connection_deleted(tenant, connection)


class Announcements:
    """What the platform tells the runtime: in-process listeners first (their failures
    are logged, never the caller's), then the bus publisher, if any (its failure is the
    caller's: `EventNotPublished`)."""

    def __init__(
        self, local: ChangeListeners, publisher: PlatformEventPublisher | None = None
    ) -> None:
        self.local = local
        self.publisher = publisher

    def connection_changed(self, tenant: str, connection: str) -> None:
        self.local.connection_changed(tenant, connection)
        if self.publisher is not None:
            self.publisher.connection_changed(tenant, connection)

    def connection_deleted(self, tenant: str, connection: str) -> None:
        self.local.connection_deleted(tenant, connection)
        if self.publisher is not None:
            self.publisher.connection_deleted(tenant, connection)

    def refreshes(self) -> ChangeListener:
        """The listener for metadata refreshes (announced as metadata.refreshed)."""
        return _RefreshListener(self)

    async def selection_changed(
        self, tenant: str, connection: str, stage: str | None, catalog_version: int | None
    ) -> None:
        """Announce a committed selection change (from a coroutine on the loop): the local
        listeners first (in a worker thread: they read the metadata store to tell which
        running queries the change revokes), then the bus."""
        await asyncio.to_thread(self.local.connection_changed, tenant, connection)
        if self.publisher is None:
            return
        await self.publisher.publish(
            PlatformEvent(
                EventKind.SELECTION_CHANGED,
                tenant,
                connection,
                stage=stage or None,
                catalog_version=catalog_version,
            ),
            f"the selection of connection {connection!r} changed (catalog version "
            f"{catalog_version})",
        )


class PlatformEventApplier:
    """A runtime replica's event handler: purge the local engine, once per event id.

    Every kind but `keys.rotated` purges the connection: `connection.deleted` with the
    `connection_deleted` reason, the others with `connection_changed`. The purge runs in
    a worker thread; the handler returns (and the consumer acknowledges) after it.
    """

    def __init__(self, purger: EnginePurger, *, capacity: int = 10_000) -> None:
        self._purger = purger
        self._handler = IdempotentHandler(self._apply, capacity)
        self._lock = threading.Lock()
        self._applied: Counter[str] = Counter()
        self._failed = 0
        self._ignored = 0
        self._consumer: EventConsumer | None = None

    async def __call__(self, event: PlatformEvent) -> None:
        await self._handler(event)

    async def _apply(self, event: PlatformEvent) -> None:
        if event.kind is EventKind.KEYS_ROTATED:
            with self._lock:
                self._ignored += 1
            return
        reason = (
            CONNECTION_DELETED if event.kind is EventKind.CONNECTION_DELETED else CONNECTION_CHANGED
        )
        try:
            await asyncio.to_thread(self._purger.purge, event.tenant, event.connection, reason)
        except Exception:
            with self._lock:
                self._failed += 1
            raise
        with self._lock:
            self._applied[event.kind.value] += 1

    @property
    def applied(self) -> int:
        """Events applied (each id once)."""
        with self._lock:
            return sum(self._applied.values())

    @property
    def duplicates(self) -> int:
        """Deliveries skipped because their event was applied already."""
        return self._handler.skipped

    async def start(
        self, events: EventLog, durable_name: str, tenant: str | None = None
    ) -> EventConsumer:
        """Consume `events` under `durable_name` (resuming where it stopped)."""
        self._consumer = await events.consume(durable_name, self, tenant=tenant)
        return self._consumer

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def snapshot(self) -> Mapping[str, float]:
        with self._lock:
            figures = {
                "bus_events_applied": float(sum(self._applied.values())),
                "bus_events_apply_failed": float(self._failed),
                "bus_events_ignored": float(self._ignored),
            }
        figures["bus_events_duplicates"] = float(self._handler.skipped)
        return figures
