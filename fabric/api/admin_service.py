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


class RunningQueryAdmin:
    """Running queries for an administrator of a tenant, whatever the door (gRPC here; a
    REST door calls the same methods): this process's own, and with `cluster` (set by a
    platform process with a bus) the runtime replicas' of the stage."""

    def __init__(self, queries: QueryList, cluster: RunningQueriesClient | None = None) -> None:
        self.queries = queries
        self.cluster = cluster

    @staticmethod
    def stage_of(requested: str, ctx: RequestContext) -> str:
        """The stage asked about (default: the caller's); PermissionDenied below admin.
        An administrator administers every stage of the tenant, as its connections."""
        require_role(ctx, Role.ADMIN)
        return subject_token(requested or ctx.stage, "stage")

    async def list(
        self, ctx: RequestContext, stage: str = ""
    ) -> tuple[list[RunningQueryView], list[str], bool]:
        """The tenant's queries in `stage`, oldest first; the replicas that answered; and
        whether a replica listed only its oldest."""
        stage = self.stage_of(stage, ctx)
        views = {view.id: view for view in self.queries.list(ctx.tenant, stage)}
        replicas = {self.queries.replica}
        truncated = False
        if self.cluster is not None:
            gathered = await self.cluster.list(ctx.tenant, stage)
            replicas.update(gathered.replicas)
            truncated = gathered.truncated
            for view in gathered.queries:
                views.setdefault(view.id, view)
        ordered = sorted(views.values(), key=lambda view: view.started_at)
        return ordered, sorted(replicas), truncated

    async def cancel(self, ctx: RequestContext, query_id: str, stage: str = "") -> str:
        """Cancel the tenant's query `query_id`; the replica that runs it. NotFound when
        it is not running (or not the tenant's), InvalidArgument for a malformed id."""
        stage = self.stage_of(stage, ctx)
        replica = replica_of(query_id)
        if replica is None:
            raise InvalidArgument(
                "id is not a running query's id (<replica>:<16 hex digits>); take it from "
                "the list of running queries"
            )
        if replica == self.queries.replica:
            if not self.queries.cancel(query_id, ctx.tenant):
                raise NotFound(f"query {query_id!r} is not running")
            return replica
        if self.cluster is None:
            raise NotFound(f"query {query_id!r} is not running here")
        return await self.cluster.cancel(ctx.tenant, stage, query_id)


class AdminServicer(pb_grpc.AdminServiceServicer):  # type: ignore[misc]
    """AdminService over `RunningQueryAdmin`."""

    def __init__(self, admin: RunningQueryAdmin, context_provider: ContextProvider) -> None:
        self._admin = admin
        self._context = context_provider

    @unary_rpc
    async def ListRunningQueries(
        self,
        request: pb.ListRunningQueriesRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> pb.ListRunningQueriesResponse:
        views, replicas, truncated = await self._admin.list(ctx, request.stage)
        return pb.ListRunningQueriesResponse(
            queries=[running_query_proto(view) for view in views],
            replicas=replicas,
            truncated=truncated,
        )

    @unary_rpc
    async def CancelQuery(
        self,
        request: pb.CancelQueryRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> pb.CancelQueryResponse:
        return pb.CancelQueryResponse(
            replica=await self._admin.cancel(ctx, request.id, request.stage)
        )
