"""The bus a process of the platform or runtime role talks over: NATS, its JetStream event
log, and the names a replica goes by there."""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fabric.config import Settings
from fabric.errors import FailedPrecondition, InvalidArgument, SourceUnavailable

EVENT_FETCH_TIMEOUT = 1.0
"""Seconds one pull of the event consumer waits; also bounds how long stopping it takes."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class BusUnreachable(SourceUnavailable):
    """NATS (or JetStream) could not be reached when the process started."""


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


async def close_quietly(bus: Any) -> None:
    with contextlib.suppress(Exception):
        await bus.close()
