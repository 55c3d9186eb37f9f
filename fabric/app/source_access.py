"""Which process opens connections to a stage's sources for the platform's own work
(testing a stored connection, discovery, selection, refresh).

    --role all        the process itself (it runs the stage's queries too).
    --role platform   the stage's runtime replicas, over the bus (`fabric.messaging.
                      source_rpc`): they resolve the password themselves, as for queries.
                      When no replica of the stage is serving (no responder), the
                      platform does the work itself if FABRIC_PLATFORM_SOURCE_ACCESS
                      allows it (the default);
                      with it off the call fails with UNAVAILABLE and the platform never
                      opens a source connection, so it needs no route to the databases.
                      Testing a new connection's settings before storing them (`verify`)
                      needs the password the administrator just gave, which never goes
                      on the bus: it runs on the platform, and is refused with it off.
    --role runtime    serves the requests above for its stage
                      (`source_replica_inspectors` opens its connectors).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors import Connector, ConnectorConfig, QueryHandle, connector_class
from fabric.app.parts import stage_connector_factory
from fabric.catalog.manager import ConnectorFactory as InspectorFactory
from fabric.catalog.manager import SourceInspector
from fabric.catalog.metadata.store import MetadataStore
from fabric.errors import FailedPrecondition, NoResponders, SourceUnavailable
from fabric.messaging.source_rpc import OpenInspector, SourceClient
from fabric.model import Connection, SettingValue, TableInfo
from fabric.query.sources import ConnectorFactory, SecretResolver, default_connector_factory

ACCESS_SETTING = "FABRIC_PLATFORM_SOURCE_ACCESS"


@dataclass(frozen=True, slots=True)
class PlatformConnectors:
    """How a platform reaches sources: `inspectors` for stored connections (the catalog
    manager's factory), `builder` for a draft's settings and password (`verify`)."""

    inspectors: InspectorFactory
    builder: ConnectorFactory


def platform_connectors(
    client: SourceClient, secrets: SecretResolver, *, source_access: bool
) -> PlatformConnectors:
    """The connectors of a `--role platform` process: the stage's replicas first, the
    platform itself when none answers and `source_access` allows it."""
    local = stage_connector_factory(secrets) if source_access else None

    def inspector(connection: Connection, stage: str) -> SourceInspector:
        return _ReplicaFirst(client, connection, stage, local)

    return PlatformConnectors(
        inspector, default_connector_factory if source_access else _refuse_draft_test
    )


def source_replica_inspectors(store: MetadataStore, secrets: SecretResolver) -> OpenInspector:
    """What a runtime replica opens to serve a source request: the connection's
    connector in its stage, built as for its queries (password from its secret store)."""
    build = stage_connector_factory(secrets)

    def open_inspector(tenant: str, connection: str, stage: str) -> SourceInspector:
        return build(store.get_connection(tenant, connection), stage)

    return open_inspector


class _ReplicaFirst:
    """A `SourceInspector` whose work a replica of the stage does, or, when no replica
    answers, `local` (None: refused)."""

    def __init__(
        self,
        client: SourceClient,
        connection: Connection,
        stage: str,
        local: Callable[[Connection, str], Connector] | None,
    ) -> None:
        self._remote = client.inspector(connection.tenant, connection.name, stage)
        self._connection = connection
        self._stage = stage
        self._local = local
        self._opened: Connector | None = None

    def _fallback(self) -> SourceInspector:
        if self._local is None:
            raise SourceUnavailable(
                f"no runtime replica of stage {self._stage!r} is serving to reach the source, "
                f"and this platform does not reach sources itself ({ACCESS_SETTING}=false); "
                "start a replica of that stage and retry"
            )
        if self._opened is None:
            self._opened = self._local(self._connection, self._stage)
        return self._opened

    def test(self) -> None:
        try:
            self._remote.test()
        except NoResponders:
            self._fallback().test()

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        try:
            return self._remote.introspect(schemas)
        except NoResponders:
            return self._fallback().introspect(schemas)

    def close(self) -> None:
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()


def refuse_engine_connections(
    connection: Connection, settings: Mapping[str, SettingValue], password: str | None
) -> Connector:
    """The engine's connector factory on a platform that does not reach sources: its
    connectors carry their kind's dialect (so a query still compiles, and a preview is
    still built and forwarded) but refuse to run anything. What runs on the platform's
    own engine (paging: OpenStatement) is refused, never opened."""
    return _NoSourceAccess(connection, connector_class(connection.kind), settings)


class _NoSourceAccess(Connector):
    """A connector of `kind_class`'s kind that opens nothing and refuses every call."""

    def __init__(
        self,
        connection: Connection,
        kind_class: type[Connector],
        settings: Mapping[str, SettingValue],
    ) -> None:
        super().__init__(ConnectorConfig(settings, None))
        self.kind = kind_class.kind  # type: ignore[misc]
        self.dialect = kind_class.dialect  # type: ignore[misc]
        self.param_style = kind_class.param_style  # type: ignore[misc]
        self._connection = connection.name

    def _refusal(self) -> FailedPrecondition:
        return FailedPrecondition(
            f"this platform does not reach sources itself ({ACCESS_SETTING}=false), so it "
            f"cannot run this on connection {self._connection!r}: Execute and Preview go to "
            "a runtime replica of the stage; page through results (OpenStatement) on a "
            "replica of the stage"
        )

    def test(self) -> None:
        raise self._refusal()

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        raise self._refusal()

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        raise self._refusal()

    async def execute_small(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        max_rows: int,
    ) -> QueryHandle | None:
        raise self._refusal()

    def close(self) -> None:
        """Nothing was opened."""


def _refuse_draft_test(
    connection: Connection, settings: Mapping[str, SettingValue], password: str | None
) -> Connector:
    raise FailedPrecondition(
        f"this platform does not reach sources itself ({ACCESS_SETTING}=false), so it "
        f"cannot test connection {connection.name!r} before storing it: create or update "
        "it without verify, then test it (the stage's runtime replicas do)"
    )
