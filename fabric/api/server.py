"""The gateway server: grpc.aio with health, reflection, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from fabric.api.auth import AuthInterceptor, verified_context
from fabric.api.query_service import ContextProvider, QueryServicer, default_context
from fabric.catalog.store import MetadataStore
from fabric.config import Settings
from fabric.errors import InvalidArgument
from fabric.query.engine import QueryEngine
from fabric.security.authz import TokenVerifierLike
from fabric.v1 import query_pb2, query_pb2_grpc

log = logging.getLogger(__name__)

QUERY_SERVICE = query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


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
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def is_loopback(address: str) -> bool:
    """Whether a listen address (host:port, [v6]:port) only accepts local connections."""
    host = address.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or a wildcard: assume reachable from elsewhere


class Gateway:
    """One runtime gateway: a QueryEngine behind a gRPC server."""

    def __init__(self, engine: QueryEngine, *, verifier: TokenVerifierLike | None = None,
                 context_provider: ContextProvider | None = None) -> None:
        """With a `verifier`, every call must carry a valid bearer token and the identity
        comes from it; without one, `context_provider` (default: the default tenant)."""
        self.engine = engine
        self.settings = engine.settings
        self._interceptors = [AuthInterceptor(verifier)] if verifier is not None else []
        if context_provider is None:
            context_provider = verified_context if verifier is not None else default_context
        self._servicer = QueryServicer(engine, context_provider)
        # The grpc.aio server belongs to the event loop that runs it: built in start().
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._sweeper: asyncio.Task[None] | None = None
        self._metrics_server: Any = None
        self.port: int | None = None
        self.metrics_port: int | None = None

    @classmethod
    def build(cls, settings: Settings, store: MetadataStore, **engine_options: Any) -> Gateway:
        """A gateway as configured: authentication from settings (FABRIC_AUTH)."""
        from fabric.wiring import token_verifier

        return cls(QueryEngine(store, settings, **engine_options),
                   verifier=token_verifier(settings))

    async def start(self, address: str | None = None, *, metrics: bool = True) -> int:
        address = address or self.settings.listen
        server = grpc.aio.server(options=channel_options(self.settings),
                                 interceptors=self._interceptors)
        query_pb2_grpc.add_QueryServiceServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (QUERY_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        credentials = server_credentials(self.settings)
        if credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self._server = server
        await server.start()
        for service in (QUERY_SERVICE, ""):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._sweeper = asyncio.create_task(
            self.engine.open_statements.run_sweeper(self.settings.statement_sweep_interval))
        if metrics and self.settings.metrics_port:
            server, _thread = start_http_server(self.settings.metrics_port, "127.0.0.1",
                                                registry=self.engine.metrics.registry)
            self._metrics_server = server
            self.metrics_port = server.server_port
        log.info("gateway listening on port %s", self.port)
        return self.port

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking calls, let running ones finish within `grace` seconds, then drop
        everything held in memory."""
        for service in (QUERY_SERVICE, ""):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(grace)
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.close)
