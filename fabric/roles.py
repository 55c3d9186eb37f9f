"""One process per role: what `fabric serve --role all|platform|runtime` assembles.

    all       (embedded default) both planes in one gateway; queries run on its own
              engine and platform changes purge it in-process. With FABRIC_NATS_URL set
              the changes are also published as platform events on JetStream, so runtime
              replicas elsewhere apply them; queries still run here.
    platform  the gRPC gateway: ConnectionService and CatalogService (changes published as
              platform events), and QueryService whose Execute and Preview are forwarded
              over NATS to the runtime replicas of the caller's stage (the stage in the
              verified token). Tokens are verified here. OpenStatement, Fetch and
              CloseStatement run on this process's own engine: an open statement lives in
              one process's memory, and NATS request/reply cannot pin a client to a
              replica across calls. Needs FABRIC_NATS_URL.
    runtime   one stateless replica of a stage (`--stage`): a QueryEngine on the same
              metadata store and key ring / Vault as the platform (it only reads
              metadata), serving that stage's queries from NATS in the stage's queue
              group, and a durable JetStream consumer named after FABRIC_REPLICA_ID that
              applies platform events (purges) once each, acknowledging after the purge.
              It serves gRPC health (NOT_SERVING while NATS is away) on --listen, with
              QueryService too, or else on FABRIC_HEALTH_LISTEN. Needs FABRIC_NATS_URL.

Start-up fails with `BusUnreachable` (exit code 2 from the CLI) when NATS does not answer
within FABRIC_BUS_CONNECT_TIMEOUT, or JetStream is not enabled. `stop` drains: health
goes NOT_SERVING, a replica leaves its queue group and lets the queries it runs finish
(up to `grace`), then everything is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from fabric.api.server import QUERY_SERVICE, SERVICES, Gateway
from fabric.config import Settings
from fabric.errors import FailedPrecondition, InvalidArgument, SourceUnavailable
from fabric.messaging.platform_events import PlatformEventApplier, PlatformEventPublisher
from fabric.security.kms import Kms, LocalKeyRing

log = logging.getLogger(__name__)

ROLES = ("all", "platform", "runtime")
EVENT_FETCH_TIMEOUT = 1.0
"""Seconds one pull of the event consumer waits; also bounds how long stopping it takes."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class BusUnreachable(SourceUnavailable):
    """NATS (or JetStream) could not be reached when the process started."""


class RoleProcess(Protocol):
    """A process assembled for a role: `start` returns the line printed when ready."""

    role: str
    gateway: Gateway

    async def start(self) -> str: ...

    async def stop(self, grace: float = 10.0) -> None: ...


# -- parts --------------------------------------------------------------------------------


def open_kms(settings: Settings) -> Kms:
    """The KMS the platform and every replica share: Vault transit when FABRIC_VAULT_ADDR
    is set, else the local key ring under FABRIC_HOME (the same file for every process
    of one machine; on several machines use Vault)."""
    if settings.vault_addr:
        from fabric.security.vault import VaultTransitKms, vault_client

        return VaultTransitKms(vault_client(settings.vault_addr, settings.vault_token))
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return LocalKeyRing.open(settings.keyring_path)


def nats_where(settings: Settings) -> str:
    """host:port of the configured NATS servers, never a credential from a URL."""
    places = []
    for url in settings.nats_servers:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        places.append(f"{parts.hostname}:{parts.port or 4222}")
    return ", ".join(places) or "(none)"


def replica_id(settings: Settings, stage: str) -> str:
    """FABRIC_REPLICA_ID, else `<host name>-<stage>`: one bus token, stable across
    restarts of the same replica (it names the replica's durable event consumer)."""
    raw = settings.replica_id or f"{socket.gethostname()}-{stage}"
    cleaned = _UNSAFE.sub("-", raw).strip("-")[:100]
    if not cleaned:
        raise InvalidArgument("FABRIC_REPLICA_ID must contain letters or digits")
    return cleaned


def durable_name(replica: str) -> str:
    """The JetStream durable consumer of a replica's platform events."""
    return f"runtime-{replica}"


async def connect_bus(settings: Settings, name: str) -> Any:
    """A `NatsBus` on FABRIC_NATS_URL, or `BusUnreachable` with what to check."""
    from fabric.messaging.nats_bus import NatsBus

    if not settings.nats_servers:
        raise FailedPrecondition(
            "this role needs NATS: set FABRIC_NATS_URL (e.g. nats://127.0.0.1:4222)"
        )
    tls = None
    if settings.nats_tls_ca:
        try:
            tls = ssl.create_default_context(cafile=settings.nats_tls_ca)
        except (OSError, ssl.SSLError):
            raise InvalidArgument(
                f"cannot read FABRIC_NATS_TLS_CA {settings.nats_tls_ca}"
            ) from None
    deadline = settings.bus_connect_timeout
    try:
        return await NatsBus.connect(
            settings.nats_servers,
            name=name,
            creds_file=settings.nats_creds or None,
            tls=tls,
            connect_timeout=min(5.0, deadline),
            connect_deadline=deadline,
        )
    except SourceUnavailable as error:
        raise BusUnreachable(
            f"NATS at {nats_where(settings)} did not answer within {deadline:g}s ({error.message})"
        ) from None


async def open_event_log(bus: Any, settings: Settings) -> Any:
    """The JetStream event log (stream created when missing), or `BusUnreachable`."""
    from fabric.messaging.nats_bus import JetStreamEventLog

    try:
        # One event per pull: a pull of several waits for the batch (up to the fetch
        # timeout) before handing over the first, and purges must be quick.
        return await JetStreamEventLog.open(
            bus,
            fetch_batch=1,
            fetch_timeout=EVENT_FETCH_TIMEOUT,
            api_timeout=settings.bus_publish_timeout,
        )
    except SourceUnavailable as error:
        raise BusUnreachable(f"NATS at {nats_where(settings)}: {error.message}") from None


def bus_snapshot(bus: Any) -> Mapping[str, float]:
    return {"bus_connected": 1.0 if bus.connected else 0.0, "bus_reconnects": float(bus.reconnects)}


async def _close_quietly(bus: Any) -> None:
    with contextlib.suppress(Exception):
        await bus.close()


# -- platform and all ---------------------------------------------------------------------


class PlatformProcess:
    """`--role platform` (`forward=True`) or `--role all` (`forward=False`)."""

    def __init__(
        self, settings: Settings, *, role: str, listen: str | None = None, **engine_options: Any
    ) -> None:
        self.settings = settings
        self.role = role
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
        role: str = "platform",
        listen: str | None = None,
        **engine_options: Any,
    ) -> PlatformProcess:
        """Connect to NATS (required for `platform`, optional for `all`), then build the
        gateway; nothing is listening yet."""
        from fabric.wiring import open_secret_store, open_store

        if role not in ("platform", "all"):
            raise InvalidArgument(f"PlatformProcess cannot run role {role!r}")
        process = cls(settings, role=role, listen=listen, **engine_options)
        execute = None
        if role == "platform" or settings.nats_servers:
            process.bus = await connect_bus(settings, f"fabric-{role}")
            try:
                process.events = await open_event_log(process.bus, settings)
                if role == "platform":
                    from fabric.messaging.query_rpc import BusQueryForwarder

                    process.forwarder = BusQueryForwarder(
                        process.bus,
                        open_kms(settings),
                        timeout=settings.bus_timeout,
                        retries=settings.bus_retries,
                    )
                    execute = process.forwarder.execute
            except BaseException:
                await _close_quietly(process.bus)
                raise
        process.gateway = Gateway.build(
            settings,
            open_store(settings),
            secret_store=open_secret_store(settings),
            execute=execute,
            services=SERVICES,
            **engine_options,
        )
        if process.events is not None:
            process.publisher = PlatformEventPublisher(
                process.events, timeout=settings.bus_publish_timeout
            )
            process.gateway.attach_publisher(process.publisher)
            metrics = process.gateway.engine.metrics
            bus = process.bus
            metrics.add_snapshot(lambda: bus_snapshot(bus))
            if process.forwarder is not None:
                metrics.add_snapshot(process.forwarder.snapshot)
        return process

    async def start(self) -> str:
        if self.publisher is not None:
            self.publisher.start()
        port = await self.gateway.start(self.listen)
        name = "gateway" if self.role == "all" else "platform"
        line = f"fabric {name} serving on port {port}"
        if self.bus is not None:
            line += f", NATS at {nats_where(self.settings)}"
        if self.gateway.metrics_port:
            line += f", metrics on 127.0.0.1:{self.gateway.metrics_port}/metrics"
        return line

    async def stop(self, grace: float = 10.0) -> None:
        try:
            await self.gateway.stop(grace)
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

    role = "runtime"

    def __init__(
        self,
        settings: Settings,
        *,
        stage: str,
        listen: str | None = None,
        health_listen: str | None = None,
    ) -> None:
        self.settings = settings
        self.stage = stage
        self.listen = listen
        self.health_listen = health_listen or settings.health_listen
        self.replica_id = replica_id(settings, stage)
        self.durable_name = durable_name(self.replica_id)
        self.bus: Any = None
        self.events: Any = None
        self.replica: Any = None
        self.gateway: Gateway
        self.applier: PlatformEventApplier
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        stage: str,
        listen: str | None = None,
        health_listen: str | None = None,
        **engine_options: Any,
    ) -> RuntimeProcess:
        """Connect to NATS and build the engine and the replica; nothing runs yet."""
        from fabric.messaging.bus import subject_token
        from fabric.messaging.query_rpc import RuntimeReplica
        from fabric.wiring import open_secret_store, open_store

        subject_token(stage, "stage")
        process = cls(settings, stage=stage, listen=listen, health_listen=health_listen)
        process.bus = await connect_bus(settings, f"fabric-runtime-{process.replica_id}")
        try:
            process.events = await open_event_log(process.bus, settings)
            process.gateway = Gateway.build(
                settings,
                open_store(settings),
                secret_store=open_secret_store(settings),
                services=(QUERY_SERVICE,) if listen else (),
                **engine_options,
            )
            process.replica = RuntimeReplica(
                process.bus,
                process.gateway.engine,
                open_kms(settings),
                stage=stage,
                replica_id=process.replica_id,
                max_concurrent=settings.bus_max_concurrent,
            )
        except BaseException:
            await _close_quietly(process.bus)
            raise
        process.applier = PlatformEventApplier(process.gateway.purger)
        metrics = process.gateway.engine.metrics
        bus = process.bus
        metrics.add_snapshot(lambda: bus_snapshot(bus))
        metrics.add_snapshot(process.replica.snapshot)
        metrics.add_snapshot(process.applier.snapshot)
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
        await self.applier.start(self.events, self.durable_name)
        await self.replica.start()
        address = self.listen or self.health_listen
        port = await self.gateway.start(address)
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch_bus(), name="runtime:health"
        )
        what = "queries and health" if self.listen else "health"
        line = (
            f"fabric runtime replica {self.replica_id} of stage {self.stage} serving "
            f"{what} on port {port}, NATS at {nats_where(self.settings)}"
        )
        if self.gateway.metrics_port:
            line += f", metrics on 127.0.0.1:{self.gateway.metrics_port}/metrics"
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
            await self.gateway.set_serving(False)
            await self.replica.stop(grace)
            await self.applier.stop()
            await self.events.close()
        finally:
            try:
                await self.gateway.stop(grace)
            finally:
                await self.bus.close()


async def open_role(
    role: str,
    settings: Settings,
    *,
    stage: str | None = None,
    listen: str | None = None,
    health_listen: str | None = None,
    **engine_options: Any,
) -> PlatformProcess | RuntimeProcess:
    """Assemble the process for `role` (connects to NATS where the role needs it)."""
    if role == "runtime":
        if not stage:
            raise InvalidArgument("--role runtime needs --stage NAME")
        return await RuntimeProcess.open(
            settings, stage=stage, listen=listen, health_listen=health_listen, **engine_options
        )
    if role in ("platform", "all"):
        return await PlatformProcess.open(settings, role=role, listen=listen, **engine_options)
    raise InvalidArgument(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
