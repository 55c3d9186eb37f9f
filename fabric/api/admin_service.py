"""AdminService: the queries running now, listed and cancelled by an administrator of their
tenant. This process's own engine answers for itself; on a platform with a bus, every
runtime replica of the stage answers too (`fabric.messaging.admin_rpc`)."""

from __future__ import annotations

import grpc

from fabric.api.query_service import ContextProvider, unary_rpc
from fabric.context import RequestContext, Role
from fabric.errors import InvalidArgument, NotFound
from fabric.messaging.admin_rpc import RunningQueriesClient
from fabric.messaging.bus import subject_token
from fabric.query.running import QueryList, RunningQueryView, replica_of
from fabric.security.authz import require_role
from fabric.v1 import admin_pb2 as pb
from fabric.v1 import admin_pb2_grpc as pb_grpc


def running_query_proto(view: RunningQueryView) -> pb.RunningQuery:
    return pb.RunningQuery(
        id=view.id,
        request_id=view.request_id,
        tenant=view.tenant,
        stage=view.stage,
        principal=view.principal,
        connection=view.connection,
        sql_shape=view.sql_shape,
        fingerprint=view.fingerprint,
        protocol=view.protocol,
        kind=view.kind,
        phase=view.phase,
        started_at=view.started_at,
        elapsed_seconds=view.elapsed,
        rows=view.rows,
        replica=view.replica,
    )


class AdminServicer(pb_grpc.AdminServiceServicer):  # type: ignore[misc]
    """`cluster` (set by a platform process with a bus) reaches the runtime replicas."""

    def __init__(
        self,
        queries: QueryList,
        context_provider: ContextProvider,
        cluster: RunningQueriesClient | None = None,
    ) -> None:
        self._queries = queries
        self._context = context_provider
        self.cluster = cluster

    @staticmethod
    def _stage(requested: str, ctx: RequestContext) -> str:
        # An administrator administers every stage of the tenant (as its connections).
        require_role(ctx, Role.ADMIN)
        return subject_token(requested or ctx.stage, "stage")

    @unary_rpc
    async def ListRunningQueries(
        self,
        request: pb.ListRunningQueriesRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> pb.ListRunningQueriesResponse:
        stage = self._stage(request.stage, ctx)
        views = {view.id: view for view in self._queries.list(ctx.tenant, stage)}
        replicas = {self._queries.replica}
        if self.cluster is not None:
            gathered = await self.cluster.list(ctx.tenant, stage)
            replicas.update(gathered.replicas)
            for view in gathered.queries:
                views.setdefault(view.id, view)
        ordered = sorted(views.values(), key=lambda view: view.started_at)
        return pb.ListRunningQueriesResponse(
            queries=[running_query_proto(view) for view in ordered], replicas=sorted(replicas)
        )

    @unary_rpc
    async def CancelQuery(
        self,
        request: pb.CancelQueryRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> pb.CancelQueryResponse:
        stage = self._stage(request.stage, ctx)
        replica = replica_of(request.id)
        if replica is None:
            raise InvalidArgument(
                "id is not a running query's id (<replica>:<16 hex digits>); take it from "
                "ListRunningQueries"
            )
        if replica == self._queries.replica:
            if not self._queries.cancel(request.id, ctx.tenant):
                raise NotFound(f"query {request.id!r} is not running")
            return pb.CancelQueryResponse(replica=replica)
        if self.cluster is None:
            raise NotFound(f"query {request.id!r} is not running here")
        return pb.CancelQueryResponse(
            replica=await self.cluster.cancel(ctx.tenant, stage, request.id)
        )
