"""Catalog versions of the PostgreSQL metadata store, kept in memory while PostgreSQL
says when they change.

The query path asks for a connection's catalog version on every query. Reading it from
the metadata database each time costs a network round trip on the gateway's event loop
(and stalls every call while that database is slow). Instead, one connection per store
LISTENs on a channel that a trigger on the versions table notifies (in the same
transaction as the change, so at its commit, whichever process made it); every
notification, and every write of this process, drops what is held. While the listening
connection is down, nothing is held and every read goes to the database, as before.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from typing import Final

import psycopg

log = logging.getLogger(__name__)

CHANNEL: Final = "fabric_catalog"
"""The channel the versions trigger notifies; the payload is the store's schema."""

_RETRY_SECONDS: Final = 1.0


class CatalogVersionWatch:
    """Versions keyed by (tenant, connection), valid only while LISTENing.

    Reads are raced against changes with a generation counter: a version read from the
    database is kept only if nothing changed (no notification, no local write, no lost
    listener) between the start of the read and keeping it.
    """

    def __init__(self, url: str, schema: str, *, retry_seconds: float = _RETRY_SECONDS) -> None:
        self._url = url
        self._schema = schema
        self._retry = retry_seconds
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], int] = {}
        self._generation = 0
        self._listening = False
        self._closed = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._listener_pid: int | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"fabric-catalog-watch-{schema}", daemon=True
        )
        self._thread.start()

    # -- the query path --------------------------------------------------------------------

    def get(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            return self._versions.get(key) if self._listening else None

    def generation(self) -> int | None:
        """Take before reading from the database; None when nothing may be kept now."""
        with self._lock:
            return self._generation if self._listening else None

    def keep(self, key: tuple[str, str], version: int, generation: int | None) -> None:
        with self._lock:
            if generation is not None and self._listening and generation == self._generation:
                self._versions[key] = version

    def invalidate(self, *, listening: bool | None = None) -> None:
        """Forget every version (after a write of this process, or a notification); with
        `listening`, the listener has started (True) or stopped (False)."""
        with self._lock:
            self._generation += 1
            self._versions.clear()
            if listening is not None:
                self._listening = listening

    # -- state, for operators and tests ----------------------------------------------------

    @property
    def listening(self) -> bool:
        with self._lock:
            return self._listening

    @property
    def listener_pid(self) -> int | None:
        """The backend process id of the listening connection, if any."""
        return self._listener_pid

    def held(self) -> int:
        with self._lock:
            return len(self._versions)

    # -- the listener ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._listen_once()
            except Exception as exc:  # the database went away: read through until back
                if not self._closed.is_set():
                    log.warning(
                        "catalog version watch on schema %s lost its connection (%s); "
                        "reading versions from the database until it is back",
                        self._schema,
                        type(exc).__name__,
                    )
            finally:
                self._listener_pid = None
                self.invalidate(listening=False)
            if self._wait_for_wake(self._retry):
                break

    def _listen_once(self) -> None:
        with psycopg.connect(
            self._url, autocommit=True, connect_timeout=10, application_name="fabric-catalog-watch"
        ) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self._listener_pid = conn.info.backend_pid
            # Anything committed before LISTEN took effect was never notified: start empty.
            self.invalidate(listening=True)
            pgconn = conn.pgconn
            # poll, not select: a busy gateway may hold descriptors above select's limit
            poller = select.poll()
            poller.register(pgconn.socket, select.POLLIN)
            poller.register(self._wake_read, select.POLLIN)
            while not self._closed.is_set():
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_read in ready:
                    return
                pgconn.consume_input()  # raises once the connection is gone
                if pgconn.status != psycopg.pq.ConnStatus.OK:
                    raise psycopg.OperationalError("the listening connection was closed")
                changed = False
                while (note := pgconn.notifies()) is not None:
                    changed = changed or note.extra.decode(errors="replace") == self._schema
                if changed:
                    self.invalidate()

    def _wait_for_wake(self, seconds: float) -> bool:
        """Wait before reconnecting; True when closed meanwhile."""
        poller = select.poll()
        poller.register(self._wake_read, select.POLLIN)
        return bool(poller.poll(seconds * 1000)) or self._closed.is_set()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        os.write(self._wake_write, b"x")
        self._thread.join(timeout=15)
        os.close(self._wake_read)
        os.close(self._wake_write)
