"""The Python client: SQL and parameters in, `pyarrow` tables and readers out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pyarrow as pa

from fabric.api.platform_service import settings_from_mapping
from fabric.api.status import ERROR_CODE_KEY, SQLSTATE_KEY, error_from_rpc
from fabric.errors import FabricError, GatewayUnavailable
from fabric.model import ALL_STAGES, SettingValue
from fabric.proto_values import params_to_proto
from fabric.results.ipc import decode_page, open_ipc_stream
from fabric.v1 import platform_pb2 as admin_pb
from fabric.v1 import platform_pb2_grpc as admin_grpc
from fabric.v1 import query_pb2 as pb
from fabric.v1 import query_pb2_grpc as pb_grpc

__all__ = ["FabricClient", "QueryResult", "ResultStream", "ResultSummary", "Statement"]

MAX_MESSAGE = 256 << 20


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
        return GatewayUnavailable(
            f"cannot reach the Fabric gateway at {target} ({call.details() or 'unavailable'})"
        )
    return error_from_rpc(call.code(), call.details() or "", code, trailing.get(SQLSTATE_KEY))


class _Stream:
    """Pulls ResultChunks, hands their IPC bytes to pyarrow, keeps the summary."""

    def __init__(self, call: Iterator[pb.ResultChunk], target: str) -> None:
        self._call = call
        self._target = target
        self.summary: ResultSummary | None = None
        self.chunks: Iterator[bytes] = self._pull()

    def _pull(self) -> Iterator[bytes]:
        try:
            for chunk in self._call:
                # The summary rides on the last chunk, whose bytes end the IPC stream:
                # the reader stops right after them, so take the summary first.
                if chunk.HasField("summary"):
                    self.summary = ResultSummary.of(chunk.summary)
                if chunk.arrow_ipc:
                    yield chunk.arrow_ipc
        except grpc.RpcError as error:
            raise _translate(error, self._target) from None

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

    def __init__(self, client: FabricClient, first: pb.Page, page_rows: int = 0) -> None:
        self._client = client
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
            self._client._stub.Fetch, pb.FetchRequest(statement_id=self.id, page_rows=page_rows)
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
                self._client._stub.CloseStatement, pb.CloseStatementRequest(statement_id=self.id)
            )

    def __enter__(self) -> Statement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FabricClient:
    """`FabricClient("127.0.0.1:50051")`; errors are the gateway's own FabricError classes
    (QueryRejected, NotFound, SourceUnavailable, ...)."""

    def __init__(
        self,
        address: str,
        token: str | None = None,
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        tls_ca: bytes | None = None,
        tls_cert: bytes | None = None,
        tls_key: bytes | None = None,
        tls: bool = False,
        tls_server_name: str | None = None,
    ) -> None:
        """`tls_ca` (PEM) trusts the gateway's CA; `tls_cert`/`tls_key` are the client's
        own certificate for mutual TLS; `tls=True` alone uses the system's roots;
        `tls_server_name` is the name the gateway's certificate must carry when it is
        not the address's host (an IP address, a tunnel)."""
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if tls or tls_ca or tls_cert:
            credentials = grpc.ssl_channel_credentials(tls_ca, tls_key, tls_cert)
            self._channel = grpc.secure_channel(address, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(address, options=options)
        self._target = address
        self._stub = pb_grpc.QueryServiceStub(self._channel)
        auth = (("authorization", f"Bearer {token}"),) if token else ()
        self._metadata = (*auth, *metadata)
        self._timeout = timeout

    def _request(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None,
        cache_ttl: int,
        max_rows: int | None,
    ) -> pb.ExecuteRequest:
        return pb.ExecuteRequest(
            connection=connection,
            sql=sql,
            params=params_to_proto(params),
            cache_ttl_seconds=cache_ttl,
            max_rows=max_rows,
        )

    def _start(self, method: Any, request: Any) -> Any:
        """Call a stub method with this client's timeout and metadata."""
        return method(request, timeout=self._timeout, metadata=self._metadata)

    def _unary(self, method: Any, request: Any) -> Any:
        try:
            return self._start(method, request)
        except grpc.RpcError as error:
            raise _translate(error, self._target) from None

    def _read(self, call: Iterator[pb.ResultChunk]) -> QueryResult:
        stream = _Stream(call, self._target)
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
    ) -> QueryResult:
        """The whole result and its summary (rows, truncated, from_cache, time spent)."""
        request = self._request(connection, sql, params, cache_ttl, max_rows)
        return self._read(self._start(self._stub.Execute, request))

    def query(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
    ) -> pa.Table:
        return self.execute(connection, sql, params, cache_ttl, max_rows).table

    def query_batches(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
    ) -> pa.RecordBatchReader:
        """Stream the result batch by batch as it arrives."""
        request = self._request(connection, sql, params, cache_ttl, max_rows)
        stream = _Stream(self._start(self._stub.Execute, request), self._target)
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
    ) -> ResultStream:
        """The result as it arrives, with its summary at the end (see ResultStream).
        Returns once the gateway has sent the result's schema."""
        request = self._request(connection, sql, params, cache_ttl, max_rows)
        return ResultStream(_Stream(self._start(self._stub.Execute, request), self._target))

    def preview(self, connection: str, entity: str, limit: int = 0) -> pa.Table:
        request = pb.PreviewRequest(connection=connection, entity=entity, limit=limit)
        return self._read(self._start(self._stub.Preview, request)).table

    def open_statement(
        self,
        connection: str,
        sql: str,
        params: Mapping[str, Any] | None = None,
        cache_ttl: int = 0,
        max_rows: int | None = None,
        page_rows: int = 0,
    ) -> Statement:
        request = pb.OpenStatementRequest(
            query=self._request(connection, sql, params, cache_ttl, max_rows), page_rows=page_rows
        )
        return Statement(self, self._unary(self._stub.OpenStatement, request), page_rows)

    # -- administration: ConnectionService (admin role), CatalogService (developer) --------
    #
    # Answers are the API's own messages (fabric.v1.platform_pb2): a connection shows its
    # settings and `has_password`, never a password. The caller's token says who acts;
    # the audit records its subject.

    def _connections(self) -> Any:
        return admin_grpc.ConnectionServiceStub(self._channel)

    def _catalog(self) -> Any:
        return admin_grpc.CatalogServiceStub(self._channel)

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
        self._channel.close()

    def __enter__(self) -> FabricClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
