"""The Flight SQL door: Arrow Flight's gRPC service, answering Flight SQL commands with
the same engine, identity, limits and errors as QueryService.

Statements. GetSchema answers from the result schemas the door has seen
(`fabric.api.flight.schemas`: described before, or run as a prepared statement), else
describes the query: compiled and checked, it is started at its source with a row cap
of one (LIMIT 2 there) and every parameter null, and stopped once the schema is known
(no row is sent). A
prepared statement's answer carries the result schema when it is known. GetFlightInfo
starts the query (through the same `execute` as QueryService.Execute: the engine, or the
bus forwarder on a platform) and waits for its schema, so the FlightInfo carries the
real one; the started result waits in a registry under a random handle, which the ticket
names, until DoGet streams it. Prepared statements are compiled and checked when they
are created, bind one row of parameters by DoPut (`fabric.api.flight.parameters`), and
run like a statement.

Metadata comes from the selection (`fabric.api.flight.catalog`), read from the metadata
store in a worker thread; the ticket of a metadata command is the command itself.

Refused: updates, ingestion, Substrait plans, transactions and savepoints:
UNIMPLEMENTED, the code Flight SQL clients take as "not supported"; a write
sent as a query is refused by the compiler like on QueryService (INVALID_ARGUMENT).

Every call has passed the gateway's interceptors first (token verified, role checked,
admission while draining), and every error leaves as the status `fabric.api.status`
gives its class, with the error code in the trailers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, cast

import grpc
import pyarrow as pa

from fabric.api.flight import catalog as metadata
from fabric.api.flight.options import QueryOptions, query_options
from fabric.api.flight.parameters import (
    bind_parameters,
    parameter_names,
    parameter_schema,
)
from fabric.api.flight.schemas import ResultSchemas, SchemaKey
from fabric.api.flight.sessions import FlightSession, session_cookie, session_id
from fabric.api.flight.sql_info import (
    SQL_INFO_SCHEMA,
    XDBC_TYPE_INFO_SCHEMA,
    sql_info,
    xdbc_type_info,
)
from fabric.api.flight.statements import PreparedQuery, StartedResult
from fabric.api.flight.wire import (
    flight_data,
    pack,
    parse_any,
    read_flight_stream,
    schema_message,
    table_messages,
    type_name,
    unpack,
)
from fabric.api.query_service import ContextProvider, Execute, translated_errors
from fabric.api.wire import serialize_result
from fabric.catalog.metadata.store import MetadataStore
from fabric.clock import Clock
from fabric.context import RequestContext
from fabric.errors import InternalError, InvalidArgument, NotFound, Unimplemented
from fabric.model import CatalogSnapshot
from fabric.query.compiler.positional import named_from_positional
from fabric.query.engine import QueryEngine, QueryRequest
from fabric.query.runs import Summary
from fabric.results.statements import OpenStatement, StatementRegistry
from fabric.v1 import flight_pb2 as fl
from fabric.v1 import flight_sql_pb2 as sql

log = logging.getLogger(__name__)

FLIGHT_SERVICE = fl.DESCRIPTOR.services_by_name["FlightService"].full_name
PROTOCOL = "flight_sql"
_SQL = "arrow.flight.protocol.sql."
MAX_PUT_MESSAGES = 64
"""FlightData messages one DoPut may send (a schema and a few batches of parameters)."""

_READ_ONLY = (
    "Fabric is read-only: it runs SELECT queries only; updates, ingestion and "
    "transactions are not supported"
)
_REFUSED_COMMANDS = {
    f"{_SQL}CommandStatementUpdate": _READ_ONLY,
    f"{_SQL}CommandPreparedStatementUpdate": _READ_ONLY,
    f"{_SQL}CommandStatementIngest": _READ_ONLY,
    f"{_SQL}CommandStatementSubstraitPlan": "Substrait plans are not supported; send SQL",
}
_REFUSED_ACTIONS = {
    "BeginTransaction": _READ_ONLY,
    "EndTransaction": _READ_ONLY,
    "BeginSavepoint": _READ_ONLY,
    "EndSavepoint": _READ_ONLY,
    "CreatePreparedSubstraitPlan": "Substrait plans are not supported; send SQL",
    "RenewFlightEndpoint": "endpoints cannot be renewed; run the query again",
}
ACTIONS = {
    "CreatePreparedStatement": "Compile and check a query; bind its parameters with DoPut",
    "ClosePreparedStatement": "Drop a prepared statement and its bound parameters",
    "CancelFlightInfo": "Cancel a query started by GetFlightInfo, at its source too",
    "CancelQuery": "Cancel a query started by GetFlightInfo (deprecated form)",
    "SetSessionOptions": "Set the session's connection, cache_ttl, max_rows and timeout",
    "GetSessionOptions": "The options of the session",
    "CloseSession": "Drop the session and its options",
}

METADATA_SCHEMAS: dict[str, pa.Schema] = {
    f"{_SQL}CommandGetCatalogs": metadata.CATALOGS_SCHEMA,
    f"{_SQL}CommandGetDbSchemas": metadata.DB_SCHEMAS_SCHEMA,
    f"{_SQL}CommandGetTableTypes": metadata.TABLE_TYPES_SCHEMA,
    f"{_SQL}CommandGetPrimaryKeys": metadata.PRIMARY_KEYS_SCHEMA,
    f"{_SQL}CommandGetImportedKeys": metadata.KEYS_SCHEMA,
    f"{_SQL}CommandGetExportedKeys": metadata.KEYS_SCHEMA,
    f"{_SQL}CommandGetCrossReference": metadata.KEYS_SCHEMA,
    f"{_SQL}CommandGetSqlInfo": SQL_INFO_SCHEMA,
    f"{_SQL}CommandGetXdbcTypeInfo": XDBC_TYPE_INFO_SCHEMA,
}
"""The result schema of each metadata command (GetTables: see `_metadata_schema`)."""


def visible_catalogs(store: MetadataStore, ctx: RequestContext) -> list[CatalogSnapshot]:
    """The selections of the connections the caller may query: its tenant's, with
    settings for its stage (blocking: a worker thread's call)."""
    snapshots = []
    for connection in store.list_connections(ctx.tenant):
        if connection.settings_for(ctx.stage) is None:
            continue
        try:
            snapshots.append(store.catalog(ctx.tenant, connection.name))
        except NotFound:
            continue  # deleted since it was listed
    return snapshots


class FlightSqlService:
    """The handlers of `arrow.flight.protocol.FlightService` (see the module docstring)."""

    def __init__(
        self,
        engine: QueryEngine,
        context_provider: ContextProvider,
        execute: Execute | None = None,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        self._settings = engine.settings
        self._context = context_provider
        self._execute: Execute = engine.execute if execute is None else execute
        idle, most = self._settings.statement_idle_limit, self._settings.max_open_statements
        clock = engine.clock if clock is None else clock
        self.prepared: StatementRegistry[PreparedQuery] = StatementRegistry(
            idle_limit=idle, max_open=most, clock=clock
        )
        self.started: StatementRegistry[StartedResult] = StatementRegistry(
            idle_limit=idle, max_open=most, clock=clock
        )
        self.sessions: StatementRegistry[FlightSession] = StatementRegistry(
            idle_limit=idle, max_open=most, clock=clock
        )
        self.schemas = ResultSchemas()
        engine.on_purge(self._purge)

    def _purge(self, tenant: str, connection: str) -> int:
        self.schemas.drop_connection(tenant, connection)
        return self.prepared.close_connection(tenant, connection) + self.started.close_connection(
            tenant, connection
        )

    def snapshot(self) -> dict[str, float]:
        prepared, started = self.prepared.stats, self.started.stats
        return {
            "flight_prepared_statements": prepared.open,
            "flight_started_results": started.open,
            "purge_flight_statement_idle": prepared.purged_idle + started.purged_idle,
            "purge_flight_statement_closed": prepared.closed + started.closed,
        }

    def close_all(self) -> None:
        self.prepared.close_all()
        self.started.close_all()
        self.sessions.close_all()

    async def run_sweepers(self, interval: float) -> None:
        await asyncio.gather(
            self.prepared.run_sweeper(interval),
            self.started.run_sweeper(interval),
            self.sessions.run_sweeper(interval),
        )

    # -- registration ----------------------------------------------------------------------

    def add_to_server(self, server: grpc.aio.Server) -> None:
        handlers = {
            "GetFlightInfo": grpc.unary_unary_rpc_method_handler(
                self.GetFlightInfo,
                request_deserializer=fl.FlightDescriptor.FromString,
                response_serializer=fl.FlightInfo.SerializeToString,
            ),
            "GetSchema": grpc.unary_unary_rpc_method_handler(
                self.GetSchema,
                request_deserializer=fl.FlightDescriptor.FromString,
                response_serializer=fl.SchemaResult.SerializeToString,
            ),
            "DoGet": grpc.unary_stream_rpc_method_handler(
                self.DoGet,
                request_deserializer=fl.Ticket.FromString,
                response_serializer=serialize_result,
            ),
            "DoPut": grpc.stream_stream_rpc_method_handler(
                self.DoPut,
                request_deserializer=fl.FlightData.FromString,
                response_serializer=fl.PutResult.SerializeToString,
            ),
            "DoAction": grpc.unary_stream_rpc_method_handler(
                self.DoAction,
                request_deserializer=fl.Action.FromString,
                response_serializer=fl.Result.SerializeToString,
            ),
            "ListActions": grpc.unary_stream_rpc_method_handler(
                self.ListActions,
                request_deserializer=fl.Empty.FromString,
                response_serializer=fl.ActionType.SerializeToString,
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(FLIGHT_SERVICE, handlers),)
        )
        server.add_registered_method_handlers(FLIGHT_SERVICE, handlers)

    # -- GetFlightInfo -----------------------------------------------------------------------

    async def GetFlightInfo(
        self, request: fl.FlightDescriptor, context: grpc.aio.ServicerContext
    ) -> fl.FlightInfo:
        async with translated_errors(context, "GetFlightInfo"):
            ctx = self._context(context)
            command = _command(request)
            name = type_name(command)
            if name == f"{_SQL}CommandStatementQuery":
                query = unpack(command, sql.CommandStatementQuery)
                _no_transaction(query)
                options = self._options(ctx, context)
                return await self._start(ctx, request, self._request(query.query, options), options)
            if name == f"{_SQL}CommandPreparedStatementQuery":
                handle = unpack(command, sql.CommandPreparedStatementQuery)
                prepared = self._prepared(ctx, handle.prepared_statement_handle)
                request_ = _prepared_request(prepared)
                key = _schema_key(ctx, prepared.connection, prepared.fingerprint)
                return await self._start(ctx, request, request_, prepared.options, key)
            schema = self._metadata_schema(command)
            ticket = fl.Ticket(ticket=request.cmd)
            return fl.FlightInfo(
                schema=schema_message(schema),
                flight_descriptor=request,
                endpoint=[fl.FlightEndpoint(ticket=ticket)],
                total_records=-1,
                total_bytes=-1,
            )
        raise AssertionError("unreachable: errors abort the call")

    def _request(self, text: str, options: QueryOptions) -> QueryRequest:
        if not text.strip():
            raise InvalidArgument("the query text is empty")
        connection = options.require_connection()
        named, _ = named_from_positional(text, self._settings.max_sql_length)
        return QueryRequest(
            connection,
            named,
            cache_ttl=options.cache_ttl,
            max_rows=options.max_rows,
            protocol=PROTOCOL,
        )

    async def _start(
        self,
        ctx: RequestContext,
        descriptor: fl.FlightDescriptor,
        request: QueryRequest,
        options: QueryOptions,
        schema_key: SchemaKey | None = None,
    ) -> fl.FlightInfo:
        """Start the query, take its schema (remembered under `schema_key`, when given),
        and keep the rest for DoGet."""
        items = cast(
            AsyncGenerator[bytes | Summary, None],
            self._execute(ctx, request, options.deadline()),
        )
        try:
            schema = await anext(items)
        except BaseException:
            await items.aclose()
            raise
        if not isinstance(schema, bytes):
            await items.aclose()
            raise InternalError("the result started without its schema")
        if schema_key is not None:
            self.schemas.put(schema_key, schema)
        result = StartedResult(items, schema, asyncio.get_running_loop(), ctx.principal)
        statement = self.started.open(
            tenant=ctx.tenant,
            stage=ctx.stage,
            principal=ctx.principal,
            payload=result,
            close_fn=result.close,
            connection=request.connection,
        )
        ticket = pack(sql.TicketStatementQuery(statement_handle=statement.id.encode()))
        return fl.FlightInfo(
            schema=schema,
            flight_descriptor=descriptor,
            endpoint=[fl.FlightEndpoint(ticket=fl.Ticket(ticket=ticket))],
            total_records=-1,
            total_bytes=-1,
        )

    def _metadata_schema(self, command: Any) -> pa.Schema:
        name = type_name(command)
        if name == f"{_SQL}CommandGetTables":
            tables = unpack(command, sql.CommandGetTables)
            return (
                metadata.TABLES_WITH_SCHEMA_SCHEMA
                if tables.include_schema
                else metadata.TABLES_SCHEMA
            )
        schema = METADATA_SCHEMAS.get(name)
        if schema is not None:
            return schema
        _refuse_command(name)
        raise AssertionError("unreachable")

    # -- GetSchema -------------------------------------------------------------------------

    async def GetSchema(
        self, request: fl.FlightDescriptor, context: grpc.aio.ServicerContext
    ) -> fl.SchemaResult:
        async with translated_errors(context, "GetSchema"):
            ctx = self._context(context)
            command = _command(request)
            name = type_name(command)
            if name == f"{_SQL}CommandStatementQuery":
                query = unpack(command, sql.CommandStatementQuery)
                _no_transaction(query)
                options = self._options(ctx, context)
                statement = self._request(query.query, options)
                compiled = await self._engine.prepare(ctx, statement)
                key = _schema_key(ctx, statement.connection, compiled.fingerprint)
                names = parameter_names(compiled.param_names)
                schema = await self._describe(ctx, statement, names, options, key)
                return fl.SchemaResult(schema=schema)
            if name == f"{_SQL}CommandPreparedStatementQuery":
                handle = unpack(command, sql.CommandPreparedStatementQuery)
                prepared = self._prepared(ctx, handle.prepared_statement_handle)
                key = _schema_key(ctx, prepared.connection, prepared.fingerprint)
                statement = _prepared_request(prepared)
                schema = await self._describe(ctx, statement, prepared.names, prepared.options, key)
                return fl.SchemaResult(schema=schema)
            return fl.SchemaResult(schema=schema_message(self._metadata_schema(command)))
        raise AssertionError("unreachable: errors abort the call")

    async def _describe(
        self,
        ctx: RequestContext,
        request: QueryRequest,
        names: tuple[str, ...],
        options: QueryOptions,
        key: SchemaKey,
    ) -> bytes:
        """The result schema of a checked query: remembered, or read from its source by
        starting it with a row cap of one (the source reads two at most), every
        parameter null, and stopping it once the schema is there (nothing is cached, no
        row is sent)."""
        known = self.schemas.get(key)
        if known is not None:
            return known
        probe = dataclasses.replace(request, params=dict.fromkeys(names), cache_ttl=0.0, max_rows=1)
        items = cast(
            AsyncGenerator[bytes | Summary, None],
            self._execute(ctx, probe, options.deadline()),
        )
        try:
            schema = await anext(items)
        finally:
            await items.aclose()
        if not isinstance(schema, bytes):
            raise InternalError("the result started without its schema")
        self.schemas.put(key, schema)
        return schema

    # -- DoGet -------------------------------------------------------------------------------

    async def DoGet(
        self, request: fl.Ticket, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        async with translated_errors(context, "DoGet"):
            ctx = self._context(context)
            command = parse_any(request.ticket, "ticket")
            if type_name(command) == f"{_SQL}TicketStatementQuery":
                ticket = unpack(command, sql.TicketStatementQuery)
                async for data in self._stream(ctx, ticket.statement_handle, context):
                    yield data
                return
            table = await self._metadata(ctx, command)
            for message in table_messages(table):
                encoded = flight_data(message)
                if encoded is not None:
                    yield encoded

    async def _stream(
        self, ctx: RequestContext, handle: bytes, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        statement_id = _handle(handle)
        with self.started.lease(statement_id, tenant=ctx.tenant, stage=ctx.stage) as statement:
            result = _owned(statement, ctx)
            if result.cancelled:
                statement.exhausted = True
                raise_cancelled()
            result.reader = asyncio.current_task()
            summary: Summary | None = None
            try:
                first = flight_data(result.schema)
                if first is not None:
                    yield first
                async for item in result.items:
                    if isinstance(item, Summary):
                        summary = item
                        continue
                    data = flight_data(item)
                    if data is not None:
                        yield data
            except asyncio.CancelledError:
                if result.cancelled:
                    raise_cancelled()
                raise
            finally:
                result.reader = None
                # Consumed, failed or abandoned: the result is released as the lease
                # ends; closing its stream cancels a query still running.
                statement.exhausted = True
                await result.items.aclose()
            if summary is not None:
                context.set_trailing_metadata(_summary_trailers(summary))

    # -- DoPut -------------------------------------------------------------------------------

    async def DoPut(
        self, requests: AsyncIterator[fl.FlightData], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fl.PutResult]:
        async with translated_errors(context, "DoPut"):
            ctx = self._context(context)
            datas: list[fl.FlightData] = []
            async for data in requests:
                if not isinstance(data, fl.FlightData):
                    raise InvalidArgument(
                        "the request stream carries a message that is not FlightData"
                    )
                datas.append(data)
                if len(datas) > MAX_PUT_MESSAGES:
                    raise InvalidArgument(
                        f"send at most {MAX_PUT_MESSAGES} messages of parameters per DoPut"
                    )
            if not datas or not datas[0].HasField("flight_descriptor"):
                raise InvalidArgument("the first message of a DoPut must carry its command")
            command = _command(datas[0].flight_descriptor)
            name = type_name(command)
            if name != f"{_SQL}CommandPreparedStatementQuery":
                _refuse_command(name)
            handle = unpack(command, sql.CommandPreparedStatementQuery).prepared_statement_handle
            prepared = self._prepared(ctx, handle)
            table = read_flight_stream(datas)
            prepared.params = bind_parameters(prepared.names, table)
            prepared.bound = True
            result = sql.DoPutPreparedStatementResult(prepared_statement_handle=handle)
            yield fl.PutResult(app_metadata=result.SerializeToString())

    # -- DoAction ----------------------------------------------------------------------------

    async def DoAction(
        self, request: fl.Action, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fl.Result]:
        async with translated_errors(context, "DoAction"):
            ctx = self._context(context)
            kind = request.type
            if kind == "CreatePreparedStatement":
                yield await self._create_prepared(ctx, request.body, context)
            elif kind == "ClosePreparedStatement":
                body = unpack(
                    parse_any(request.body, "action body"), sql.ActionClosePreparedStatementRequest
                )
                self.prepared.close(
                    _handle(body.prepared_statement_handle),
                    tenant=ctx.tenant,
                    stage=ctx.stage,
                    missing_ok=True,
                )
            elif kind == "CancelFlightInfo":
                cancel = _parse(fl.CancelFlightInfoRequest, request.body, "CancelFlightInfo")
                self._cancel(ctx, cancel.info)
                done = fl.CancelFlightInfoResult(status=fl.CANCEL_STATUS_CANCELLED)
                yield fl.Result(body=done.SerializeToString())
            elif kind == "CancelQuery":
                body = unpack(parse_any(request.body, "action body"), sql.ActionCancelQueryRequest)
                self._cancel(ctx, _parse(fl.FlightInfo, body.info, "CancelQuery"))
                cancelled = sql.ActionCancelQueryResult.CANCEL_RESULT_CANCELLED
                yield fl.Result(body=pack(sql.ActionCancelQueryResult(result=cancelled)))
            elif kind == "SetSessionOptions":
                yield await self._set_session_options(ctx, request.body, context)
            elif kind == "GetSessionOptions":
                _parse(fl.GetSessionOptionsRequest, request.body, "GetSessionOptions")
                session = self._session(ctx, context)
                options = session.options() if session is not None else {}
                result = fl.GetSessionOptionsResult(session_options=options)
                yield fl.Result(body=result.SerializeToString())
            elif kind == "CloseSession":
                _parse(fl.CloseSessionRequest, request.body, "CloseSession")
                identifier = session_id(context.invocation_metadata())
                if identifier is not None:
                    self._session(ctx, context, missing_ok=True)  # the caller's own only
                    self.sessions.close(
                        identifier, tenant=ctx.tenant, stage=ctx.stage, missing_ok=True
                    )
                closed = fl.CloseSessionResult(status=fl.CloseSessionResult.CLOSED)
                yield fl.Result(body=closed.SerializeToString())
            elif kind in _REFUSED_ACTIONS:
                raise Unimplemented(_REFUSED_ACTIONS[kind])
            else:
                raise Unimplemented(
                    "this action is not supported; ListActions names those that are"
                )

    async def _create_prepared(
        self, ctx: RequestContext, body: bytes, context: grpc.aio.ServicerContext
    ) -> fl.Result:
        create = unpack(parse_any(body, "action body"), sql.ActionCreatePreparedStatementRequest)
        _no_transaction(create)
        options = self._options(ctx, context)
        request = self._request(create.query, options)
        compiled = await self._engine.prepare(ctx, request)
        names = parameter_names(compiled.param_names)
        # The result schema when the door has seen it (GetSchema, an earlier run): the
        # ADBC driver reads a prepared statement's schema from here only. Not described
        # at the source here: ADBC prepares every query it runs, so that would run each
        # new query twice.
        key = _schema_key(ctx, request.connection, compiled.fingerprint)
        dataset_schema = self.schemas.get(key) or b""
        prepared = PreparedQuery(
            request.connection, request.sql, names, compiled.fingerprint, options, ctx.principal
        )
        statement = self.prepared.open(
            tenant=ctx.tenant,
            stage=ctx.stage,
            principal=ctx.principal,
            payload=prepared,
            close_fn=lambda: prepared.params.clear(),
            connection=request.connection,
        )
        result = sql.ActionCreatePreparedStatementResult(
            prepared_statement_handle=statement.id.encode(),
            dataset_schema=dataset_schema,
            parameter_schema=(
                schema_message(parameter_schema(names, dict(compiled.param_types)))
                if names
                else b""
            ),
        )
        return fl.Result(body=pack(result))

    def _cancel(self, ctx: RequestContext, info: fl.FlightInfo) -> None:
        """Cancel the started result a FlightInfo's ticket names (NOT_FOUND when it is
        unknown: finished, closed, or never this caller's)."""
        handles = []
        for endpoint in info.endpoint:
            command = parse_any(endpoint.ticket.ticket, "ticket")
            if type_name(command) == f"{_SQL}TicketStatementQuery":
                handles.append(unpack(command, sql.TicketStatementQuery).statement_handle)
        if not handles:
            raise InvalidArgument("the FlightInfo names no query Fabric started")
        for handle in handles:
            statement_id = _handle(handle)
            statement = self.started.get(statement_id, tenant=ctx.tenant, stage=ctx.stage)
            _owned(statement, ctx).cancel()
            self.started.close(statement_id, tenant=ctx.tenant, stage=ctx.stage, missing_ok=True)

    async def ListActions(
        self, request: fl.Empty, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fl.ActionType]:
        async with translated_errors(context, "ListActions"):
            self._context(context)
            for kind, description in ACTIONS.items():
                yield fl.ActionType(type=kind, description=description)

    # -- sessions ----------------------------------------------------------------------------

    def _session(
        self, ctx: RequestContext, context: grpc.aio.ServicerContext, *, missing_ok: bool = False
    ) -> FlightSession | None:
        """The session the call's cookie names (None without one); NotFound when it is
        closed, expired or another caller's, unless `missing_ok`."""
        identifier = session_id(context.invocation_metadata())
        if identifier is None:
            return None
        try:
            statement = self.sessions.get(identifier, tenant=ctx.tenant, stage=ctx.stage)
            if statement.payload.principal != ctx.principal:
                raise NotFound("")
        except NotFound:
            if missing_ok:
                return None
            raise NotFound(
                "the Flight session was closed or expired: open a new one (reconnect, or "
                "set its options again without the old session cookie)"
            ) from None
        return statement.payload

    def _options(self, ctx: RequestContext, context: grpc.aio.ServicerContext) -> QueryOptions:
        """The call's query options: its headers, over its session's options."""
        session = self._session(ctx, context)
        return query_options(
            context.invocation_metadata(), session.defaults() if session is not None else None
        )

    async def _set_session_options(
        self, ctx: RequestContext, body: bytes, context: grpc.aio.ServicerContext
    ) -> fl.Result:
        request = _parse(fl.SetSessionOptionsRequest, body, "SetSessionOptions")
        session = self._session(ctx, context)
        if session is None:
            session = FlightSession(ctx.principal)
            opened = self.sessions.open(
                tenant=ctx.tenant,
                stage=ctx.stage,
                principal=ctx.principal,
                payload=session,
                close_fn=session.values.clear,
            )
            await context.send_initial_metadata((session_cookie(opened.id),))
        errors = session.update(dict(request.session_options))
        result = fl.SetSessionOptionsResult(
            errors={
                name: fl.SetSessionOptionsResult.Error(value=error)  # type: ignore[arg-type]
                for name, error in errors.items()
            }
        )
        return fl.Result(body=result.SerializeToString())

    # -- helpers -----------------------------------------------------------------------------

    def _prepared(self, ctx: RequestContext, handle: bytes) -> PreparedQuery:
        statement = self.prepared.get(_handle(handle), tenant=ctx.tenant, stage=ctx.stage)
        prepared = statement.payload
        if prepared.principal != ctx.principal:
            raise NotFound("prepared statement not found: it was closed or expired")
        return prepared

    async def _metadata(self, ctx: RequestContext, command: Any) -> pa.Table:
        name = type_name(command)
        if name == f"{_SQL}CommandGetTableTypes":
            return metadata.table_types()
        if name == f"{_SQL}CommandGetSqlInfo":
            return sql_info(self._settings, list(unpack(command, sql.CommandGetSqlInfo).info))
        if name == f"{_SQL}CommandGetXdbcTypeInfo":
            xdbc = unpack(command, sql.CommandGetXdbcTypeInfo)
            return xdbc_type_info(xdbc.data_type if xdbc.HasField("data_type") else None)
        builders: dict[str, tuple[type[Any], Callable[..., pa.Table]]] = {
            f"{_SQL}CommandGetDbSchemas": (sql.CommandGetDbSchemas, metadata.db_schemas),
            f"{_SQL}CommandGetTables": (sql.CommandGetTables, metadata.tables),
            f"{_SQL}CommandGetPrimaryKeys": (sql.CommandGetPrimaryKeys, metadata.primary_keys),
            f"{_SQL}CommandGetImportedKeys": (sql.CommandGetImportedKeys, metadata.imported_keys),
            f"{_SQL}CommandGetExportedKeys": (sql.CommandGetExportedKeys, metadata.exported_keys),
            f"{_SQL}CommandGetCrossReference": (
                sql.CommandGetCrossReference,
                metadata.cross_reference,
            ),
        }
        if name == f"{_SQL}CommandGetCatalogs":
            snapshots = await self._catalogs(ctx)
            return metadata.catalogs(snapshots)
        if name not in builders:
            _refuse_command(name)
        cls, build = builders[name]
        message = unpack(command, cls)
        snapshots = await self._catalogs(ctx)
        return build(snapshots, message)

    async def _catalogs(self, ctx: RequestContext) -> list[CatalogSnapshot]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._engine.executor, visible_catalogs, self._engine.store, ctx
        )


# -- module helpers -------------------------------------------------------------------------


def _command(descriptor: fl.FlightDescriptor) -> Any:
    if descriptor.type != fl.FlightDescriptor.CMD:
        raise InvalidArgument("Fabric answers Flight SQL commands only (descriptors of type CMD)")
    return parse_any(descriptor.cmd, "descriptor's command")


def _prepared_request(prepared: PreparedQuery) -> QueryRequest:
    return QueryRequest(
        prepared.connection,
        prepared.sql,
        prepared.params if prepared.bound else {},
        cache_ttl=prepared.options.cache_ttl,
        max_rows=prepared.options.max_rows,
        protocol=PROTOCOL,
    )


def _schema_key(ctx: RequestContext, connection: str, fingerprint: str) -> SchemaKey:
    return (ctx.tenant, ctx.stage, connection, fingerprint)


def _refuse_command(name: str) -> None:
    reason = _REFUSED_COMMANDS.get(name)
    if reason is not None:
        raise Unimplemented(reason)
    raise Unimplemented(f"the command {name.rsplit('.', 1)[-1]!r} is not supported")


def _no_transaction(message: Any) -> None:
    if message.HasField("transaction_id"):
        raise Unimplemented(_READ_ONLY)


def _handle(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise NotFound("statement not found: it was closed, consumed or expired") from None


def _owned(statement: OpenStatement[StartedResult], ctx: RequestContext) -> StartedResult:
    result = statement.payload
    if result.principal != ctx.principal:
        raise NotFound("statement not found: it was closed, consumed or expired")
    return result


def _parse(cls: type[Any], raw: bytes, what: str) -> Any:
    try:
        return cls.FromString(raw)
    except Exception:  # DecodeError, and whatever else a parser raises on junk
        raise InvalidArgument(f"the {what} request does not parse") from None


def raise_cancelled() -> None:
    from fabric.errors import Cancelled

    raise Cancelled("the query was cancelled (CancelFlightInfo); it was stopped at its source")


def _summary_trailers(summary: Summary) -> tuple[tuple[str, str], ...]:
    """What QueryService's ResultSummary says, as trailing metadata: Flight has no place
    for it in the stream."""
    return (
        ("x-fabric-rows", str(summary.rows)),
        ("x-fabric-truncated", "true" if summary.truncated else "false"),
        ("x-fabric-from-cache", "true" if summary.from_cache else "false"),
    )
