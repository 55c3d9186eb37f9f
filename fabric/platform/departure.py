"""Departure: what the runtime drops when a connection changes, goes away, or goes stale.

The platform tells the runtime through one seam, `ChangeListener`: `connection_changed`
after a connection's settings, secrets or catalog changed (update, refresh) and
`connection_deleted` after it was deleted. In one process the listener is
`EnginePurger`, which calls `QueryEngine.purge_connection` at once: compiled statements,
cached results and connectors of the connection are dropped, and the running queries
(open statements, Execute streams) the change revokes are stopped. Across
replicas the same calls become bus events (`fabric.messaging.platform_events`); the seam
stays this one.

`StaleMetadataSweeper` is the backstop for what no event reached: in-memory metadata of a
connection whose environment is gone (the connection, or its settings for the stage, no
longer exist) and that could not be confirmed as current since, is dropped after
`max_age` seconds (default 4 hours). Every purge is counted by reason in the gateway's
metrics (`fabric_purges{reason=...}`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Protocol, runtime_checkable

from fabric.catalog.metadata.store import MetadataStore
from fabric.clock import SYSTEM_CLOCK, Clock
from fabric.errors import NotFound
from fabric.query.engine import QueryEngine

log = logging.getLogger(__name__)

DEFAULT_STALE_AFTER: Final = 4 * 3600.0
"""Seconds after which unconfirmed metadata of a gone environment is dropped."""

CONNECTION_CHANGED: Final = "connection_changed"
CONNECTION_DELETED: Final = "connection_deleted"
METADATA_STALE: Final = "metadata_stale"
PURGE_REASONS: Final = (CONNECTION_CHANGED, CONNECTION_DELETED, METADATA_STALE)


@runtime_checkable
class ChangeListener(Protocol):
    """Told by the platform, after the change is committed, what to drop. Calls must be
    idempotent (a bus may deliver twice) and must not raise for an unknown connection."""

    def connection_changed(self, tenant: str, connection: str) -> None:
        """The connection's settings, secrets or catalog changed: drop what was derived
        from the old ones."""
        ...

    def connection_deleted(self, tenant: str, connection: str) -> None:
        """The connection is gone: drop everything held for it."""
        ...


class ChangeListeners:
    """Several listeners as one. A failing listener is logged (its error type only) and
    does not keep the others from running: a departure must reach every runtime."""

    def __init__(self, listeners: Iterable[ChangeListener] = ()) -> None:
        self._listeners = list(listeners)
        self._lock = threading.Lock()

    def add(self, listener: ChangeListener) -> None:
        """Tell `listener` about every later change too (the bus publisher plugs in here)."""
        with self._lock:
            self._listeners.append(listener)

    def _each(self, call: Callable[[ChangeListener], None], what: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                call(listener)
            except Exception as error:
                log.error("a change listener failed on %s: %s", what, type(error).__name__)

    def connection_changed(self, tenant: str, connection: str) -> None:
        self._each(
            lambda listener: listener.connection_changed(tenant, connection), CONNECTION_CHANGED
        )

    def connection_deleted(self, tenant: str, connection: str) -> None:
        self._each(
            lambda listener: listener.connection_deleted(tenant, connection), CONNECTION_DELETED
        )


class EnginePurger:
    """The in-process runtime listener: purges a QueryEngine and counts each purge.

    Counts (`snapshot`) are merged into the engine's metrics by whoever wires it (the
    Gateway): one purger per engine.
    """

    def __init__(self, engine: QueryEngine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {
            **{reason: 0 for reason in PURGE_REASONS},
            "result_purged": 0,
            "source_purged": 0,
        }

    def connection_changed(self, tenant: str, connection: str) -> None:
        self.purge(tenant, connection, CONNECTION_CHANGED)

    def connection_deleted(self, tenant: str, connection: str) -> None:
        self.purge(tenant, connection, CONNECTION_DELETED)

    def purge(self, tenant: str, connection: str, reason: str) -> dict[str, int]:
        """Drop everything the engine holds for the connection; returns what was dropped
        (compiled, results, statements, sources)."""
        dropped = self._engine.purge_connection(tenant, connection)
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            self._counts["result_purged"] += dropped.get("results", 0)
            self._counts["source_purged"] += dropped.get("sources", 0)
        log.info("purged connection %r of tenant %r (%s): %s", connection, tenant, reason, dropped)
        return dropped

    def snapshot(self) -> Mapping[str, float]:
        """Purge counts as metric figures (`purge_<reason>`)."""
        with self._lock:
            return {f"purge_{reason}": float(count) for reason, count in self._counts.items()}


Probe = Callable[[str, str, str], bool]
"""(tenant, connection, stage) -> whether the stage's environment still exists. Raises
when it cannot tell (the metadata store is unreachable)."""


def store_probe(store: MetadataStore) -> Probe:
    """A probe reading the metadata store: the connection exists and has settings for the
    stage (its own or the all-stages ones)."""

    def probe(tenant: str, connection: str, stage: str) -> bool:
        try:
            record = store.get_connection(tenant, connection)
        except NotFound:
            return False
        return record.settings_for(stage) is not None

    return probe


class StaleMetadataSweeper:
    """Drops in-memory metadata that has not been confirmed as current for `max_age`.

    Each sweep probes every (tenant, connection, stage) the engine holds. Confirmed
    entries are stamped with the time; an entry whose environment is gone, or that cannot
    be confirmed (the probe raises), keeps its last stamp (or the time it was first seen)
    and, once that is `max_age` old, its connection is purged through the purger (reason
    `metadata_stale`). Time comes from `clock`, so tests move it instead of waiting.
    """

    def __init__(
        self,
        engine: QueryEngine,
        purger: EnginePurger,
        *,
        max_age: float = DEFAULT_STALE_AFTER,
        clock: Clock = SYSTEM_CLOCK,
        probe: Probe | None = None,
    ) -> None:
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self._engine = engine
        self._purger = purger
        self._max_age = max_age
        self._clock = clock
        self._probe = probe or store_probe(engine.store)
        self._confirmed: dict[tuple[str, str, str], float] = {}

    @property
    def max_age(self) -> float:
        return self._max_age

    def sweep(self) -> int:
        """One pass; returns how many connections were purged as stale."""
        now = self._clock.monotonic()
        held = set(self._engine.sources.held())
        for key in list(self._confirmed):
            if key not in held:
                del self._confirmed[key]  # purged or rebuilt meanwhile: nothing to track
        stale: set[tuple[str, str]] = set()
        for key in sorted(held):
            tenant, connection, stage = key
            try:
                current = self._probe(tenant, connection, stage)
            except Exception as error:  # cannot tell: not confirmed, not yet gone
                log.warning(
                    "cannot confirm metadata of connection %r: %s", connection, type(error).__name__
                )
                current = False
            if current:
                self._confirmed[key] = now
                continue
            since = self._confirmed.setdefault(key, now)
            if now - since >= self._max_age:
                stale.add((tenant, connection))
        for tenant, connection in sorted(stale):
            self._purger.purge(tenant, connection, METADATA_STALE)
            for key in [k for k in self._confirmed if k[:2] == (tenant, connection)]:
                del self._confirmed[key]
        return len(stale)

    async def run(self, interval: float) -> None:
        """Sweep every `interval` seconds until cancelled (probes run off the loop)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                await loop.run_in_executor(None, self.sweep)
            except Exception as error:
                log.error("the stale-metadata sweep failed: %s", type(error).__name__)
