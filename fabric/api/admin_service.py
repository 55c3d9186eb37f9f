"""AdminService: the queries running now, listed and cancelled by an administrator of their
tenant. This process's own engine answers for itself; on a platform with a bus, every
runtime replica of the stage answers too (`fabric.messaging.admin_rpc`)."""

from __future__ import annotations

from dataclasses import dataclass

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


def admin_stage(requested: str | None, ctx: RequestContext) -> str:
    """The stage an administrator's call is about (default: the token's); an
    administrator administers every stage of the tenant (as its connections)."""
    require_role(ctx, Role.ADMIN)
    return subject_token(requested or ctx.stage, "stage")


@dataclass(frozen=True, slots=True)
class RunningListing:
    queries: list[RunningQueryView]
    """Oldest first."""
    replicas: list[str]
    """The replicas that answered."""
    truncated: bool
    """A replica had more running queries than one answer holds (it sent its oldest)."""


async def list_running(
    queries: QueryList,
    cluster: RunningQueriesClient | None,
    ctx: RequestContext,
    stage: str | None,
) -> RunningListing:
    """The tenant's queries running in `stage` (this process's, and with a `cluster`
    every runtime replica's). Both doors (gRPC AdminService, the REST API) call this."""
    stage = admin_stage(stage, ctx)
    views = {view.id: view for view in queries.list(ctx.tenant, stage)}
    replicas = {queries.replica}
    truncated = False
    if cluster is not None:
        gathered = await cluster.list(ctx.tenant, stage)
        replicas.update(gathered.replicas)
        truncated = gathered.truncated
        for view in gathered.queries:
            views.setdefault(view.id, view)
    ordered = sorted(views.values(), key=lambda view: view.started_at)
    return RunningListing(ordered, sorted(replicas), truncated)


async def cancel_running(
    queries: QueryList,
    cluster: RunningQueriesClient | None,
    ctx: RequestContext,
    stage: str | None,
    query_id: str,
) -> str:
    """Cancel the tenant's running query `query_id` where it runs; the replica that ran
    it. NotFound when it is not running (any more)."""
    stage = admin_stage(stage, ctx)
    replica = replica_of(query_id)
    if replica is None:
        raise InvalidArgument(
            "id is not a running query's id (<replica>:<16 hex digits>); take it from "
            "ListRunningQueries"
        )
    if replica == queries.replica:
        if not queries.cancel(query_id, ctx.tenant):
            raise NotFound(f"query {query_id!r} is not running")
        return replica
    if cluster is None:
        raise NotFound(f"query {query_id!r} is not running here")
    return await cluster.cancel(ctx.tenant, stage, query_id)


class AdminServicer(pb_grpc.AdminServiceServicer):  # type: ignore[misc]
    """`cluster` (set by a platform process with a bus) reaches the runtime replicas."""

    def __init__(
        self,
        queries: QueryList,
        context_provider: ContextProvider,
        cluster: RunningQueriesClient | None = None,
    ) -> None:
        self.queries = queries
        self._context = context_provider
        self.cluster = cluster

    @unary_rpc
    async def ListRunningQueries(
        self,
        request: pb.ListRunningQueriesRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> pb.ListRunningQueriesResponse:
        listing = await list_running(self.queries, self.cluster, ctx, request.stage)
        return pb.ListRunningQueriesResponse(
            queries=[running_query_proto(view) for view in listing.queries],
            replicas=listing.replicas,
            truncated=listing.truncated,
        )

    @unary_rpc
    async def CancelQuery(
        self,
        request: pb.CancelQueryRequest,
        ctx: RequestContext,
        context: grpc.aio.ServicerContext,
    ) -> pb.CancelQueryResponse:
        replica = await cancel_running(self.queries, self.cluster, ctx, request.stage, request.id)
        return pb.CancelQueryResponse(replica=replica)
