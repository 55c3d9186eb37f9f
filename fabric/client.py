"""The Python client: SQL and parameters in, `pyarrow` tables and readers out."""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pyarrow as pa

from fabric.api.platform_service import settings_from_mapping
from fabric.api.status import ERROR_CODE_KEY, RETRY_AFTER_KEY, SQLSTATE_KEY, error_from_rpc
from fabric.errors import FabricError, GatewayUnavailable, GatewayUnreachable, InvalidArgument
from fabric.model import ALL_STAGES, SettingValue
from fabric.proto_values import params_to_proto
from fabric.results.ipc import decode_page, open_ipc_stream
from fabric.v1 import platform_pb2 as admin_pb
from fabric.v1 import platform_pb2_grpc as admin_grpc
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc

__all__ = [
    "FabricClient",
    "QueryResult",
    "ResultStream",
    "ResultSummary",
    "Statement",
    "addresses_of",
]

MAX_MESSAGE = 256 << 20
DEFAULT_RETRIES = 2
"""Extra attempts of a call on other replicas before any of its result arrived."""
RETRY_PAUSE = 0.02
"""Seconds (times the attempt number) before a retry on an address tried already."""
QUERY_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["QueryService"].full_name


@dataclass(frozen=True, slots=True)
class ResultSummary:
    rows: int
    truncated: bool
    from_cache: bool
    elapsed_us: int
    """Time the gateway spent on the call."""

    @staticmethod
    def of(message: pb.ResultSummary) -> ResultSummary:
        return ResultSummary(
            message.rows, message.truncated, message.from_cache, message.elapsed_us
        )


@dataclass(frozen=True, slots=True)
class QueryResult:
    table: pa.Table
    summary: ResultSummary


def _translate(error: grpc.RpcError, target: str) -> FabricError:
    call: Any = error
    trailing = dict(call.trailing_metadata() or ())
    code = trailing.get(ERROR_CODE_KEY)
    if code is None and call.code() == grpc.StatusCode.UNAVAILABLE:
        # No gateway answered: the status comes from the channel, not from a gateway
        # (which always names its error's code).
        return GatewayUnreachable(
            f"cannot reach the Fabric gateway at {target} ({call.details() or 'unavailable'})"
        )
    return error_from_rpc(
        call.code(),
        call.details() or "",
        code,
        trailing.get(SQLSTATE_KEY),
        trailing.get(RETRY_AFTER_KEY),
    )


def _retryable(error: grpc.RpcError) -> bool:
    """Whether another replica may answer what this one could not: UNAVAILABLE from the
    transport (the replica is gone, refused the connection, or no replica is healthy) or
    from a replica that takes no calls now (starting, shutting down). Not UNAVAILABLE
    from a source that is down: every replica would find it down."""
    call: Any = error
    if call.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    code = dict(call.trailing_metadata() or ()).get(ERROR_CODE_KEY)
    return code is None or code == GatewayUnavailable.code


def addresses_of(address: str | Sequence[str]) -> list[str]:
    """The gRPC targets of a stage: one address (`host:port`, or a name that resolves to
    several, e.g. `dns:///fabric-production:50051`), several separated by commas, or a
    list of them."""
    parts = address.split(",") if isinstance(address, str) else list(address)
    targets = [part.strip() for part in parts if part.strip()]
    if not targets:
        raise InvalidArgument("give at least one gateway address (host:port)")
    return targets


ROUND_ROBIN = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": QUERY_SERVICE_NAME},
    }
)
"""Calls on one address spread over every address it resolves to, skipping those whose
health says NOT_SERVING (a replica still starting, or draining)."""

STICKY = json.dumps(
    {
        "loadBalancingConfig": [{"pick_first": {"shuffleAddressList": True}}],
        "healthCheckConfig": {"serviceName": QUERY_SERVICE_NAME},
    }
)
"""Calls of open statements stay on one of the addresses (a statement lives in one
replica's memory); clients pick theirs at random, so statements spread."""


class _Endpoint:
    """One address: a round-robin channel for calls that may go to any replica behind
    it, and (made when first needed) a sticky one for open statements."""

    def __init__(
        self,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        options: list[tuple[str, Any]],
    ) -> None:
        self.target = target
        self._credentials = credentials
        self._options = options
        self.channel = self._open(ROUND_ROBIN)
        self.stub = pb_grpc.QueryServiceStub(self.channel)
        self._sticky: grpc.Channel | None = None
        self._sticky_stub: Any = None

    def _open(self, service_config: str) -> grpc.Channel:
        options = [*self._options, ("grpc.service_config", service_config)]
        if self._credentials is not None:
            return grpc.secure_channel(self.target, self._credentials, options=options)
        return grpc.insecure_channel(self.target, options=options)

    @property
    def statements(self) -> Any:
        """The stub for OpenStatement, Fetch and CloseStatement."""
        if self._sticky_stub is None:
            self._sticky = self._open(STICKY)
            self._sticky_stub = pb_grpc.QueryServiceStub(self._sticky)
        return self._sticky_stub

    def close(self) -> None:
        self.channel.close()
        if self._sticky is not None:
            self._sticky.close()


class _Stream:
    """Pulls ResultChunks, hands their IPC bytes to pyarrow, keeps the summary.

    `start()` opens the call (on the client's next address). A call that fails with a
    retryable UNAVAILABLE (`_retryable`) before its first chunk arrived is opened again,
    elsewhere, up to `retries` more times; once a chunk has arrived it is never retried
    (part of the result was handed on, and a second run may differ)."""

    def __init__(
        self, start: Callable[[int], Iterator[pb.ResultChunk]], retries: int, target: str
    ) -> None:
        self._start = start
        self._retries = retries
        self._target = target
        self._call: Iterator[pb.ResultChunk] | None = None
        self.summary: ResultSummary | None = None
        self.chunks: Iterator[bytes] = self._pull()

    def _pull(self) -> Iterator[bytes]:
        attempt = 0
        while True:
            self._call = self._start(attempt)
            received = False
            try:
                for chunk in self._call:
                    received = True
                    # The summary rides on the last chunk, whose bytes end the IPC stream:
                    # the reader stops right after them, so take the summary first.
                    if chunk.HasField("summary"):
                        self.summary = ResultSummary.of(chunk.summary)
                    if chunk.arrow_ipc:
                        yield chunk.arrow_ipc
                return
            except grpc.RpcError as error:
                if received or attempt >= self._retries or not _retryable(error):
                    translated = _translate(error, self._target)
                    if received and isinstance(translated, GatewayUnreachable):
                        # It was reached: the link broke with part of the result sent.
                        translated = GatewayUnavailable(
                            f"the gateway at {self._target} stopped sending in the middle of "
                            "the result, which is incomplete; run the query again"
                        )
                    raise translated from None
                attempt += 1

    def finish(self) -> None:
        """Read the call to its end once the IPC stream has ended, so it completes with
        the gateway's status instead of being cancelled when dropped (a cancelled call
        costs the gateway an abort and hides a status that arrives late)."""
        for _ in self.chunks:
            raise FabricError("the gateway sent data after the end of the result")

    @contextmanager
    def finishing(self) -> Iterator[None]:
        """Around the reading of the IPC stream: `finish` the call when the reading
        completes, cancel it when the reading fails or is abandoned."""
        try:
            yield
            self.finish()
        except BaseException:
            self.cancel()
            raise

    def cancel(self) -> None:
        cancel = getattr(self._call, "cancel", None)
        if cancel is not None:
            cancel()


class ResultStream:
    """A result as it arrives: `schema`, then record batches by iteration; `summary` once
    the last batch was read. `cancel` (or leaving the iteration early) stops the query,
    at the source too. A context manager that cancels what was not read to the end."""

    def __init__(self, stream: _Stream) -> None:
        self._stream = stream
        try:
            self._reader = open_ipc_stream(stream.chunks)
        except BaseException:
            stream.cancel()
            raise
        self._done = False

    @property
    def schema(self) -> pa.Schema:
        return self._reader.schema

    @property
    def summary(self) -> ResultSummary | None:
        """The gateway's summary (rows, truncated, from_cache, time), after the end."""
        return self._stream.summary

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        with self._stream.finishing():
            yield from self._reader
        self._done = True

    def cancel(self) -> None:
        self._stream.cancel()

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._done:
            self.cancel()


class Statement:
    """An open statement: pages of a result, fetched on demand. Close it (or use it as a
    context manager) when done; the gateway drops its rows and parameters at once."""

    def __init__(self, client: FabricClient, stub: Any, first: pb.Page, page_rows: int = 0) -> None:
        self._client = client
        self._stub = stub
        self.page_rows = page_rows
        self.id = first.statement_id
        self._pages: list[pb.Page] = [first]
        self.done = first.done
        self.summary: ResultSummary | None = (
            ResultSummary.of(first.summary) if first.HasField("summary") else None
        )

    def fetch(self, page_rows: int | None = None) -> pa.Table | None:
        """The next page (of `page_rows`, by default the size the statement was opened
        with), or None when the statement is consumed."""
        if page_rows is None:
            page_rows = self.page_rows
        if self._pages:
            return decode_page(self._pages.pop().arrow_ipc)
        if self.done:
            return None
        page = self._client._unary(
            self._stub.Fetch, pb.FetchRequest(statement_id=self.id, page_rows=page_rows)
        )
        self.done = page.done
        if page.HasField("summary"):
            self.summary = ResultSummary.of(page.summary)
        return decode_page(page.arrow_ipc)

    def __iter__(self) -> Iterator[pa.Table]:
        while (page := self.fetch()) is not None:
            yield page

    def close(self) -> None:
        if not self.done and self.id:
            self.done = True
            self._pages.clear()
            self._client._unary(
                self._stub.CloseStatement, pb.CloseStatementRequest(statement_id=self.id)
            )

    def __enter__(self) -> Statement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FabricClient:
    """`FabricClient("127.0.0.1:50051", token)`; errors are the gateway's own FabricError
    classes (QueryRejected, NotFound, SourceUnavailable, ...).

    A stage served by several runtime replicas is reached by several addresses
    (`"10.0.0.5:50051,10.0.0.6:50051"` or a list) or by one name that resolves to
    several (`"dns:///fabric-production:50051"`): calls go round-robin over them,
    skipping replicas whose health says NOT_SERVING. A call refused because its
    replica is gone, starting or shutting down (UNAVAILABLE) is tried again on the next
    one, up to `retries` more times, as long as no part of its result had arrived; after
    the first chunk it fails instead. An open statement stays with the replica that
    opened it.
    """

    def __init__(
        self,
        address: str | Sequence[str],
        token: str | None = None,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls: bool = False,
        retries: int = DEFAULT_RETRIES,
        tls_server_name: str | None = None,
    ) -> None:
        """`tls_ca` (PEM) trusts the gateway's CA; `tls_cert`/`tls_key` are the client's
        own certificate for mutual TLS; `tls=True` alone uses the system's roots;
        `tls_server_name` is the name the gateway's certificate must carry when it is not
        the address's host (an IP address, a tunnel). `timeout` bounds each call, retries
        included."""
        if retries < 0:
            raise InvalidArgument("retries must not be negative")
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        credentials = (
            grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
            if tls or tls_ca or tls_cert
            else None
        )
        self._endpoints = [
            _Endpoint(target, credentials, options) for target in addresses_of(address)
        ]
        # Clients start at a random address, so many short-lived ones (a CLI run, a
        # worker's first call) do not all begin with the first.
        self._turn = itertools.count(random.randrange(len(self._endpoints)))
        self._target = ", ".join(endpoint.target for endpoint in self._endpoints)
        auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata = (*auth, *metadata)
        self._timeout = timeout
        self.retries = retries

    @property
    def addresses(self) -> list[str]:
        return [endpoint.target for endpoint in self._endpoints]

    def _rotation(self) -> Callable[[int], _Endpoint]:
        """For one call: the address of each attempt. The first is the one whose turn it
        is (round-robin across calls); a retry takes the next one after the address that
        failed, so it goes elsewhere while there is an elsewhere. A retry that comes back
        to an address already tried first pauses briefly, so a channel that has just lost
        a replica notices before it picks again."""
        first = next(self._turn)
        count = len(self._endpoints)

        def endpoint(attempt: int) -> _Endpoint:
            if attempt >= count:
                time.sleep(RETRY_PAUSE * attempt)
            return self._endpoints[(first + attempt) % count]

        return endpoint

    def _request(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None,
        cache_ttl: int,
        max_rows: int | None,
        max_bytes: int | None = None,
    ) -> pb.ExecuteRequest:
        return pb.ExecuteRequest(
            connection=connection,
            sql=sql,
            params=params_to_proto(params),
            cache_ttl_seconds=cache_ttl,
            max_rows=max_rows,
            max_bytes=max_bytes,
        )

    def _deadline(self) -> float | None:
        return None if self._timeout is None else time.monotonic() + self._timeout

    @staticmethod
    def _left(deadline: float | None) -> float | None:
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def _stream(self, method: str, request: Any) -> _Stream:
        """A streaming call on the next address, opened again elsewhere on a retryable
        failure before its first chunk (`_Stream`), all within this client's timeout."""
        deadline = self._deadline()
        endpoint = self._rotation()

        def start(attempt: int) -> Iterator[pb.ResultChunk]:
            stub = endpoint(attempt).stub
            call: Iterator[pb.ResultChunk] = getattr(stub, method)(
                request, timeout=self._left(deadline), metadata=self._metadata
            )
            return call

        return _Stream(start, self.retries, self._target)

    def _unary(self, method: Any, request: Any, deadline: float | None = None) -> Any:
        try:
            return method(
                request,
                timeout=self._left(deadline if deadline is not None else self._deadline()),
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise _translate(error, self._target) from None

    def _read(self, stream: _Stream) -> QueryResult:
        with stream.finishing():
            table = open_ipc_stream(stream.chunks).read_all()
        if stream.summary is None:
            raise FabricError("the gateway ended the result without its summary")
        return QueryResult(table, stream.summary)

    def execute(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> QueryResult:
        """The whole result and its summary (rows, truncated, from_cache, time spent);
        `truncated` when the result had more rows than max_rows or more bytes than
        max_bytes (each capped by the gateway's own limit)."""
        request = self._request(connection, sql, params, cache_ttl, max_rows, max_bytes)
        return self._read(self._stream("Execute", request))

    def query(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> pa.Table:
        return self.execute(connection, sql, params, cache_ttl, max_rows, max_bytes=max_bytes).table

    def explain(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        analyze: bool = False,
        max_rows: int | None = None,
    ) -> pb.ExplainResponse:
        """The plan of a query (`connection` may be empty when every entity is written
        `connection.entity`): each source's statement, DuckDB's part; with `analyze`
        the query runs and each part reports the rows and bytes it moved."""
        request = pb.ExplainRequest(
            query=self._request(connection, sql, params, 0, max_rows), analyze=analyze
        )
        response: pb.ExplainResponse = self._unary(self._rotation()(0).stub.Explain, request)
        return response

    def query_batches(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        *,
        max_bytes: int | None = None,
    ) -> pa.RecordBatchReader:
        """Stream the result batch by batch as it arrives."""
        request = self._request(connection, sql, params, cache_ttl, max_rows, max_bytes)
        stream = self._stream("Execute", request)
        reader = open_ipc_stream(stream.chunks)

        def batches() -> Iterator[pa.RecordBatch]:
            with stream.finishing():
                yield from reader

        return pa.RecordBatchReader.from_batches(reader.schema, batches())

    def stream(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        max_bytes: int | None = None,
    ) -> ResultStream:
        """The result as it arrives, with its summary at the end (see ResultStream).
        Returns once the gateway has sent the result's schema."""
        request = self._request(connection, sql, params, cache_ttl, max_rows, max_bytes)
        return ResultStream(self._stream("Execute", request))

    def preview(self, connection: str, entity: str, limit: int = 0) -> pa.Table:
        request = pb.PreviewRequest(connection=connection, entity=entity, limit=limit)
        return self._read(self._stream("Preview", request)).table

    def open_statement(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        page_rows: int = 0,
        *,
        max_bytes: int | None = None,
    ) -> Statement:
        """Open a statement on the next address (tried again elsewhere as a streaming call
        would be); its pages are fetched from the replica that opened it."""
        request = pb.OpenStatementRequest(
            query=self._request(connection, sql, params, cache_ttl, max_rows, max_bytes),
            page_rows=page_rows,
        )
        deadline = self._deadline()
        endpoint = self._rotation()
        attempt = 0
        while True:
            stub = endpoint(attempt).statements
            try:
                first = stub.OpenStatement(
                    request, timeout=self._left(deadline), metadata=self._metadata
                )
            except grpc.RpcError as error:
                if attempt >= self.retries or not _retryable(error):
                    raise _translate(error, self._target) from None
                attempt += 1
                continue
            return Statement(self, stub, first, page_rows)

    # -- administration: ConnectionService (admin role), CatalogService (developer) --------
    #
    # Answers are the API's own messages (fabric.v1.platform_pb2): a connection shows its
    # settings and `has_password`, never a password. The caller's token says who acts;
    # the audit records its subject.

    # The control plane is the platform (one address, or a Service in front of its
    # replicas): administration goes to the first address the client was given.

    def _connections(self) -> Any:
        return admin_grpc.ConnectionServiceStub(self._endpoints[0].channel)

    def _catalog(self) -> Any:
        return admin_grpc.CatalogServiceStub(self._endpoints[0].channel)

    def create_connection(
        self,
        name: str,
        kind: str,
        settings: Mapping[str, SettingValue],
        *,
        password: str | None = None,
        stage: str = ALL_STAGES,
        verify: bool = True,
    ) -> admin_pb.Connection:
        """Register a connection with `settings` for `stage` (`*`: every stage). With
        `verify` (the default) the gateway first connects with them and stores nothing
        if that fails."""
        config = admin_pb.StageConfig(
            stage=stage, settings=settings_from_mapping(settings), password=password
        )
        request = admin_pb.CreateConnectionRequest(
            name=name, kind=kind, stages=[config], verify=verify
        )
        answer: admin_pb.Connection = self._unary(self._connections().CreateConnection, request)
        return answer

    def get_connection(self, name: str) -> admin_pb.Connection:
        request = admin_pb.GetConnectionRequest(name=name)
        answer: admin_pb.Connection = self._unary(self._connections().GetConnection, request)
        return answer

    def list_connections(self) -> list[admin_pb.Connection]:
        request = admin_pb.ListConnectionsRequest()
        return list(self._unary(self._connections().ListConnections, request).connections)

    def update_connection(
        self,
        name: str,
        *,
        stage: str = ALL_STAGES,
        settings: Mapping[str, SettingValue] | None = None,
        password: str | None = None,
        clear_password: bool = False,
        remove_stages: Sequence[str] = (),
        expected_version: int | None = None,
        verify: bool = False,
    ) -> admin_pb.Connection:
        """Replace `stage`'s settings and/or password, clear its password, or remove
        stages; `expected_version` applies the change only at that version."""
        stages = []
        if settings or password is not None:
            stages.append(
                admin_pb.StageConfig(
                    stage=stage, settings=settings_from_mapping(settings or {}), password=password
                )
            )
        request = admin_pb.UpdateConnectionRequest(
            name=name,
            expected_version=expected_version,
            stages=stages,
            remove_stages=list(remove_stages),
            clear_password_stages=[stage] if clear_password else [],
            verify=verify,
        )
        answer: admin_pb.Connection = self._unary(self._connections().UpdateConnection, request)
        return answer

    def delete_connection(self, name: str, *, expected_version: int | None = None) -> int:
        """Delete a connection, its selection and its secrets; the number of secrets removed."""
        request = admin_pb.DeleteConnectionRequest(name=name, expected_version=expected_version)
        return int(self._unary(self._connections().DeleteConnection, request).secrets_removed)

    def test_connection(self, name: str, stage: str = "") -> admin_pb.TestConnectionResponse:
        """Connect with `stage`'s settings (empty: the token's stage) and run a trivial query."""
        request = admin_pb.TestConnectionRequest(name=name, stage=stage)
        answer: admin_pb.TestConnectionResponse = self._unary(
            self._connections().TestConnection, request
        )
        return answer

    def list_audit(self, connection: str = "", limit: int = 0) -> list[admin_pb.AuditEvent]:
        """Administrative changes, newest first (`limit` 0: 100)."""
        request = admin_pb.ListAuditRequest(connection=connection, limit=limit)
        return list(self._unary(self._connections().ListAudit, request).events)

    def discover(
        self, connection: str, schemas: Sequence[str] = (), stage: str = ""
    ) -> list[admin_pb.Table]:
        """The source's tables and views with columns and keys; selects nothing."""
        request = admin_pb.DiscoverRequest(
            connection=connection, stage=stage, schemas=list(schemas)
        )
        return list(self._unary(self._catalog().Discover, request).tables)

    def select(
        self,
        connection: str,
        table: str,
        columns: Sequence[str] = (),
        entity_name: str = "",
        stage: str = "",
    ) -> admin_pb.SelectResponse:
        """Select `table` (`schema.table`, or a name found in one schema) for apps:
        `columns` (empty: all; the primary key always comes along) under `entity_name`."""
        choice = admin_pb.TableSelection(
            table=table, columns=list(columns), entity_name=entity_name
        )
        request = admin_pb.SelectRequest(connection=connection, stage=stage, tables=[choice])
        answer: admin_pb.SelectResponse = self._unary(self._catalog().Select, request)
        return answer

    def select_all(
        self, connection: str, schemas: Sequence[str] = (), stage: str = ""
    ) -> admin_pb.SelectResponse:
        """Select every table and view (of `schemas`, or all)."""
        request = admin_pb.SelectRequest(
            connection=connection, stage=stage, all_tables=True, schemas=list(schemas)
        )
        answer: admin_pb.SelectResponse = self._unary(self._catalog().Select, request)
        return answer

    def unselect(self, connection: str, entities: Sequence[str]) -> int:
        """Remove entities from the selection; the new catalog version."""
        request = admin_pb.UnselectRequest(connection=connection, entities=list(entities))
        return int(self._unary(self._catalog().Unselect, request).catalog_version)

    def list_entities(self, connection: str) -> admin_pb.ListEntitiesResponse:
        """The selected entities and the catalog version."""
        request = admin_pb.ListEntitiesRequest(connection=connection)
        answer: admin_pb.ListEntitiesResponse = self._unary(self._catalog().ListEntities, request)
        return answer

    def refresh(self, connection: str, stage: str = "") -> admin_pb.RefreshResponse:
        """Re-read the selected tables; the drift found and the catalog versions."""
        request = admin_pb.RefreshRequest(connection=connection, stage=stage)
        answer: admin_pb.RefreshResponse = self._unary(self._catalog().Refresh, request)
        return answer

    def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()

    def __enter__(self) -> FabricClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
