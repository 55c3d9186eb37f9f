"""The gateway server: grpc.aio with health, reflection, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from connectors.workers import CONTROL
from fabric.api.auth import AuthInterceptor
from fabric.api.platform_service import CatalogServicer, ConnectionServicer
from fabric.api.query_service import ContextProvider, Execute, QueryServicer
from fabric.api.status import abort_with
from fabric.api.wire import add_query_service, guarded_handler
from fabric.config import Settings
from fabric.errors import FabricError, InvalidArgument, SourceUnavailable
from fabric.messaging.platform_events import Announcements
from fabric.platform.departure import EnginePurger, StaleMetadataSweeper
from fabric.platform.plane import Platform
from fabric.query.engine import QueryEngine
from fabric.query.lanes import awaitable
from fabric.security.authz import TokenVerifierLike
from fabric.v1 import platform_pb2, platform_pb2_grpc, query_pb2

log = logging.getLogger(__name__)

ENGINE_CLOSE_WAIT = 15.0
"""Seconds `Gateway.stop` waits for the engine to close its sources."""

QUERY_SERVICE = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name
CONNECTION_SERVICE = platform_pb2.DESCRIPTOR.services_by_name["ConnectionService"].full_name
CATALOG_SERVICE = platform_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name
SERVICES = (QUERY_SERVICE, CONNECTION_SERVICE, CATALOG_SERVICE)
PLATFORM_SERVICES = (CONNECTION_SERVICE, CATALOG_SERVICE)


def channel_options(settings: Settings) -> list[tuple[str, Any]]:
    """Message-size limits raised deliberately on both ends: a chunk is at most
    max_message_bytes of IPC plus framing; a single oversized row may go beyond it."""
    limit = max(settings.max_message_bytes * 4, 64 << 20)
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
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


SHUTTING_DOWN = SourceUnavailable(
    "the gateway is shutting down and takes no new calls; retry the call: another "
    "replica, or this gateway once it is back, will answer it"
)
"""What a call that arrives while the gateway drains gets (UNAVAILABLE: retry)."""


class CallAdmission:
    """The calls in flight, counted, so shutdown can wait for them: while the gateway
    drains, a new call is refused at once with `SHUTTING_DOWN` instead of being cut off
    when the server stops (which a client sees as CANCELLED)."""

    def __init__(self) -> None:
        self.active = 0
        self.draining = False
        self._idle = asyncio.Event()

    def __call__(self, context: grpc.aio.ServicerContext) -> _AdmittedCall:
        return _AdmittedCall(self, context)

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
    ) -> None:
        """`context_provider` says who each call is; with a `verifier`, every call must
        carry a valid bearer token first (the provider is then `verified_context`).

        Platform changes reach the runtime through `announcements` (the purger of
        `engine` among its local listeners); `stale_sweeper` runs while serving.
        `execute` runs Execute and Preview (default: the engine; a platform role passes
        the bus forwarder's). `services`: the gRPC services served (health always is);
        a runtime replica serves QueryService or none.
        """
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise InvalidArgument(f"unknown services {sorted(unknown)}")
        self.engine = engine
        self.settings = engine.settings
        self.services = tuple(s for s in SERVICES if s in services)
        self._admission = CallAdmission()
        # Authentication first: an unauthenticated caller's request is never decoded.
        self._interceptors: list[grpc.aio.ServerInterceptor] = [
            *([AuthInterceptor(verifier)] if verifier is not None else []),
            CallGuardInterceptor(self._admission),
        ]
        self._servicer = QueryServicer(engine, context_provider, execute)
        self.purger = purger
        self.announcements = announcements
        self.platform = platform
        self.stale_sweeper = stale_sweeper
        self._connection_servicer = ConnectionServicer(platform, context_provider)
        refreshing = dataclasses.replace(platform, listener=announcements.refreshes())
        self._catalog_servicer = AnnouncingCatalogServicer(
            refreshing, context_provider, announcements
        )
        self._stale_task: asyncio.Task[None] | None = None
        # The grpc.aio server belongs to the event loop that runs it: built in start().
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._sweeper: asyncio.Task[None] | None = None
        self._metrics_server: Any = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    async def start(self, address: str | None = None, *, metrics: bool = True) -> int:
        address = address or self.settings.listen
        server = grpc.aio.server(
            options=channel_options(self.settings), interceptors=self._interceptors
        )
        if QUERY_SERVICE in self.services:
            add_query_service(self._servicer, server)
        if CONNECTION_SERVICE in self.services:
            platform_pb2_grpc.add_ConnectionServiceServicer_to_server(
                self._connection_servicer, server
            )
        if CATALOG_SERVICE in self.services:
            platform_pb2_grpc.add_CatalogServiceServicer_to_server(self._catalog_servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*self.services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        credentials = server_credentials(self.settings)
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self._server = server
        await server.start()
        await self.set_serving(True)
        self._sweeper = asyncio.create_task(
            self.engine.open_statements.run_sweeper(self.settings.statement_sweep_interval)
        )
        self._stale_task = asyncio.create_task(
            self.stale_sweeper.run(self.settings.metadata_sweep_interval)
        )
        if metrics and self.settings.metrics_port:
            server, _thread = start_http_server(
                self.settings.metrics_port, "127.0.0.1", registry=self.engine.metrics.registry
            )
            self._metrics_server = server
            self.metrics_port = server.server_port
        log.info("gateway listening on port %s", self.port)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        """Report the served services (and the server, "") as SERVING or NOT_SERVING."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in (*self.services, ""):
            await self._health.set(service, status)

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
        if self._server is not None:
            await self._server.stop(max(0.0, grace - (loop.time() - started)))
        for task in (self._sweeper, self._stale_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        closing = CONTROL.submit(self.engine.close)
        done, _ = await asyncio.wait({awaitable(closing)}, timeout=ENGINE_CLOSE_WAIT)
        if not done:
            log.warning(
                "the query engine did not close within %ss (a source is not answering); "
                "going on without it",
                ENGINE_CLOSE_WAIT,
            )
