"""The gateway server: grpc.aio with health, reflection, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from connectors.workers import CONTROL
from fabric.api.access import AccessLogInterceptor
from fabric.api.admin_service import AdminServicer, RunningQueryAdmin
from fabric.api.auth import LOCAL_ADMIN, AuthInterceptor, RefusalRecorder, refusing_apps
from fabric.api.flight.service import FlightSqlService
from fabric.api.http.api import rest_app
from fabric.api.http.endpoint import Services
from fabric.api.http.history import QueryHistory
from fabric.api.http.server import HttpServer
from fabric.api.platform_service import CatalogServicer, ConnectionServicer
from fabric.api.query_service import ContextProvider, Execute, QueryServicer
from fabric.api.status import abort_with
from fabric.api.wire import add_query_service, guarded_handler
from fabric.catalog import audit
from fabric.catalog.metadata.store import MetadataStore
from fabric.catalog.serialization import utc_now
from fabric.config import Settings
from fabric.context import RequestContext
from fabric.errors import (
    FabricError,
    FailedPrecondition,
    GatewayUnavailable,
    InvalidArgument,
    PermissionDenied,
)
from fabric.messaging.platform_events import Announcements
from fabric.observability.access import AccessLog
from fabric.platform.departure import EnginePurger, StaleMetadataSweeper
from fabric.platform.plane import Platform
from fabric.query.engine import QueryEngine
from fabric.query.lanes import awaitable
from fabric.security.authz import TokenVerifierLike
from fabric.security.signin import SignInExchange
from fabric.v1 import admin_pb2, admin_pb2_grpc, platform_pb2, platform_pb2_grpc, query_pb2

log = logging.getLogger(__name__)

ENGINE_CLOSE_WAIT = 15.0
"""Seconds `Gateway.stop` waits for the engine to close its sources."""

QUERY_SERVICE = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
CONNECTION_SERVICE = platform_pb2.DESCRIPTOR.services_by_name["ConnectionService"].full_name
CATALOG_SERVICE = platform_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
SERVICES = (QUERY_SERVICE, CONNECTION_SERVICE, CATALOG_SERVICE, ADMIN_SERVICE)
PLATFORM_SERVICES = (CONNECTION_SERVICE, CATALOG_SERVICE)


def channel_options(settings: Settings) -> list[tuple[str, Any]]:
    """Message-size limits raised deliberately on both ends: a chunk is at most
    max_message_bytes of IPC plus framing; a single oversized row may go beyond it."""
    limit = max(settings.max_message_bytes * 4, 64 << 20)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
    ]


SERVER_OPTIONS: list[tuple[str, Any]] = [
    # grpc binds with SO_REUSEPORT by default: a second gateway on a port in use would
    # start, and the kernel would split the calls between the two processes. Refuse.
    ("grpc.so_reuseport", 0),
]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate and key are configured; mutual TLS when a client CA is too."""
    if not settings.tls:
        return None
    try:
        cert = Path(settings.tls_cert).read_bytes()
        key = Path(settings.tls_key).read_bytes()
        client_ca = Path(settings.tls_client_ca).read_bytes() if settings.tls_client_ca else None
    except OSError as error:
        raise InvalidArgument(f"cannot read a TLS file: {error.filename}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def is_loopback(address: str) -> bool:
    """Whether a listen address (host:port, [v6]:port) only accepts local connections."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard: assume reachable from elsewhere


SHUTTING_DOWN = GatewayUnavailable(
    "the gateway is shutting down and takes no new calls; retry the call: another "
    "replica, or this gateway once it is back, will answer it",
    retry_after=1.0,
)
"""What a call that arrives while the gateway drains gets (UNAVAILABLE: retry, with the
hint in the trailing metadata as well)."""

STARTING = GatewayUnavailable(
    "this runtime replica is not ready yet (loading metadata, applying platform events); "
    "retry the call: another replica, or this one once it is ready, will answer it"
)
"""What a call that arrives before a replica is ready gets (UNAVAILABLE: retry)."""


class CallAdmission:
    """The calls in flight, counted, so shutdown can wait for them: while the gateway
    drains, a new call is refused at once with `SHUTTING_DOWN` instead of being cut off
    when the server stops (which a client sees as CANCELLED). Before a runtime replica is
    ready (`not_ready`), a call is refused with `STARTING`."""

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self.not_ready = False
        self._idle = asyncio.Event()

    def __call__(self, context: grpc.aio.ServicerContext) -> _AdmittedCall:
        return _AdmittedCall(self, context)

    @contextlib.asynccontextmanager
    async def admitted(self) -> AsyncIterator[None]:
        """One call of a door without a gRPC context (the REST API): refused with
        `SHUTTING_DOWN` or `STARTING` (raised), else counted while it runs."""
        if self.draining:
            raise SHUTTING_DOWN
        if self.not_ready:
            raise STARTING
        self.active += 1
        try:
            yield
        finally:
            self._left()

    async def drain(self, grace: float) -> None:
        """Refuse new calls from now on, and wait (at most `grace` seconds) until the
        calls in flight have ended."""
        self.draining = True
        if self.active:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()

    def _left(self) -> None:
        self.active -= 1
        if self.draining and not self.active:
            self._idle.set()


class _AdmittedCall:
    """One call inside `CallAdmission` (an async context manager)."""

    __slots__ = ("_admission", "_context")

    def __init__(self, admission: CallAdmission, context: grpc.aio.ServicerContext) -> None:
        self._admission = admission
        self._context = context

    async def __aenter__(self) -> None:
        if self._admission.draining:
            await abort_with(self._context, SHUTTING_DOWN)
        if self._admission.not_ready:
            await abort_with(self._context, STARTING)
        self._admission.active += 1

    async def __aexit__(self, *exc_info: object) -> None:
        self._admission._left()


def _always_admitted(
    _context: grpc.aio.ServicerContext,
) -> contextlib.AbstractAsyncContextManager[None]:
    return contextlib.nullcontext()


class CallGuardInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Every call's request decoded without tracebacks (`guarded_handler`) and, except
    health and reflection (which answer while the gateway drains), admitted by
    `admission`."""

    def __init__(self, admission: CallAdmission) -> None:
        self._admission = admission
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method
        guarded = self._handlers.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(details)
        if handler is None:
            return None
        service = method.lstrip("/").split("/", 1)[0]
        exempt = service in (health.SERVICE_NAME, reflection.SERVICE_NAME)
        guarded = guarded_handler(handler, method, _always_admitted if exempt else self._admission)
        self._handlers[method] = guarded
        return guarded


def refusal_recorder(store: MetadataStore) -> RefusalRecorder:
    """Writes a call refused for the caller's role to the audit trail: who (tenant,
    principal, stage, role) and which method; the request itself was never read."""

    def record(ctx: RequestContext, method: str, error: PermissionDenied) -> None:
        store.record_audit(
            audit.refused(
                utc_now(),
                ctx.tenant,
                ctx.principal,
                audit.CALL,
                "permission_denied",
                stage=ctx.stage,
                details={"method": method, "role": ctx.role.value},
            )
        )

    return record


class AnnouncingCatalogServicer(CatalogServicer):
    """CatalogService that announces committed selection changes as platform events.
    The change is committed before the announcement; if the event cannot be stored the
    caller gets `EventNotPublished` (which says so), and the event is retried."""

    def __init__(
        self, platform: Platform, context_provider: ContextProvider, announcements: Announcements
    ) -> None:
        super().__init__(platform, context_provider)
        self._announcements = announcements

    async def _announce(
        self, context: grpc.aio.ServicerContext, connection: str, stage: str | None, version: int
    ) -> None:
        try:
            ctx = self._context(context)
            await self._announcements.selection_changed(ctx.tenant, connection, stage, version)
        except FabricError as error:
            await abort_with(context, error)

    async def Select(
        self, request: platform_pb2.SelectRequest, context: grpc.aio.ServicerContext
    ) -> platform_pb2.SelectResponse:
        response = await super().Select(request, context)
        await self._announce(
            context, request.connection, request.stage or None, response.catalog_version
        )
        return response

    async def Unselect(
        self, request: platform_pb2.UnselectRequest, context: grpc.aio.ServicerContext
    ) -> platform_pb2.UnselectResponse:
        response = await super().Unselect(request, context)
        await self._announce(context, request.connection, None, response.catalog_version)
        return response


class Gateway:
    """One gRPC server in front of a QueryEngine (runtime) and the platform services
    (connections, catalog, audit), with health, reflection and metrics. It serves what it
    is given; `fabric.app` assembles it."""

    def __init__(
        self,
        engine: QueryEngine,
        platform: Platform,
        announcements: Announcements,
        purger: EnginePurger,
        stale_sweeper: StaleMetadataSweeper,
        *,
        context_provider: ContextProvider,
        verifier: TokenVerifierLike | None = None,
        execute: Execute | None = None,
        services: Collection[str] = SERVICES,
        serves_apps: bool = True,
        sign_in: SignInExchange | None = None,
        local_identity: RequestContext = LOCAL_ADMIN,
    ) -> None:
        """`context_provider` says who each call is; with a `verifier`, every call must
        carry a valid bearer token first (the provider is then `verified_context`).
        `serves_apps=False` (a platform whose apps go to their stage's replicas): every
        QueryService call of an app token is refused with PERMISSION_DENIED.

        Platform changes reach the runtime through `announcements` (the purger of
        `engine` among its local listeners); `stale_sweeper` runs while serving.
        `execute` runs Execute and Preview (default: the engine; a platform role passes
        the bus forwarder's). `services`: the gRPC services served (health always is);
        a runtime replica serves QueryService or none.

        The REST API (`start(http_address=...)`) calls the same engine, `execute`,
        platform and announcements; with a `verifier` its callers are verified bearer
        tokens, without one every call is `local_identity`. `sign_in` exchanges the
        portal's sign-in codes (None: only bearer tokens sign in).
        """
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise InvalidArgument(f"unknown services {sorted(unknown)}")
        self.engine = engine
        self.settings = engine.settings
        self.services = tuple(s for s in SERVICES if s in services)
        self._admission = CallAdmission()
        self._verifier = verifier
        self._refusals = refusal_recorder(platform.manager.store)
        self.access = AccessLog(self.settings.access_log)
        self._interceptors = self._call_interceptors()
        query_callers = context_provider if serves_apps else refusing_apps(context_provider)
        self._servicer = QueryServicer(engine, query_callers, execute)
        self.flight = FlightSqlService(engine, query_callers, execute)
        engine.metrics.add_snapshot(self.flight.snapshot)
        self.purger = purger
        self.announcements = announcements
        self.platform = platform
        self.stale_sweeper = stale_sweeper
        self._connection_servicer = ConnectionServicer(platform, context_provider)
        refreshing = dataclasses.replace(platform, listener=announcements.refreshes())
        self._catalog_servicer = AnnouncingCatalogServicer(
            refreshing, context_provider, announcements
        )
        self.running_queries = RunningQueryAdmin(engine.queries)
        """Running queries for administrators (any door); a platform with a bus sets its
        `cluster` (the stage's replicas)."""
        self._admin_servicer = AdminServicer(self.running_queries, context_provider)
        self.rest = Services(
            engine=engine,
            execute=engine.execute if execute is None else execute,
            platform=platform,
            refreshing=refreshing,
            announcements=announcements,
            admission=self._admission.admitted,
            verifier=verifier,
            local_identity=local_identity,
            refusals=self._refusals,
            sign_in=sign_in,
            history=QueryHistory(),
            max_body=self.settings.http_max_body,
            admin=self.running_queries,
            access=self.access,
        )
        self._http: HttpServer | None = None
        self.http_port: int | None = None
        self._stale_task: asyncio.Task[None] | None = None
        # The grpc.aio server belongs to the event loop that runs it: built in start().
        self._server: grpc.aio.Server | None = None
        self._flight_server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._sweeper: asyncio.Task[None] | None = None
        self._flight_sweeper: asyncio.Task[None] | None = None
        self.flight_port: int | None = None
        self._metrics_server: Any = None
        self._health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.metrics_host = "127.0.0.1"

    def _call_interceptors(self, protocol: str = "grpc") -> list[grpc.aio.ServerInterceptor]:
        """The interceptors of one server: the access log around everything (a refused
        call is logged too), authentication (an unauthenticated caller's request is never
        decoded; a verified caller refused for its role is on the audit trail), then the
        call guard. Each server gets its own guard (it caches handlers by method name);
        all share one admission."""
        return [
            AccessLogInterceptor(self.access, protocol),
            *(
                [AuthInterceptor(self._verifier, self._refusals, self.engine.metrics.auth_failure)]
                if self._verifier is not None
                else []
            ),
            CallGuardInterceptor(self._admission),
        ]

    async def start(
        self,
        address: str | None = None,
        *,
        metrics: bool = True,
        ready: bool = True,
        flight_address: str = "",
        http_address: str = "",
    ) -> int:
        """Listen on `address` (default FABRIC_LISTEN) and return the port; serve Arrow
        Flight SQL on `flight_address` when one is given (`flight_port` tells the port),
        and the REST API and portal on `http_address` (`http_port`).
        With `ready=False` (a runtime replica still starting), health says NOT_SERVING
        and calls are refused with UNAVAILABLE until `set_ready`."""
        address = address or self.settings.listen
        server = grpc.aio.server(
            options=[*channel_options(self.settings), *SERVER_OPTIONS],
            interceptors=self._interceptors,
        )
        if QUERY_SERVICE in self.services:
            add_query_service(self._servicer, server)
        if CONNECTION_SERVICE in self.services:
            platform_pb2_grpc.add_ConnectionServiceServicer_to_server(
                self._connection_servicer, server
            )
        if CATALOG_SERVICE in self.services:
            platform_pb2_grpc.add_CatalogServiceServicer_to_server(self._catalog_servicer, server)
        if ADMIN_SERVICE in self.services:
            admin_pb2_grpc.add_AdminServiceServicer_to_server(self._admin_servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        credentials = server_credentials(self.settings)
        try:
            if credentials is None:
                self.port = server.add_insecure_port(address)
            else:
                self.port = server.add_secure_port(address, credentials)
        except RuntimeError:  # grpc's "Failed to bind to address"
            self.port = 0
        if self.port == 0:
            raise FailedPrecondition(
                f"cannot listen on {address}: the address is in use (another `fabric serve`?) "
                "or not available on this machine; stop the other process or choose another "
                "address with --listen or FABRIC_LISTEN"
            )
        metrics_address = self.settings.metrics_address() if metrics else None
        if metrics_address is not None:
            # Before the gRPC server starts: a port in use stops start-up with nothing
            # running yet.
            host, wanted = metrics_address
            try:
                http_server, _thread = start_http_server(
                    wanted, host, registry=self.engine.metrics.registry
                )
            except OSError as error:
                raise FailedPrecondition(
                    f"cannot serve metrics on {host}:{wanted}: "
                    f"{error.strerror or type(error).__name__}; stop what uses that port or "
                    "set FABRIC_METRICS_PORT (or FABRIC_METRICS_LISTEN) to a free one "
                    "(FABRIC_METRICS_PORT=0: no metrics endpoint)"
                ) from None
            self._metrics_server = http_server
            self.metrics_port = http_server.server_port
            self.metrics_host = host
        self._server = server
        self._admission.not_ready = not ready
        if flight_address:
            self.flight_port = await self._start_flight(flight_address)
        if http_address:
            self._http = HttpServer(rest_app(self.rest), self.settings)
            self.http_port = await self._http.start(http_address)
        await server.start()
        if self.settings.health_listen:
            await self._start_health_only(self.settings.health_listen)
        await self.set_serving(ready)
        self._sweeper = asyncio.create_task(
            self.engine.open_statements.run_sweeper(self.settings.statement_sweep_interval)
        )
        self._stale_task = asyncio.create_task(
            self.stale_sweeper.run(self.settings.metadata_sweep_interval)
        )
        log.info("gateway listening on port %s", self.port)
        return self.port

    async def _start_health_only(self, address: str) -> None:
        """The same health service on a second, plain address (FABRIC_HEALTH_LISTEN):
        for probes that cannot speak TLS (the kubelet's gRPC probe). It serves health
        only; health says nothing about any tenant's data."""
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self.health_port = server.add_insecure_port(address)
        if self.health_port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        self._health_server = server

    async def _start_flight(self, address: str) -> int:
        """The Flight SQL server: its own port, the same interceptors, TLS and limits."""
        server = grpc.aio.server(
            options=channel_options(self.settings),
            interceptors=self._call_interceptors("flight_sql"),
        )
        self.flight.add_to_server(server)
        credentials = server_credentials(self.settings)
        if credentials is None:
            port: int = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address} for Flight SQL")
        self._flight_server = server
        await server.start()
        self._flight_sweeper = asyncio.create_task(
            self.flight.run_sweepers(self.settings.statement_sweep_interval)
        )
        log.info("Flight SQL listening on port %s", port)
        return port

    async def set_serving(self, serving: bool) -> None:
        """Report the served services (and the server, "") as SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in (*self.services, ""):
            await self._health.set(service, status)

    async def set_ready(self) -> None:
        """A gateway started with `ready=False` takes calls from now on (SERVING)."""
        self._admission.not_ready = False
        await self.set_serving(True)

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop_taking_calls(self) -> None:
        """Health says NOT_SERVING and a new call is refused with UNAVAILABLE and a retry
        hint; the calls in flight go on (`stop` waits for them)."""
        await self.set_serving(False)
        self._admission.draining = True

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls (`stop_taking_calls`), let running ones finish within `grace`
        seconds, then drop everything held in memory. The port is closed after `grace`
        whatever the calls do, and closing the engine is not waited for past
        ENGINE_CLOSE_WAIT: a driver call stuck on a source that stopped answering does not
        hold up the shutdown (its thread is a daemon)."""
        await self.stop_taking_calls()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self._admission.drain(grace)
        remaining = max(0.0, grace - (loop.time() - started))
        servers = [s for s in (self._server, self._flight_server) if s is not None]
        await asyncio.gather(
            *(server.stop(remaining) for server in servers),
            *([self._http.stop(remaining)] if self._http is not None else []),
        )
        if self._health_server is not None:
            await self._health_server.stop(0)
        for task in (self._sweeper, self._stale_task, self._flight_sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.flight.close_all()
        closing = CONTROL.submit(self.engine.close)
        done, _ = await asyncio.wait({awaitable(closing)}, timeout=ENGINE_CLOSE_WAIT)
        if not done:
            log.warning(
                "the query engine did not close within %ss (a source is not answering); "
                "going on without it",
                ENGINE_CLOSE_WAIT,
            )
