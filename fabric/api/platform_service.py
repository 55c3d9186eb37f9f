"""ConnectionService and CatalogService: the gRPC face of the platform plane.

Thin adapters: each call takes the caller from the context provider (tenant, stage,
principal as the audit actor), converts the request, runs the blocking work (metadata
store, secret store, sources) off the event loop, and converts the answer. Errors map
to statuses through `translated_errors`, as for QueryService. Nothing here returns,
logs or echoes a password: responses say only `has_password`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc

from fabric.api import platform_calls as calls
from fabric.api.query_service import ContextProvider, unary_rpc
from fabric.catalog.audit import AuditEvent
from fabric.catalog.manager import TableChoice
from fabric.context import RequestContext
from fabric.errors import InvalidArgument
from fabric.model import (
    ColumnInfo,
    Connection,
    Entity,
    ForeignKey,
    SettingValue,
    TableInfo,
)
from fabric.platform.connections import StageInput
from fabric.platform.plane import Platform
from fabric.platform.refresh import RefreshReport
from fabric.v1 import platform_pb2 as pb
from fabric.v1 import platform_pb2_grpc as pb_grpc

# -- conversions -------------------------------------------------------------------------


def _setting(key: str, value: pb.SettingValue) -> SettingValue:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument(f"setting {key!r} has no value")
    result: SettingValue = getattr(value, kind)
    return result


def _setting_proto(value: SettingValue) -> pb.SettingValue:
    if isinstance(value, bool):
        return pb.SettingValue(bool_value=value)
    if isinstance(value, int):
        return pb.SettingValue(int_value=value)
    if isinstance(value, float):
        return pb.SettingValue(double_value=value)
    return pb.SettingValue(string_value=str(value))


def _stage_inputs(stages: Iterable[pb.StageConfig]) -> dict[str, StageInput]:
    result: dict[str, StageInput] = {}
    for config in stages:
        if not config.stage:
            raise InvalidArgument("every stage configuration needs a stage name ('*': all)")
        if config.stage in result:
            raise InvalidArgument(f"stage {config.stage!r} is configured twice")
        settings = {key: _setting(key, value) for key, value in config.settings.items()}
        password = config.password if config.HasField("password") else None
        result[config.stage] = StageInput(settings, password)
    return result


def connection_proto(connection: Connection, catalog_version: int) -> pb.Connection:
    """A connection as the API shows it: settings and `has_password`, never a secret."""
    return pb.Connection(
        name=connection.name,
        kind=connection.kind,
        stages=[
            pb.StageConfig(
                stage=stage,
                settings={k: _setting_proto(v) for k, v in settings.items()},
                has_password=stage in connection.secret_refs,
            )
            for stage, settings in sorted(connection.stages.items())
        ],
        version=connection.version,
        catalog_version=catalog_version,
    )


def _column(column: ColumnInfo) -> pb.Column:
    return pb.Column(
        name=column.name,
        source_type=column.source_type,
        arrow_type="" if column.arrow_type is None else str(column.arrow_type),
        nullable=column.nullable,
        supported=column.supported,
    )


def _foreign_key(fk: ForeignKey) -> pb.ForeignKey:
    return pb.ForeignKey(
        name=fk.name,
        columns=list(fk.columns),
        referenced_schema=fk.referenced_schema,
        referenced_table=fk.referenced_table,
        referenced_columns=list(fk.referenced_columns),
    )


def table_proto(table: TableInfo) -> pb.Table:
    return pb.Table(
        schema=table.schema,
        name=table.name,
        kind=table.kind.value,
        columns=[_column(c) for c in table.columns],
        primary_key=list(table.primary_key),
        foreign_keys=[_foreign_key(fk) for fk in table.foreign_keys],
    )


def entity_proto(entity: Entity) -> pb.Entity:
    return pb.Entity(
        name=entity.name,
        schema=entity.schema,
        table=entity.table,
        columns=[_column(c) for c in entity.columns],
        primary_key=list(entity.primary_key),
        foreign_keys=[_foreign_key(fk) for fk in entity.foreign_keys],
        stage_tables=[
            pb.StageTable(stage=stage, schema=schema, table=table)
            for stage, (schema, table) in sorted(entity.stage_tables.items())
        ],
    )


def _audit_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def audit_proto(event: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(
        at=event.at.isoformat(timespec="microseconds"),
        actor=event.actor,
        action=event.action,
        connection=event.connection or "",
        stage=event.stage or "",
        details={k: _audit_value(v) for k, v in event.details.items()},
    )


def _report_proto(report: RefreshReport) -> pb.RefreshResponse:
    return pb.RefreshResponse(
        drift=[
            pb.Drift(
                kind=d.kind.value,
                entity=d.entity,
                schema=d.schema,
                table=d.table,
                column=d.column,
                old_type=d.old_type,
                new_type=d.new_type,
                detail=d.detail,
            )
            for d in report.drift
        ],
        previous_catalog_version=report.previous_version,
        catalog_version=report.catalog_version,
        entities=[entity_proto(e) for e in report.entities],
    )


_required = calls.required


# -- servicers ---------------------------------------------------------------------------


class _PlatformServicer:
    """What both platform servicers hold: the platform, and how to read the caller."""

    def __init__(self, platform: Platform, context_provider: ContextProvider) -> None:
        self._platform = platform
        self._context = context_provider


_Servicer = TypeVar("_Servicer", bound=_PlatformServicer)
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


def _blocking_rpc(
    method: Callable[[_Servicer, _Request, RequestContext], _Response],
) -> Callable[[_Servicer, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """A unary RPC (`unary_rpc`) from a blocking method of (request, caller): the caller
    is read on the event loop, the method runs off it (the metadata store, the secret
    store and the sources block)."""

    @unary_rpc
    @functools.wraps(method)
    async def rpc(
        self: _Servicer,
        request: _Request,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> _Response:
        return await asyncio.to_thread(method, self, request, ctx)

    return rpc


def _expected_version(request: Any, field: str) -> int | None:
    """An optional version field of a request: None when the caller left it unset."""
    if request.HasField(field):
        version: int = getattr(request, field)
        return version
    return None


class ConnectionServicer(_PlatformServicer, pb_grpc.ConnectionServiceServicer):  # type: ignore[misc]
    """Connections per stage, with write-only passwords; and the audit trail."""

    def _proto(self, connection: Connection) -> pb.Connection:
        version = self._platform.manager.catalog_version(connection.tenant, connection.name)
        return connection_proto(connection, version)

    @_blocking_rpc
    def CreateConnection(
        self, request: pb.CreateConnectionRequest, ctx: RequestContext
    ) -> pb.Connection:
        connection = self._platform.connections.create(
            ctx.tenant,
            _required(request.name, "name"),
            _required(request.kind, "kind"),
            _stage_inputs(request.stages),
            verify=request.verify,
            actor=ctx.principal,
        )
        return self._proto(connection)

    @_blocking_rpc
    def GetConnection(self, request: pb.GetConnectionRequest, ctx: RequestContext) -> pb.Connection:
        return self._proto(
            self._platform.connections.get(ctx.tenant, _required(request.name, "name"))
        )

    @_blocking_rpc
    def ListConnections(
        self, request: pb.ListConnectionsRequest, ctx: RequestContext
    ) -> pb.ListConnectionsResponse:
        return pb.ListConnectionsResponse(
            connections=[self._proto(c) for c in self._platform.connections.list(ctx.tenant)]
        )

    @_blocking_rpc
    def UpdateConnection(
        self, request: pb.UpdateConnectionRequest, ctx: RequestContext
    ) -> pb.Connection:
        connection = self._platform.connections.update(
            ctx.tenant,
            _required(request.name, "name"),
            stages=_stage_inputs(request.stages),
            remove_stages=list(request.remove_stages),
            clear_passwords=list(request.clear_password_stages),
            expected_version=_expected_version(request, "expected_version"),
            verify=request.verify,
            actor=ctx.principal,
        )
        return self._proto(connection)

    @_blocking_rpc
    def DeleteConnection(
        self, request: pb.DeleteConnectionRequest, ctx: RequestContext
    ) -> pb.DeleteConnectionResponse:
        report = self._platform.connections.delete(
            ctx.tenant,
            _required(request.name, "name"),
            expected_version=_expected_version(request, "expected_version"),
            actor=ctx.principal,
        )
        return pb.DeleteConnectionResponse(secrets_removed=report.secrets_removed)

    @_blocking_rpc
    def TestConnection(
        self, request: pb.TestConnectionRequest, ctx: RequestContext
    ) -> pb.TestConnectionResponse:
        result = calls.connection_test(self._platform, ctx, request.name, request.stage or None)
        return pb.TestConnectionResponse(stage=result.stage, elapsed_us=result.elapsed_us)

    @_blocking_rpc
    def ListAudit(self, request: pb.ListAuditRequest, ctx: RequestContext) -> pb.ListAuditResponse:
        events = calls.list_audit(self._platform, ctx, request.connection, request.limit)
        return pb.ListAuditResponse(events=[audit_proto(e) for e in events])


class CatalogServicer(_PlatformServicer, pb_grpc.CatalogServiceServicer):  # type: ignore[misc]
    """Discovery, selection and refresh of what apps may query."""

    @_blocking_rpc
    def Discover(self, request: pb.DiscoverRequest, ctx: RequestContext) -> pb.DiscoverResponse:
        tables = self._platform.manager.discover(
            ctx.tenant,
            _required(request.connection, "connection"),
            request.stage or ctx.stage,
            list(request.schemas) or None,
        )
        return pb.DiscoverResponse(tables=[table_proto(t) for t in tables])

    @_blocking_rpc
    def Select(self, request: pb.SelectRequest, ctx: RequestContext) -> pb.SelectResponse:
        choices = [
            TableChoice(
                t.table,
                list(t.columns) or None,
                t.entity_name or None,
                dict(t.stage_tables),
            )
            for t in request.tables
        ]
        entities, version = calls.select(
            self._platform,
            ctx,
            request.connection,
            request.stage or None,
            choices,
            all_tables=request.all_tables,
            schemas=list(request.schemas),
            expected_catalog_version=_expected_version(request, "expected_catalog_version"),
        )
        return pb.SelectResponse(
            entities=[entity_proto(e) for e in entities], catalog_version=version
        )

    @_blocking_rpc
    def Unselect(self, request: pb.UnselectRequest, ctx: RequestContext) -> pb.UnselectResponse:
        version = self._platform.manager.unselect(
            ctx.tenant,
            _required(request.connection, "connection"),
            list(request.entities),
            expected_catalog_version=_expected_version(request, "expected_catalog_version"),
            actor=ctx.principal,
            stage=ctx.stage,
        )
        return pb.UnselectResponse(catalog_version=version)

    @_blocking_rpc
    def ListEntities(
        self, request: pb.ListEntitiesRequest, ctx: RequestContext
    ) -> pb.ListEntitiesResponse:
        snapshot = self._platform.manager.store.catalog(
            ctx.tenant, _required(request.connection, "connection")
        )
        return pb.ListEntitiesResponse(
            entities=[entity_proto(e) for e in snapshot.entities.values()],
            catalog_version=snapshot.version,
        )

    @_blocking_rpc
    def Refresh(self, request: pb.RefreshRequest, ctx: RequestContext) -> pb.RefreshResponse:
        report = calls.refresh(self._platform, ctx, request.connection, request.stage or None)
        return _report_proto(report)


def settings_from_mapping(values: Mapping[str, SettingValue]) -> dict[str, pb.SettingValue]:
    """Settings as the API carries them (used by the CLI client)."""
    return {key: _setting_proto(value) for key, value in values.items()}
