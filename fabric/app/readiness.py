"""When a runtime replica can serve: its metadata store answers and it has applied every
platform event published for it so far. Until then its health says NOT_SERVING and its
query calls are refused with UNAVAILABLE (retry elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping

from fabric.catalog.metadata.store import MetadataStore
from fabric.errors import FabricError
from fabric.messaging.events import EventLog

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05
"""Seconds between two checks while a replica is not ready."""
SLOW_START = 10.0
"""Seconds after which a replica that is still not ready says in its log what it waits for."""


class ReplicaReadiness:
    """Waits until a replica is ready, and says how far it got.

    `metadata_loaded`: the metadata store answered a read (its schema is migrated and
    reachable), so catalogs resolve on the first call. `events_caught_up`: the replica's
    durable consumer `durable_name` on `events` has nothing left to apply (no event
    undelivered nor unacknowledged), so nothing it serves predates a purge it was owed.
    A replica of a new id starts with events published from then on, so it is caught up
    at once; one coming back under its id first applies what it missed.
    """

    def __init__(
        self,
        store: MetadataStore,
        events: EventLog,
        durable_name: str,
        *,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._store = store
        self._events = events
        self._durable_name = durable_name
        self._poll = poll_interval
        self.metadata_loaded = False
        self.events_caught_up = False
        self.ready_after: float | None = None
        """Seconds from the start of `wait` to ready."""

    @property
    def ready(self) -> bool:
        return self.metadata_loaded and self.events_caught_up

    async def _check(self) -> str | None:
        """One round of checks; what is still missing (None: ready)."""
        if not self.metadata_loaded:
            try:
                await asyncio.to_thread(self._store.schema_version)
            except FabricError as error:
                return f"the metadata store does not answer ({error.code})"
            self.metadata_loaded = True
        try:
            outstanding = await self._events.outstanding(self._durable_name)
        except FabricError as error:
            return f"the event consumer cannot be read ({error.code})"
        if outstanding:
            return f"{outstanding} platform events still to apply"
        self.events_caught_up = True
        return None

    async def wait(self) -> None:
        """Return once ready (checks every `poll_interval`; no bound: an orchestrator
        decides how long a replica may take to become ready)."""
        started = time.monotonic()
        warned = False
        while (missing := await self._check()) is not None:
            if not warned and time.monotonic() - started > SLOW_START:
                log.warning("runtime replica not ready yet: %s", missing)
                warned = True
            await asyncio.sleep(self._poll)
        self.ready_after = time.monotonic() - started

    def snapshot(self) -> Mapping[str, float]:
        return {
            "bus_replica_metadata_loaded": float(self.metadata_loaded),
            "bus_replica_events_caught_up": float(self.events_caught_up),
            "bus_replica_ready": float(self.ready),
        }
