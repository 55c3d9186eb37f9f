"""One process per role: what `fabric serve --role all|platform|runtime` assembles.

    all       (embedded default) both planes in one gateway; queries run on its own
              engine and platform changes purge it in-process. With FABRIC_NATS_URL set
              the changes are also published as platform events on JetStream, so runtime
              replicas elsewhere apply them; queries still run here.
    platform  the control plane: ConnectionService and CatalogService (changes published
              as platform events), and what developers need from a stage: QueryService
              for developer and admin tokens, whose Execute and Preview are forwarded
              over NATS to the runtime replicas of the caller's stage (the stage in the
              verified token). Apps do not come here: they query their stage's replicas
              directly, and an app token's query is refused (PERMISSION_DENIED) unless
              FABRIC_PLATFORM_APP_QUERIES lets the platform forward it too.
              OpenStatement, Fetch and CloseStatement run on this process's own engine:
              an open statement lives in one process's memory, and NATS request/reply
              cannot pin a client to a replica across calls. Needs FABRIC_NATS_URL.
    runtime   one stateless replica of a stage (`--stage`), the door apps use: QueryService
              and gRPC health on --listen (default FABRIC_LISTEN), serving only tokens of
              its stage (another stage's token: PERMISSION_DENIED). A QueryEngine on the
              same metadata store and key ring / Vault as the platform (it only reads
              metadata); it also serves the queries the platform forwards over NATS in
              the stage's queue group, and applies platform events (purges) from a
              durable JetStream consumer named after FABRIC_REPLICA_ID, once each,
              acknowledging after the purge. It is ready (health SERVING, calls admitted,
              queue group joined) once its metadata store answers and it has applied
              every event it was owed; before that health says NOT_SERVING and calls are
              refused with UNAVAILABLE. Health is NOT_SERVING while NATS is away too.
              Needs FABRIC_NATS_URL.

Start-up fails with `BusUnreachable` (exit code 2 from the CLI) when NATS does not answer
within FABRIC_BUS_CONNECT_TIMEOUT, or JetStream is not enabled. `stop` drains: health
goes NOT_SERVING, a replica leaves its queue group and lets the queries it runs finish
(up to `grace`), then everything is closed; a gRPC call arriving meanwhile is refused
with UNAVAILABLE and a retry hint.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from fabric.api.server import QUERY_SERVICE, SERVICES, Gateway, is_loopback
from fabric.app.bus import (
    EVENT_FETCH_TIMEOUT,
    bus_snapshot,
    close_quietly,
    connect_bus,
    durable_name,
    nats_where,
    open_event_log,
    replica_id,
)
from fabric.app.gateway import attach_publisher, configured_gateway
from fabric.app.parts import open_kms, open_secret_store, open_store
from fabric.app.process_role import ProcessRole
from fabric.app.readiness import ReplicaReadiness
from fabric.config import Settings
from fabric.errors import FailedPrecondition, InvalidArgument
from fabric.messaging.bus import subject_token
from fabric.messaging.platform_events import PlatformEventApplier, PlatformEventPublisher
from fabric.observability import tracing
from fabric.results.memory import tune_allocators


class RoleProcess(Protocol):
    """A process assembled for a role: `start` returns the line printed when ready."""

    role: ProcessRole
    gateway: Gateway

    async def start(self) -> str: ...

    async def stop(self, grace: float = 10.0) -> None: ...


# -- platform and all ---------------------------------------------------------------------


class PlatformProcess:
    """`--role platform` (queries forwarded over NATS) or `--role all` (queries run on its
    own engine)."""

    def __init__(
        self,
        settings: Settings,
        *,
        role: ProcessRole | str,
        listen: str | None = None,
        **engine_options: Any,
    ) -> None:
        self.settings = settings
        self.role = ProcessRole(role)
        self.listen = listen or settings.listen
        self._engine_options = engine_options
        self.bus: Any = None
        self.events: Any = None
        self.publisher: PlatformEventPublisher | None = None
        self.forwarder: Any = None
        self.gateway: Gateway

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        role: ProcessRole | str = ProcessRole.PLATFORM,
        listen: str | None = None,
        **engine_options: Any,
    ) -> PlatformProcess:
        """Connect to NATS (required for `platform`, optional for `all`), then build the
        gateway; nothing is listening yet."""
        if role not in (ProcessRole.PLATFORM, ProcessRole.ALL):
            raise InvalidArgument(f"PlatformProcess cannot run role {role!r}")
        process = cls(settings, role=role, listen=listen, **engine_options)
        execute = None
        if role == ProcessRole.PLATFORM or settings.nats_servers:
            process.bus = await connect_bus(settings, f"fabric-{role}")
            try:
                process.events = await open_event_log(process.bus, settings)
                if role == ProcessRole.PLATFORM:
                    from fabric.messaging.query_rpc import BusQueryForwarder

                    process.forwarder = BusQueryForwarder(
                        process.bus,
                        open_kms(settings),
                        timeout=settings.bus_timeout,
                        retries=settings.bus_retries,
                        max_sql_length=settings.max_sql_length,
                    )
                    execute = process.forwarder.execute
            except BaseException:
                await close_quietly(process.bus)
                raise
        process.gateway = configured_gateway(
            settings,
            open_store(settings),
            secret_store=open_secret_store(settings),
            execute=execute,
            services=SERVICES,
            serves_apps=role == ProcessRole.ALL or settings.platform_app_queries,
            **engine_options,
        )
        # Its own queries (open statements; all of them with --role all) are listed under
        # its own name; with a bus, the stage's replicas answer for theirs.
        process.gateway.engine.queries.rename(replica_id(settings, str(process.role)))
        if process.bus is not None:
            from fabric.messaging.admin_rpc import RunningQueriesClient
            from fabric.messaging.sealing import BusSealer

            process.gateway.running_queries.cluster = RunningQueriesClient(
                process.bus,
                BusSealer(open_kms(settings), max_message_bytes=process.bus.max_payload),
            )
        if process.events is not None:
            process.publisher = PlatformEventPublisher(
                process.events, timeout=settings.bus_publish_timeout
            )
            attach_publisher(process.gateway, process.publisher)
            metrics = process.gateway.engine.metrics
            bus = process.bus
            metrics.add_snapshot(lambda: bus_snapshot(bus))
            if process.forwarder is not None:
                metrics.add_snapshot(process.forwarder.snapshot)
        return process

    async def start(self) -> str:
        if self.publisher is not None:
            self.publisher.start()
        port = await self.gateway.start(
            self.listen,
            flight_address=self.settings.flight_listen,
            http_address=self.settings.http_listen,
        )
        name = "gateway" if self.role == ProcessRole.ALL else "platform"
        line = f"fabric {name} serving on port {port}"
        if self.gateway.flight_port:
            line += f", Flight SQL on port {self.gateway.flight_port}"
        if self.gateway.http_port:
            scheme = "https" if self.settings.tls else "http"
            line += f", REST API and portal on {scheme} port {self.gateway.http_port}"
        if self.bus is not None:
            line += f", NATS at {nats_where(self.settings)}"
        if self.gateway.metrics_port:
            line += f", metrics on {self.gateway.metrics_host}:{self.gateway.metrics_port}/metrics"
        return line

    async def stop(self, grace: float = 10.0) -> None:
        try:
            await self.gateway.stop(grace)
            await asyncio.to_thread(tracing.flush)
        finally:
            if self.publisher is not None:
                await self.publisher.stop()
            if self.events is not None:
                await self.events.close()
            if self.bus is not None:
                await self.bus.close()


# -- runtime ------------------------------------------------------------------------------


class RuntimeProcess:
    """`--role runtime --stage S`: one replica of stage S."""

    role = ProcessRole.RUNTIME

    def __init__(self, settings: Settings, *, stage: str, listen: str | None = None) -> None:
        self.settings = settings
        self.stage = stage
        self.listen = listen or settings.listen
        self.replica_id = replica_id(settings, stage)
        self.durable_name = durable_name(self.replica_id)
        self.bus: Any = None
        self.events: Any = None
        self.replica: Any = None
        self.admin: Any = None
        self.gateway: Gateway
        self.applier: PlatformEventApplier
        self.readiness: ReplicaReadiness
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        stage: str,
        listen: str | None = None,
        **engine_options: Any,
    ) -> RuntimeProcess:
        """Connect to NATS and build the engine and the replica; nothing runs yet."""
        from fabric.messaging.admin_rpc import AdminResponder
        from fabric.messaging.query_rpc import RuntimeReplica

        subject_token(stage, "stage")
        process = cls(settings, stage=stage, listen=listen)
        process.bus = await connect_bus(settings, f"fabric-runtime-{process.replica_id}")
        try:
            process.events = await open_event_log(process.bus, settings)
            process.gateway = configured_gateway(
                settings,
                open_store(settings),
                secret_store=open_secret_store(settings),
                services=(QUERY_SERVICE,),
                stage=stage,
                **engine_options,
            )
            process.replica = RuntimeReplica(
                process.bus,
                process.gateway.engine,
                open_kms(settings),
                stage=stage,
                replica_id=process.replica_id,
                max_concurrent=settings.bus_max_concurrent,
                access=process.gateway.access,
            )
            process.gateway.engine.queries.rename(process.replica_id)
            process.admin = AdminResponder(
                process.bus, process.gateway.engine.queries, process.replica.sealer, stage=stage
            )
        except BaseException:
            await close_quietly(process.bus)
            raise
        process.applier = PlatformEventApplier(process.gateway.purger)
        process.readiness = ReplicaReadiness(
            process.gateway.engine.store, process.events, process.durable_name
        )
        metrics = process.gateway.engine.metrics
        bus = process.bus
        metrics.add_snapshot(lambda: bus_snapshot(bus))
        metrics.add_snapshot(process.replica.snapshot)
        metrics.add_snapshot(process.applier.snapshot)
        metrics.add_snapshot(process.readiness.snapshot)
        return process

    @property
    def engine(self) -> Any:
        return self.gateway.engine

    async def _durable_in_use(self) -> bool:
        """Whether another live process pulls from this replica's durable (two replicas
        with one FABRIC_REPLICA_ID would split the events between them)."""
        import nats.errors
        import nats.js.errors

        js = self.bus.jetstream(timeout=self.settings.bus_publish_timeout)
        for attempt in range(2):
            try:
                info = await js.consumer_info(self.events.stream, self.durable_name)
            except nats.js.errors.NotFoundError:
                return False
            except (nats.errors.Error, OSError):
                return False  # cannot tell; consume() reports a real problem
            if not info.num_waiting:
                return False
            if attempt == 0:  # a pull left by a process that just died expires first
                await asyncio.sleep(EVENT_FETCH_TIMEOUT + 0.5)
        return True

    async def start(self) -> str:
        if await self._durable_in_use():
            raise FailedPrecondition(
                f"another process is consuming platform events as {self.durable_name!r}: "
                "give every runtime replica its own FABRIC_REPLICA_ID"
            )
        # Listening at once, so probes hear NOT_SERVING (and calls UNAVAILABLE) while the
        # replica loads; the queue group is joined only once it is ready.
        port = await self.gateway.start(self.listen, ready=False)
        await self.applier.start(self.events, self.durable_name)
        await self.readiness.wait()
        await self.replica.start()
        await self.admin.start()
        await self.gateway.set_ready()
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch_bus(), name="runtime:health"
        )
        line = (
            f"fabric runtime replica {self.replica_id} of stage {self.stage} serving "
            f"on port {port}, NATS at {nats_where(self.settings)}"
        )
        if self.gateway.metrics_port:
            line += f", metrics on {self.gateway.metrics_host}:{self.gateway.metrics_port}/metrics"
        return line

    async def _watch_bus(self) -> None:
        """Health follows the NATS connection: NOT_SERVING while it is away."""
        while True:
            await self.bus.wait_disconnected()
            await self.gateway.set_serving(False)
            await self.bus.wait_connected()
            await self.gateway.set_serving(True)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking queries (health, queue group), let running ones finish within
        `grace`, stop consuming events, then close everything."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        try:
            # Its own gRPC calls are refused (UNAVAILABLE, retry) from now on, not only
            # once the replica has let its bus queries finish.
            await self.gateway.stop_taking_calls()
            await self.admin.stop()
            await self.replica.stop(grace)
            await self.applier.stop()
            await self.events.close()
        finally:
            try:
                await self.gateway.stop(grace)
                await asyncio.to_thread(tracing.flush)
            finally:
                await self.bus.close()


def check_listen(address: str, settings: Settings, *, insecure: bool = False) -> None:
    """InvalidArgument for an address a process may not serve on: a non-loopback one with
    authentication off, or without TLS unless `insecure` says so explicitly."""
    if settings.auth == "none" and not is_loopback(address):
        raise InvalidArgument(
            f"FABRIC_AUTH=none is allowed only on a loopback address, not {address}"
        )
    if not settings.tls and not is_loopback(address) and not insecure:
        raise InvalidArgument(
            f"refusing to listen on {address} without TLS: set FABRIC_TLS_CERT and "
            "FABRIC_TLS_KEY, listen on a loopback address, or pass --insecure explicitly"
        )


async def open_process(
    role: ProcessRole | str,
    settings: Settings,
    *,
    stage: str | None = None,
    listen: str | None = None,
    insecure: bool = False,
    **engine_options: Any,
) -> PlatformProcess | RuntimeProcess:
    """Assemble the process for `role` (connects to NATS where the role needs it).

    Every role listens on `listen` (default FABRIC_LISTEN), checked with `check_listen`
    first: a platform or `all` process serves every stage, a runtime replica serves the
    query API of `stage` only. The allocators are set up first, so that memory freed
    after a load can be given back (`fabric.results.memory.tune_allocators`)."""
    tune_allocators()
    # Traces only with FABRIC_OTEL_ENDPOINT (one exporter per Python process).
    if settings.otel_endpoint and not tracing.tracing_enabled():
        tracing.configure_tracing(
            settings.otel_endpoint, settings.otel_service_name or f"fabric-{role}"
        )
    address = listen or settings.listen
    if role == ProcessRole.RUNTIME:
        if not stage:
            raise InvalidArgument("--role runtime needs --stage NAME (the stage it serves)")
        check_listen(address, settings, insecure=insecure)
        return await RuntimeProcess.open(settings, stage=stage, listen=address, **engine_options)
    if role in (ProcessRole.PLATFORM, ProcessRole.ALL):
        if stage:
            raise InvalidArgument("--stage is for --role runtime; the platform serves every stage")
        check_listen(address, settings, insecure=insecure)
        for door in (settings.flight_listen, settings.http_listen):
            if door:
                check_listen(door, settings, insecure=insecure)
        return await PlatformProcess.open(settings, role=role, listen=address, **engine_options)
    known = ", ".join(r.value for r in ProcessRole)
    raise InvalidArgument(f"unknown role {role!r}; use one of {known}")
