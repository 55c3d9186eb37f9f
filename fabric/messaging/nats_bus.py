"""The production bus on NATS (nats-py), and platform events on JetStream.

`NatsBus` implements `Bus` on core NATS: queue groups are NATS queue subscriptions,
request/reply is `nc.request` (with no-responders detection), `max_payload` comes from
the server's INFO. The connection reconnects for ever with jittered exponential backoff;
while it is reconnecting a publish is refused (`SourceUnavailable`) instead of being
buffered where a later close could lose it, unless `reconnect_buffer_bytes` says
otherwise. Callbacks log state changes and error types, never a payload, a header value
or a credential.

Core NATS publish is at most once: "accepted" means written to the connected server's
socket. Delivery that must survive a restart goes through `JetStreamEventLog` (stream
`FABRIC_EVENTS`, subjects `fabric.events.>`, file storage): a publish returns only after
the stream stored the event, and consumers are durable pull consumers with explicit acks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.client import Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext, api

from fabric.errors import (
    DeadlineExceeded,
    FabricError,
    FailedPrecondition,
    InvalidArgument,
    NoResponders,
    NotFound,
    ResourceExhausted,
    SourceUnavailable,
)
from fabric.messaging.bus import (
    Handler,
    Headers,
    Message,
    Responder,
    checked_outgoing,
    events_filter,
    validate_queue,
    validate_subject,
)
from fabric.messaging.events import (
    DEFAULT_REDELIVERY,
    EventHandler,
    PlatformEvent,
    RedeliveryPolicy,
    durable_token,
    finish_task,
    watch_task,
)

log = logging.getLogger(__name__)

NATS_URL_ENV = "FABRIC_NATS_URL"
"""Environment variable with the NATS server URL (comma-separated for a cluster)."""

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

EVENTS_STREAM = "FABRIC_EVENTS"
"""JetStream stream holding platform events."""

_STREAM_NAME_IN_USE = 10058  # JetStream err_code: stream exists with another config
_SUBJECTS_OVERLAP = 10065  # JetStream err_code: another stream captures these subjects


def nats_url_from_env(default: str = DEFAULT_NATS_URL) -> list[str]:
    """Server URLs from `FABRIC_NATS_URL` (comma-separated), else `default`."""
    raw = os.environ.get(NATS_URL_ENV, "") or default
    return [url.strip() for url in raw.split(",") if url.strip()]


def _where(nc: NatsClient) -> str:
    """host:port of the current server, never the credentials a URL may carry."""
    url = nc.connected_url
    if url is None:
        return "?"
    return f"{url.hostname}:{url.port}"


def _error_label(exc: BaseException) -> str:
    """The error's type, refined for the server's authorization refusal (which nats-py
    reports as a plain `Error` during connect); never the error text itself."""
    if isinstance(exc, nats.errors.AuthorizationError) or (
        type(exc) is nats.errors.Error and "authorization violation" in str(exc).lower()
    ):
        return "AuthorizationError"
    return type(exc).__name__


class _NatsSubscription:
    def __init__(self, sub: NatsSubscription, subject: str, queue: str | None) -> None:
        self._sub = sub
        self._subject = subject
        self._queue = queue
        self._active = True

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def queue(self) -> str | None:
        return self._queue

    async def unsubscribe(self) -> None:
        """Stop delivery (idempotent; a closed connection has no subscriptions anyway)."""
        if not self._active:
            return
        self._active = False
        with contextlib.suppress(nats.errors.Error):
            await self._sub.unsubscribe()


class NatsBus:
    """`Bus` over a NATS connection; build it with `await NatsBus.connect(...)`."""

    def __init__(self, nc: NatsClient, name: str) -> None:
        """Wrap a connected client (use `connect`); the bus then owns and closes it."""
        self._nc = nc
        self._name = name
        self._connected = asyncio.Event()
        self._disconnected = asyncio.Event()
        if nc.is_connected:
            self._connected.set()
        else:
            self._disconnected.set()
        self._closing = False
        self._last_error: str | None = None
        self._refused: str | None = None
        """The server's refusal of our credentials, if any: kept over later errors (a
        reset connection after it) because it is the cause worth reporting."""

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str] | None = None,
        *,
        name: str = "fabric",
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        creds_file: str | None = None,
        nkeys_seed_file: str | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        tls_handshake_first: bool = False,
        connect_timeout: float = 5.0,
        connect_deadline: float = 15.0,
        reconnect_wait: float = 0.25,
        max_reconnect_wait: float = 5.0,
        max_reconnect_attempts: int = -1,
        reconnect_buffer_bytes: int = 0,
        ping_interval: float = 20.0,
        max_outstanding_pings: int = 3,
        drain_timeout: float = 5.0,
    ) -> NatsBus:
        """Connect to NATS.

        `servers`: URL or URLs (default: `FABRIC_NATS_URL`, else nats://127.0.0.1:4222).
        Authentication: `user`/`password`, `token`, a `.creds` file (JWT + nkey) or an
        nkey seed file; `tls` (an `ssl.SSLContext`, with a client certificate for mutual
        TLS) for `tls://` servers. The first connection must succeed within
        `connect_deadline` seconds, else `SourceUnavailable`. After that the client
        reconnects with a delay starting at `reconnect_wait` and doubling up to
        `max_reconnect_wait` (jittered), `max_reconnect_attempts` times per server
        (-1: for ever). `reconnect_buffer_bytes` > 0 lets publishes during a reconnect be
        buffered up to that size (sent on reconnect, lost if the client closes first);
        0, the default, refuses them.
        """
        if servers is None:
            urls = nats_url_from_env()
        elif isinstance(servers, str):
            urls = [servers]
        else:
            urls = list(servers)
        if not urls:
            raise InvalidArgument("NatsBus.connect needs at least one server URL")
        if reconnect_wait <= 0 or max_reconnect_wait < reconnect_wait:
            raise InvalidArgument("need 0 < reconnect_wait <= max_reconnect_wait")
        if reconnect_buffer_bytes < 0:
            raise InvalidArgument("reconnect_buffer_bytes cannot be negative")

        nc = NatsClient()
        bus = cls(nc, name)

        def pick_server(pool: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
            server = min(pool, key=lambda s: s.reconnects)
            delay = min(reconnect_wait * (2 ** min(server.reconnects, 16)), max_reconnect_wait)
            return server, delay * random.uniform(0.5, 1.0)

        options: dict[str, Any] = {
            "servers": urls,
            "name": name,
            "error_cb": bus._on_error,
            "disconnected_cb": bus._on_disconnected,
            "reconnected_cb": bus._on_reconnected,
            "closed_cb": bus._on_closed,
            "allow_reconnect": True,
            "connect_timeout": connect_timeout,
            "reconnect_time_wait": reconnect_wait,
            "max_reconnect_attempts": max_reconnect_attempts,
            "reconnect_to_server_handler": pick_server,
            "ping_interval": ping_interval,
            "max_outstanding_pings": max_outstanding_pings,
            "pending_size": reconnect_buffer_bytes,
            "drain_timeout": drain_timeout,
            "tls_handshake_first": tls_handshake_first,
        }
        given = {
            "user": user,
            "password": password,
            "token": token,
            "user_credentials": creds_file,
            "nkeys_seed": nkeys_seed_file,
            "tls": tls,
            "tls_hostname": tls_hostname,
        }
        # Only what was given: nats-py keeps its own defaults for the rest.
        options.update({key: value for key, value in given.items() if value is not None})

        try:
            await asyncio.wait_for(nc.connect(**options), connect_deadline)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = bus._refused or bus._last_error or type(exc).__name__
            raise SourceUnavailable(
                f"cannot connect to NATS (last error: {cause}); check FABRIC_NATS_URL, "
                "credentials and TLS settings"
            ) from None
        bus._connected.set()
        bus._disconnected.clear()
        log.info("bus %s connected to NATS at %s", name, _where(nc))
        return bus

    # -- connection state ------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        self._last_error = _error_label(exc)
        if isinstance(exc, nats.errors.AuthorizationError):
            self._refused = self._last_error
        if isinstance(exc, nats.errors.SlowConsumerError):
            log.error(
                "bus %s: slow consumer on %s; NATS dropped messages for it",
                self._name,
                exc.subject,
            )
        else:
            log.warning("bus %s: NATS error (%s)", self._name, self._last_error)

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        self._disconnected.set()
        if not self._closing:
            log.warning("bus %s disconnected from NATS; reconnecting", self._name)

    async def _on_reconnected(self) -> None:
        self._disconnected.clear()
        self._connected.set()
        log.info("bus %s reconnected to NATS at %s", self._name, _where(self._nc))

    async def _on_closed(self) -> None:
        self._connected.clear()
        self._disconnected.set()
        log.info("bus %s connection closed", self._name)

    @property
    def client(self) -> NatsClient:
        """The underlying nats-py client (JetStream, server info); the bus owns it."""
        return self._nc

    @property
    def connected(self) -> bool:
        return self._nc.is_connected

    @property
    def closed(self) -> bool:
        return self._nc.is_closed

    @property
    def reconnects(self) -> int:
        """Successful reconnections since `connect`."""
        return int(self._nc.stats["reconnects"])

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected (now or after a reconnect); `DeadlineExceeded` after
        `timeout`, `SourceUnavailable` if the bus is closed."""
        if self._nc.is_closed:
            raise SourceUnavailable("the bus is closed")
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"not connected to NATS within {timeout:g}s") from None

    async def wait_disconnected(self, timeout: float | None = None) -> None:
        """Return once the connection is lost (or closed); `DeadlineExceeded` after
        `timeout`."""
        try:
            await asyncio.wait_for(self._disconnected.wait(), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"still connected to NATS after {timeout:g}s") from None

    def jetstream(self, timeout: float = 5.0) -> JetStreamContext:
        """A JetStream context on this connection; API calls time out after `timeout`."""
        return self._nc.jetstream(timeout=timeout)

    # -- Bus -------------------------------------------------------------------------

    @property
    def max_payload(self) -> int:
        return int(self._nc.max_payload)

    def _unavailable(self, exc: BaseException, subject: str, what: str) -> FabricError:
        """Translate a nats-py error into the gateway's tree; messages name the subject and
        the failure, never the payload."""
        if isinstance(exc, nats.errors.ConnectionClosedError | nats.errors.ConnectionDrainingError):
            return SourceUnavailable(f"the bus is closed; cannot {what} on {subject!r}")
        if isinstance(exc, nats.errors.OutboundBufferLimitError):
            return SourceUnavailable(
                f"the bus is reconnecting to NATS; cannot {what} on {subject!r} now, retry"
            )
        if isinstance(exc, nats.errors.MaxPayloadError):
            return ResourceExhausted(
                f"message on {subject!r} exceeds the NATS maximum payload of "
                f"{self.max_payload} bytes"
            )
        if isinstance(exc, nats.errors.BadSubjectError | nats.errors.BadHeaderError):
            return InvalidArgument(f"bus subject or header refused by NATS on {subject!r}")
        return SourceUnavailable(f"cannot {what} on {subject!r} ({type(exc).__name__})")

    async def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        checked = checked_outgoing(subject, payload, headers, self.max_payload)
        try:
            await self._nc.publish(subject, bytes(payload), headers=checked or None)
        except (nats.errors.Error, OSError) as exc:
            raise self._unavailable(exc, subject, "publish") from None

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> _NatsSubscription:
        validate_subject(subject, wildcards=True)
        group = validate_queue(queue)

        async def deliver(msg: Msg) -> None:
            message = Message(
                msg.subject,
                msg.data,
                dict(msg.headers or {}),
                msg.reply or None,
                self._responder(msg.reply) if msg.reply else None,
            )
            try:
                await handler(message)
            except Exception as exc:  # a handler's failure must not end the subscription
                log.error("bus handler for %s failed (%s)", subject, type(exc).__name__)

        try:
            sub = await self._nc.subscribe(subject, queue=group or "", cb=deliver)
        except (nats.errors.Error, OSError) as exc:
            raise self._unavailable(exc, subject, "subscribe") from None
        return _NatsSubscription(sub, subject, group)

    def _responder(self, reply_subject: str) -> Responder:
        async def respond(payload: bytes, headers: Headers | None) -> None:
            await self.publish(reply_subject, payload, headers)

        return respond

    async def request(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: Headers | None = None,
    ) -> bytes:
        checked = checked_outgoing(subject, payload, headers, self.max_payload, timeout=timeout)
        try:
            reply = await self._nc.request(
                subject, bytes(payload), timeout=timeout, headers=checked or None
            )
        except nats.errors.NoRespondersError:
            raise NoResponders(f"no responders on {subject!r}") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise DeadlineExceeded(f"no reply on {subject!r} within {timeout:g}s") from None
        except (nats.errors.Error, OSError) as exc:
            raise self._unavailable(exc, subject, "send a request") from None
        return reply.data

    async def close(self) -> None:
        """Drain (pending publishes flushed, handlers in flight finish), then close."""
        if self._nc.is_closed:
            return
        self._closing = True
        try:
            if self._nc.is_connected:
                await self._nc.drain()
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            log.warning("bus %s: drain failed (%s); closing", self._name, type(exc).__name__)
        finally:
            if not self._nc.is_closed:
                await self._nc.close()


class _JetStreamConsumer:
    """One durable pull consumer: fetch, apply, ack; nak with backoff on error."""

    def __init__(
        self,
        owner: JetStreamEventLog,
        durable_name: str,
        psub: JetStreamContext.PullSubscription,
        handler: EventHandler,
    ) -> None:
        self._owner = owner
        self._durable_name = durable_name
        self._psub = psub
        self._handler = handler
        self._stopping = asyncio.Event()
        self._task = watch_task(
            asyncio.get_running_loop().create_task(self._run(), name=f"events:{durable_name}")
        )

    @property
    def durable_name(self) -> str:
        return self._durable_name

    async def _run(self) -> None:
        bus = self._owner.bus
        batch = self._owner.fetch_batch
        fetch_timeout = self._owner.fetch_timeout
        failing = False
        while not self._stopping.is_set():
            try:
                msgs = await self._psub.fetch(batch, timeout=fetch_timeout)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.ConnectionClosedError:
                return
            except (nats.errors.Error, OSError) as exc:
                if bus.closed:
                    return
                if not failing:  # once per outage, not once per attempt
                    log.warning(
                        "events %s: fetch failed (%s); waiting for the bus",
                        self._durable_name,
                        type(exc).__name__,
                    )
                failing = True
                with contextlib.suppress(DeadlineExceeded, SourceUnavailable):
                    await bus.wait_connected(fetch_timeout)
                continue
            if failing:
                log.info("events %s: fetching again", self._durable_name)
                failing = False
            for index, msg in enumerate(msgs):
                if self._stopping.is_set():
                    # Fetched after stop was asked: hand back at once, not after ack_wait.
                    for rest in msgs[index:]:
                        await _settle(rest.nak(), self._durable_name)
                    return
                await self._apply(msg)

    async def _apply(self, msg: Msg) -> None:
        policy = self._owner.policy
        try:
            event = PlatformEvent.from_json(msg.data)
        except InvalidArgument as exc:
            log.error(
                "events %s: undecodable event on %s terminated (%s)",
                self._durable_name,
                msg.subject,
                exc.message,
            )
            await _settle(msg.term(), self._durable_name)
            return
        deliveries = msg.metadata.num_delivered
        keepalive = asyncio.get_running_loop().create_task(
            _keep_in_progress(msg, policy.ack_wait / 3)
        )
        try:
            await self._handler(event)
        except Exception as exc:
            if deliveries >= policy.max_deliver:
                log.error(
                    "platform event %s (%s) dropped by %s after %d failed deliveries (%s)",
                    event.id,
                    event.kind.value,
                    self._durable_name,
                    deliveries,
                    type(exc).__name__,
                )
                await _settle(msg.term(), self._durable_name)
            else:
                log.warning(
                    "platform event %s (%s) failed in %s (%s); redelivery %d",
                    event.id,
                    event.kind.value,
                    self._durable_name,
                    type(exc).__name__,
                    deliveries + 1,
                )
                await _settle(msg.nak(delay=policy.delay(deliveries)), self._durable_name)
        else:
            await _settle(msg.ack_sync(timeout=self._owner.api_timeout), self._durable_name)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def stop(self) -> None:
        """Stop after the event being applied (if any) and the fetch in flight; events
        fetched but not applied are handed back. The durable stays on the server."""
        self._stopping.set()
        if self._owner._consumers.get(self._durable_name) is self:
            del self._owner._consumers[self._durable_name]
        await finish_task(self._task, self._owner.fetch_timeout + self._owner.policy.ack_wait)
        with contextlib.suppress(nats.errors.Error):
            await self._psub.unsubscribe()


async def _keep_in_progress(msg: Msg, every: float) -> None:
    """Extend ack_wait while a handler runs, so a slow handler is not redelivered."""
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(nats.errors.Error):
            await msg.in_progress()


async def _settle(ack: Any, durable_name: str) -> None:
    """Send an ack/nak/term. If it is lost (a reconnect), the server redelivers the event
    after ack_wait, which idempotent handlers absorb."""
    try:
        await ack
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        log.warning(
            "events %s: acknowledgement not confirmed (%s); the event may be redelivered",
            durable_name,
            type(exc).__name__,
        )


class JetStreamEventLog:
    """`EventLog` on JetStream. Open with `await JetStreamEventLog.open(bus)`, which
    creates the stream when missing (idempotent, safe from several replicas at once)."""

    def __init__(
        self,
        bus: NatsBus,
        *,
        stream: str = EVENTS_STREAM,
        policy: RedeliveryPolicy = DEFAULT_REDELIVERY,
        max_age: float = 7 * 24 * 3600.0,
        duplicate_window: float = 120.0,
        inactive_threshold: float = 7 * 24 * 3600.0,
        fetch_batch: int = 10,
        fetch_timeout: float = 1.0,
        api_timeout: float = 5.0,
    ) -> None:
        """`max_age`: how long the stream keeps events. `duplicate_window`: a re-publish
        of the same event id within it is stored once. `inactive_threshold`: a durable
        nobody consumed for that long is removed by the server (replicas that scaled
        away). `fetch_timeout`: longest a pull waits, which also bounds `stop`."""
        if fetch_batch < 1 or fetch_timeout <= 0 or api_timeout <= 0:
            raise InvalidArgument("fetch_batch, fetch_timeout and api_timeout must be positive")
        self.bus = bus
        self.stream = stream
        self.policy = policy
        self.max_age = max_age
        self.duplicate_window = duplicate_window
        self.inactive_threshold = inactive_threshold
        self.fetch_batch = fetch_batch
        self.fetch_timeout = fetch_timeout
        self.api_timeout = api_timeout
        self._js = bus.jetstream(timeout=api_timeout)
        self._consumers: dict[str, _JetStreamConsumer] = {}

    @classmethod
    async def open(cls, bus: NatsBus, **options: Any) -> JetStreamEventLog:
        """Build the log and make sure its stream exists."""
        events = cls(bus, **options)
        await events.ensure_stream()
        return events

    async def ensure_stream(self) -> None:
        """Create the stream (file storage, subjects `fabric.events.>`) if missing. An
        existing stream is used as it is, provided it captures those subjects."""
        wanted = events_filter()
        config = api.StreamConfig(
            name=self.stream,
            subjects=[wanted],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            max_age=self.max_age,
            duplicate_window=self.duplicate_window,
        )
        try:
            try:
                info = await self._js.stream_info(self.stream)
            except nats.js.errors.NotFoundError:
                try:
                    info = await self._js.add_stream(config)
                    log.info("created JetStream stream %s", self.stream)
                except nats.js.errors.APIError as exc:
                    if exc.err_code not in (_STREAM_NAME_IN_USE, _SUBJECTS_OVERLAP):
                        raise
                    # Another replica created it first (the server may say either), or
                    # another stream already captures the subjects.
                    try:
                        info = await self._js.stream_info(self.stream)
                    except nats.js.errors.NotFoundError:
                        raise FailedPrecondition(
                            f"another JetStream stream already captures {wanted}; remove it "
                            f"or name it in the settings instead of {self.stream}"
                        ) from None
        except (nats.errors.Error, OSError) as exc:
            raise SourceUnavailable(
                f"JetStream stream {self.stream} is not available ({type(exc).__name__}); "
                "is JetStream enabled on the NATS server?"
            ) from None
        if wanted not in (info.config.subjects or []):
            raise FailedPrecondition(
                f"JetStream stream {self.stream} exists but does not capture {wanted}"
            )

    async def publish_event(self, event: PlatformEvent) -> None:
        if not isinstance(event, PlatformEvent):
            raise InvalidArgument("publish_event takes a PlatformEvent")
        subject = event.subject
        try:
            await self._js.publish(
                subject,
                event.to_json(),
                timeout=self.api_timeout,
                stream=self.stream,
                headers={api.Header.MSG_ID: event.id},
            )
        except (nats.errors.TimeoutError, TimeoutError):
            raise SourceUnavailable(
                f"JetStream did not confirm event {event.id} in {self.api_timeout:g}s; "
                "publishing it again is safe (same id is stored once)"
            ) from None
        except (nats.errors.Error, OSError) as exc:
            raise SourceUnavailable(
                f"platform event {event.id} was not stored ({type(exc).__name__}); retry"
            ) from None

    async def consume(
        self,
        durable_name: str,
        handler: EventHandler,
        *,
        tenant: str | None = None,
    ) -> _JetStreamConsumer:
        durable_token(durable_name)
        if durable_name in self._consumers:
            raise FailedPrecondition(
                f"durable {durable_name!r} is already being consumed in this process"
            )
        wanted = events_filter(tenant)
        config = api.ConsumerConfig(
            durable_name=durable_name,
            deliver_policy=api.DeliverPolicy.NEW,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.policy.ack_wait,
            max_deliver=self.policy.max_deliver,
            filter_subject=wanted,
            inactive_threshold=self.inactive_threshold,
        )
        try:
            try:
                info = await self._js.consumer_info(self.stream, durable_name)
            except nats.js.errors.NotFoundError:
                pass
            else:
                if info.config.filter_subject != wanted:
                    raise FailedPrecondition(
                        f"durable {durable_name!r} exists with another filter; use another name"
                    )
            psub = await self._js.pull_subscribe(
                wanted, durable=durable_name, stream=self.stream, config=config
            )
        except (nats.errors.Error, OSError) as exc:
            raise SourceUnavailable(
                f"cannot start durable consumer {durable_name!r} ({type(exc).__name__})"
            ) from None
        consumer = _JetStreamConsumer(self, durable_name, psub, handler)
        self._consumers[durable_name] = consumer
        return consumer

    async def unacknowledged(self, durable_name: str) -> int:
        """Events delivered to the durable and not acknowledged yet (JetStream's
        num_ack_pending)."""
        durable_token(durable_name)
        try:
            info = await self._js.consumer_info(self.stream, durable_name)
        except nats.js.errors.NotFoundError:
            raise NotFound(f"no durable consumer {durable_name!r}") from None
        except (nats.errors.Error, OSError) as exc:
            raise SourceUnavailable(
                f"cannot read durable consumer {durable_name!r} ({type(exc).__name__})"
            ) from None
        return int(info.num_ack_pending or 0)

    async def outstanding(self, durable_name: str) -> int:
        """Events of the durable's filter not acknowledged yet: JetStream's num_pending
        (not delivered) plus num_ack_pending (delivered, unacknowledged)."""
        durable_token(durable_name)
        try:
            info = await self._js.consumer_info(self.stream, durable_name)
        except nats.js.errors.NotFoundError:
            raise NotFound(f"no durable consumer {durable_name!r}") from None
        except (nats.errors.Error, OSError) as exc:
            raise SourceUnavailable(
                f"cannot read durable consumer {durable_name!r} ({type(exc).__name__})"
            ) from None
        return int(info.num_pending or 0) + int(info.num_ack_pending or 0)

    async def delete_durable(self, durable_name: str) -> None:
        """Remove a durable from the server (a replica leaving for good)."""
        durable_token(durable_name)
        consumer = self._consumers.get(durable_name)
        if consumer is not None:
            await consumer.stop()
        try:
            await self._js.delete_consumer(self.stream, durable_name)
        except nats.js.errors.NotFoundError:
            return
        except (nats.errors.Error, OSError) as exc:
            raise SourceUnavailable(
                f"cannot delete durable consumer {durable_name!r} ({type(exc).__name__})"
            ) from None

    async def close(self) -> None:
        """Stop this log's consumers; the bus stays open (it is the caller's)."""
        for consumer in list(self._consumers.values()):
            await consumer.stop()
