"""Revocation: running work stops when the access it was compiled under narrows.

A query checked against the selection at one catalog version may go on streaming (an
Execute stream, an open statement paged over minutes) after an administrator narrowed
access: unselected a table or a column, replaced a selection with a narrower one,
refreshed away a column, changed or deleted the connection, removed the stage's
configuration. Each running query holds a `Ticket` for what it was allowed when it was
compiled (`Grant`: the columns it reads per entity, the physical table of each entity in
its stage, the identity of its source). Before each batch or page goes out:

- `Ticket.raise_if_revoked` reads a flag (no I/O; safe on the event loop);
- `RunningQueries.check` (blocking; a worker thread's call) compares the connection's
  catalog version with the one the ticket last confirmed. Equal: nothing to do (a read
  from memory, or one local read for SQLite). Different: the grant is evaluated against
  the selection and the connection as they are now; still allowed, the new version is
  confirmed (so a change to an unrelated table never stops it); not allowed, the ticket
  is revoked.

Platform events reach running work at once: `RunningQueries.revalidate` (the engine's
purge, in-process or from a bus event on a replica) evaluates every ticket of the
connection and revokes those no longer allowed; the checks above find the flag. A change
made with no event (the CLI writing the metadata store directly) is found by the version
comparison. A revoked query ends with `SelectionChanged` (FAILED_PRECONDITION) and sends
nothing more.

A connector some running query still reads from is not closed under it when its
connection is purged (`defer_close`): it is closed as the last of its queries ends.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Executor
from dataclasses import dataclass

from connectors import Connector
from fabric.catalog.metadata.store import MetadataStore
from fabric.errors import NotFound, SelectionChanged
from fabric.model import CatalogSnapshot
from fabric.query.compiler import CompiledStatement
from fabric.query.sources import BoundSource, SourceIdentity

__all__ = ["Grant", "RunningQueries", "Ticket"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EntityRead:
    """One entity a statement reads: the physical table it was compiled to in its stage,
    and the columns it reads there (empty for rows alone, as COUNT(*))."""

    entity: str
    table: tuple[str, str]
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Grant:
    """What a running query was allowed when it was compiled."""

    tenant: str
    connection: str
    stage: str
    identity: SourceIdentity
    reads: tuple[EntityRead, ...]

    @classmethod
    def of(cls, tenant: str, bound: BoundSource, compiled: CompiledStatement) -> Grant:
        reads = []
        for name, columns in compiled.reads:
            entity = bound.catalog.entity(name)
            table = (entity.schema, entity.table) if entity is not None else ("", "")
            reads.append(EntityRead(name, table, columns))
        return cls(tenant, bound.connection.name, bound.stage, bound.identity, tuple(reads))


class Ticket:
    """One running query's standing: confirmed at `version`, or revoked (`revoked` holds
    the error it ends with). Fields change under the registry's lock."""

    __slots__ = ("connector", "grant", "kind", "revoked", "version")

    def __init__(self, grant: Grant, version: int, connector: Connector | None, kind: str) -> None:
        self.grant = grant
        self.version = version
        self.connector = connector
        self.kind = kind
        self.revoked: SelectionChanged | None = None

    def raise_if_revoked(self) -> None:
        """SelectionChanged when the query was revoked; no I/O."""
        revoked = self.revoked
        if revoked is not None:
            raise revoked

    def __repr__(self) -> str:
        return (
            f"Ticket(tenant={self.grant.tenant!r}, connection={self.grant.connection!r}, "
            f"stage={self.grant.stage!r}, version={self.version}, "
            f"revoked={self.revoked is not None})"
        )


STREAM = "stream"
STATEMENT = "statement"


def revocation(reason: str) -> SelectionChanged:
    return SelectionChanged(
        f"the selection changed: {reason}; the query was stopped and nothing more of its "
        "result is sent. Run it again to see what is allowed now"
    )


def evaluate(grant: Grant, store: MetadataStore) -> str | None:
    """Why `grant` is no longer allowed by the store as it is now, or None when it still
    is. Blocking (metadata store reads)."""
    try:
        connection = store.get_connection(grant.tenant, grant.connection)
        catalog = store.catalog(grant.tenant, grant.connection)
    except NotFound:
        return f"connection '{grant.connection}' was deleted"
    identity = SourceIdentity.of(connection, grant.stage)
    if identity is None:
        return (
            f"connection '{grant.connection}' has no configuration for stage "
            f"'{grant.stage}' any more"
        )
    if identity != grant.identity:
        return (
            f"the configuration of connection '{grant.connection}' for stage "
            f"'{grant.stage}' changed"
        )
    view = catalog.for_stage(grant.stage, connection.configuration_of(grant.stage))
    return _lost_read(grant, view)


def _evaluate_or_refuse(grant: Grant, store: MetadataStore) -> str | None:
    """`evaluate`, failing closed: a selection that cannot be confirmed (the metadata store
    does not answer) does not let the query go on."""
    try:
        return evaluate(grant, store)
    except Exception as error:
        log.warning("could not confirm a running query's selection: %s", type(error).__name__)
        return "it could not be confirmed (the metadata store did not answer)"


def _lost_read(grant: Grant, view: CatalogSnapshot) -> str | None:
    for read in grant.reads:
        entity = view.entity(read.entity)
        if entity is None:
            return f"entity '{read.entity}' is no longer selected"
        if (entity.schema, entity.table) != read.table or entity.absent:
            return f"entity '{read.entity}' no longer stands for the table the query read"
        for column in read.columns:
            if entity.column(column) is not None:
                continue
            if column in entity.missing:
                return (
                    f"column '{read.entity}.{column}' is no longer in the table of stage "
                    f"'{grant.stage}'"
                )
            return f"column '{read.entity}.{column}' is no longer selected"
    return None


class RunningQueries:
    """The tickets of the queries running on one engine; thread-safe."""

    def __init__(self, store: MetadataStore, *, closer: Executor | None = None) -> None:
        self._store = store
        self._closer = closer
        self._lock = threading.Lock()
        self._tickets: set[Ticket] = set()
        self._retired: dict[int, Connector] = {}
        self._revoked = {STREAM: 0, STATEMENT: 0}

    def admit(self, grant: Grant, version: int, connector: Connector | None, kind: str) -> Ticket:
        """A ticket for a query compiled at catalog `version`, running on `connector`."""
        ticket = Ticket(grant, version, connector, kind)
        with self._lock:
            self._tickets.add(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The query ended (idempotent); a retired connector it was the last user of is
        closed now."""
        with self._lock:
            self._tickets.discard(ticket)
            connector = ticket.connector
            if connector is None or id(connector) not in self._retired:
                return
            if any(t.connector is connector for t in self._tickets):
                return
            del self._retired[id(connector)]
        self._close(connector)

    def check(self, ticket: Ticket) -> None:
        """SelectionChanged when the ticket was revoked, or is now (see the module
        docstring); blocking when the catalog version moved."""
        ticket.raise_if_revoked()
        grant = ticket.grant
        try:
            version = self._store.catalog_version(grant.tenant, grant.connection)
        except NotFound:
            version = -1
        if version == ticket.version:
            return
        reason = _evaluate_or_refuse(grant, self._store)
        with self._lock:
            if ticket.revoked is None:
                if reason is None:
                    ticket.version = max(ticket.version, version)
                else:
                    self._revoke(ticket, reason)
        ticket.raise_if_revoked()

    def revalidate(self, tenant: str, connection: str) -> list[Ticket]:
        """Evaluate every running query of the connection now; returns those revoked by
        this call. Blocking (metadata store reads)."""
        with self._lock:
            tickets = [
                t
                for t in self._tickets
                if t.revoked is None
                and t.grant.tenant == tenant
                and t.grant.connection == connection
            ]
        if not tickets:
            return []
        revoked = []
        reasons: dict[tuple[str, SourceIdentity, tuple[EntityRead, ...]], str | None] = {}
        for ticket in tickets:
            key = (ticket.grant.stage, ticket.grant.identity, ticket.grant.reads)
            if key not in reasons:
                reasons[key] = _evaluate_or_refuse(ticket.grant, self._store)
            reason = reasons[key]
            if reason is None:
                continue
            with self._lock:
                if ticket.revoked is None:
                    self._revoke(ticket, reason)
                    revoked.append(ticket)
        return revoked

    def defer_close(self, connector: Connector) -> bool:
        """True when running queries still read from `connector`: it is then closed when
        the last of them ends (`release`), not now."""
        with self._lock:
            if not any(t.connector is connector for t in self._tickets):
                return False
            self._retired[id(connector)] = connector
            return True

    def _revoke(self, ticket: Ticket, reason: str) -> None:
        """Mark `ticket` revoked and count it (lock held)."""
        ticket.revoked = revocation(reason)
        self._revoked[ticket.kind] = self._revoked.get(ticket.kind, 0) + 1
        log.info(
            "a running %s on connection %r (tenant %r, stage %r) was stopped: %s",
            ticket.kind,
            ticket.grant.connection,
            ticket.grant.tenant,
            ticket.grant.stage,
            reason,
        )

    def _close(self, connector: Connector) -> None:
        def close() -> None:
            try:
                connector.close()
            except Exception as error:  # a failing close must not break the query's end
                log.warning("closing a retired connector failed: %s", type(error).__name__)

        if self._closer is not None:
            self._closer.submit(close)
        else:
            close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._tickets)

    def snapshot(self) -> dict[str, float]:
        """Revocations as purge figures (`purge_<kind>_revoked`)."""
        with self._lock:
            return {f"purge_{kind}_revoked": float(n) for kind, n in self._revoked.items()}

    def close_all(self) -> None:
        """Shutdown: close every retired connector, forget every ticket."""
        with self._lock:
            retired = list(self._retired.values())
            self._retired.clear()
            self._tickets.clear()
        for connector in retired:
            self._close(connector)
