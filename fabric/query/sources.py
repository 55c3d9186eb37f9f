"""Sources: the connector and catalog snapshot a request's connection resolves to.

The runtime keeps, per (tenant, connection, stage), the connection's settings, the
selected entities at the current catalog version and a connector (with its pool). A
cheap catalog-version read on every request notices changes made by another process
(the CLI filling the store while the gateway runs); then only what changed is rebuilt.
That read happens on the event loop only when it needs no round trip (`current`);
everything else (store reads, the secret store, building a connector) runs in a worker
thread (`resolve`), so a slow metadata database or secret store never stalls other calls.

The catalog a request gets is the stage's view (`CatalogSnapshot.for_stage`): entity
names stay what apps write, schema and table are that stage's physical names, so the
compiler emits the right table for the stage without knowing stages exist.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from connectors import Connector, ConnectorConfig, connector_class
from fabric.catalog.metadata.store import MetadataStore
from fabric.errors import FailedPrecondition, NotFound
from fabric.model import CatalogSnapshot, Connection, SettingValue

log = logging.getLogger(__name__)

SecretResolver = Callable[[str], str]
"""Turns a secret reference into the secret; raises a FabricError when it cannot."""

ConnectorFactory = Callable[[Connection, Mapping[str, SettingValue], str | None], Connector]


def no_secret_store(reference: str) -> str:
    raise FailedPrecondition(
        "this connection refers to a stored password but the gateway has no secret store "
        "configured; register the connection without one (use the source's own trust or "
        "password file) until a secret store is set up"
    )


def default_connector_factory(
    connection: Connection, settings: Mapping[str, SettingValue], password: str | None
) -> Connector:
    return connector_class(connection.kind)(ConnectorConfig(settings, password))


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """What a stage's connector is built from: a connector is reused while this stays
    equal, and a query keeps running only while it does (`fabric.query.revocation`)."""

    kind: str
    settings: tuple[tuple[str, SettingValue], ...]
    secret_ref: str | None

    @classmethod
    def of(cls, connection: Connection, stage: str) -> SourceIdentity | None:
        """The identity of `stage`'s source, or None when the stage has no configuration."""
        settings = connection.settings_for(stage)
        if settings is None:
            return None
        return cls(
            connection.kind, tuple(sorted(settings.items())), connection.secret_ref_for(stage)
        )


@dataclass(frozen=True, slots=True)
class BoundSource:
    connection: Connection
    catalog: CatalogSnapshot
    connector: Connector
    stage: str
    identity: SourceIdentity


DeferClose = Callable[[Connector], bool]
"""Asked before a connector is closed: True when queries still run on it and it will be
closed once they end (`RunningQueries.defer_close`)."""


class SourceRegistry:
    def __init__(
        self,
        store: MetadataStore,
        *,
        secrets: SecretResolver = no_secret_store,
        connector_factory: ConnectorFactory = default_connector_factory,
        closer: Callable[[Callable[[], object]], object] | None = None,
        defer_close: DeferClose | None = None,
    ) -> None:
        """`closer` runs the close of a connector that is no longer wanted (a pool
        close can wait for queries still running on it: never on the caller); None:
        closed at once."""
        self._store = store
        self._defer_close = defer_close
        self._secrets = secrets
        self._factory = connector_factory
        self._closer = closer
        self._lock = threading.Lock()
        self._bound: dict[tuple[str, str, str], tuple[BoundSource, SourceIdentity]] = {}
        # One rebuild at a time per (tenant, connection, stage): calls that find the same
        # change wait for the first one's result instead of each building a connector
        # (and closing the one another call is using).
        self._rebuilding: dict[tuple[str, str, str], threading.Lock] = {}

    def current(self, tenant: str, connection: str, stage: str) -> BoundSource | None:
        """The source held for this stage when it is still current and that is known
        without any I/O beyond a local read; None when `resolve` must run (a first use, a
        change, or a store that would need a round trip). Safe on the event loop."""
        version = self._store.known_catalog_version(tenant, connection)
        if version is None:
            return None
        with self._lock:
            current = self._bound.get((tenant, connection, stage))
        if current is not None and current[0].catalog.version == version:
            return current[0]
        return None

    def resolve(self, tenant: str, connection: str, stage: str) -> BoundSource:
        """The current source, rebuilt from the store (and the secret store, and a new
        connector) when the catalog changed. May block on I/O: a worker thread's call."""
        version = self._store.catalog_version(tenant, connection)
        key = (tenant, connection, stage)
        with self._lock:
            current = self._bound.get(key)
            rebuilding = self._rebuilding.setdefault(key, threading.Lock())
        if current is not None and current[0].catalog.version == version:
            return current[0]
        with rebuilding:
            with self._lock:
                current = self._bound.get(key)
            if current is not None and current[0].catalog.version >= version:
                return current[0]  # another call rebuilt it meanwhile
            return self._rebuild(key, current)

    def _rebuild(
        self,
        key: tuple[str, str, str],
        current: tuple[BoundSource, SourceIdentity] | None,
    ) -> BoundSource:
        tenant, name, stage = key
        connection = self._store.get_connection(tenant, name)
        catalog = self._store.catalog(tenant, name).for_stage(
            stage, connection.configuration_of(stage)
        )
        settings = connection.settings_for(stage)
        identity = SourceIdentity.of(connection, stage)
        if settings is None or identity is None:
            raise NotFound(
                f"connection {name!r} has no configuration for stage {stage!r}; "
                "an administrator must add one"
            )
        if current is not None and current[1] == identity:
            connector = current[0].connector
        else:
            secret_ref = identity.secret_ref
            password = self._secrets(secret_ref) if secret_ref else None
            connector = self._factory(connection, settings, password)
        bound = BoundSource(connection, catalog, connector, stage, identity)
        with self._lock:
            previous = self._bound.get(key)
            self._bound[key] = (bound, identity)
        if previous is not None and previous[0].connector is not connector:
            self._close(previous[0].connector)
        return bound

    def pool_figures(self) -> list[tuple[str, str, str, int, int, int]]:
        """(tenant, connection, stage, in use, idle, waiting) of every pooled source held
        now (metrics; connections that a query resolved only)."""
        with self._lock:
            bound = [(key, b.connector) for key, (b, _) in self._bound.items()]
        figures = []
        for (tenant, connection, stage), connector in bound:
            stats = connector.pool_stats()
            if stats is not None:
                figures.append((tenant, connection, stage, stats.in_use, stats.idle, stats.waiting))
        return figures

    def held(self) -> list[tuple[str, str, str]]:
        """The (tenant, connection, stage) whose metadata and connector are held now."""
        with self._lock:
            return sorted(self._bound)

    def purge(self, tenant: str, connection: str) -> int:
        """Forget every stage of a connection and close its connectors; returns how many."""
        with self._lock:
            keys = [k for k in self._bound if k[0] == tenant and k[1] == connection]
            dropped = [self._bound.pop(k)[0] for k in keys]
            for key in [k for k in self._rebuilding if k[0] == tenant and k[1] == connection]:
                del self._rebuilding[key]
        for bound in dropped:
            self._close(bound.connector)
        return len(dropped)

    def close(self) -> None:
        with self._lock:
            dropped = [b for b, _ in self._bound.values()]
            self._bound.clear()
        for bound in dropped:
            bound.connector.close()

    def _close(self, connector: Connector) -> None:
        # A connector that queries still read from (ones a change left allowed) is closed
        # when the last of them ends, not under them.
        if self._defer_close is not None and self._defer_close(connector):
            return
        # Closing a pool can wait for queries still running on it: never on the caller.
        if self._closer is not None:
            self._closer(functools.partial(_close_quietly, connector))
        else:
            _close_quietly(connector)


def _close_quietly(connector: Connector) -> None:
    try:
        connector.close()
    except Exception:  # a failing close must not stop the purge
        log.warning("closing a %s connector failed", connector.kind, exc_info=False)
