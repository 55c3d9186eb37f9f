"""The embedded bus and event log: the same contract as NATS, in the memory of one process.

Used by `fabric serve --role all`, the demo and unit tests. Semantics follow NATS where a
caller could tell the difference: per-subscription ordering, queue groups (one member
per message, round robin here), no-responders on a request nobody listens to, a
`max_payload` that is refused rather than truncated; and for events JetStream's
durable consumers (a cursor per durable name over an append-only log, acknowledgement
after the handler, redelivery with backoff on error).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field

from fabric.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NoResponders,
    NotFound,
    SourceUnavailable,
)
from fabric.messaging.bus import (
    DEFAULT_MAX_PAYLOAD,
    Handler,
    Headers,
    Message,
    Responder,
    checked_outgoing,
    events_filter,
    subject_matches,
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

_INBOX_PREFIX = "_INBOX."
_STOP = object()


class _InProcessSubscription:
    """One subscriber: its own queue and task, so its messages are handled in order."""

    def __init__(self, bus: InProcessBus, subject: str, queue: str | None, handler: Handler):
        self._bus = bus
        self._subject = subject
        self._queue = queue
        self._handler = handler
        self._inbox: asyncio.Queue[object] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bus-sub:{subject}")
        self.active = True

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def queue(self) -> str | None:
        return self._queue

    @property
    def task(self) -> asyncio.Task[None]:
        return self._task

    def deliver(self, message: Message) -> None:
        self._inbox.put_nowait(message)

    def drain(self) -> None:
        """End after the messages already queued."""
        self._inbox.put_nowait(_STOP)

    async def _run(self) -> None:
        while True:
            item = await self._inbox.get()
            if item is _STOP:
                return
            assert isinstance(item, Message)
            try:
                await self._handler(item)
            except Exception as exc:  # a handler's failure must not end the subscription
                log.error("bus handler for %s failed (%s)", self._subject, type(exc).__name__)

    async def unsubscribe(self) -> None:
        """Stop delivery; messages already queued for this subscriber are dropped, as on
        NATS."""
        if not self.active:
            return
        self.active = False
        self._bus._remove(self)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class InProcessBus:
    """`Bus` in memory. Construct inside the running event loop's lifetime; handlers run
    as tasks of that loop."""

    def __init__(
        self, *, max_payload: int = DEFAULT_MAX_PAYLOAD, drain_timeout: float = 5.0
    ) -> None:
        if max_payload < 1:
            raise InvalidArgument("max_payload must be positive")
        self._max_payload = max_payload
        self._drain_timeout = drain_timeout
        self._subs: list[_InProcessSubscription] = []
        self._inboxes: dict[str, asyncio.Future[Message]] = {}
        self._round_robin: dict[tuple[str, str], int] = {}
        self._closed = False

    @property
    def max_payload(self) -> int:
        return self._max_payload

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise SourceUnavailable(f"the bus is closed; cannot {what}")

    async def publish(self, subject: str, payload: bytes, headers: Headers | None = None) -> None:
        self._check_open("publish")
        checked = checked_outgoing(subject, payload, headers, self._max_payload)
        self._dispatch(Message(subject, bytes(payload), checked))

    def _dispatch(self, message: Message, reply_subject: str | None = None) -> int:
        """Hand the message to every plain subscriber and one member per queue group;
        returns how many subscribers got it."""
        inbox = self._inboxes.get(message.subject)
        if inbox is not None:
            if not inbox.done():
                inbox.set_result(message)
            return 1
        if reply_subject is not None:
            message = Message(
                message.subject,
                message.payload,
                message.headers,
                reply_subject,
                self._responder(reply_subject),
            )
        groups: dict[str, list[_InProcessSubscription]] = {}
        delivered = 0
        for sub in self._subs:
            if not subject_matches(sub.subject, message.subject):
                continue
            if sub.queue is None:
                sub.deliver(message)
                delivered += 1
            else:
                groups.setdefault(sub.queue, []).append(sub)
        for queue, members in groups.items():
            key = (members[0].subject, queue)
            turn = self._round_robin.get(key, 0)
            members[turn % len(members)].deliver(message)
            self._round_robin[key] = turn + 1
            delivered += 1
        return delivered

    def _responder(self, reply_subject: str) -> Responder:
        async def respond(payload: bytes, headers: Headers | None) -> None:
            await self.publish(reply_subject, payload, headers)

        return respond

    async def subscribe(
        self, subject: str, handler: Handler, queue: str | None = None
    ) -> _InProcessSubscription:
        self._check_open("subscribe")
        validate_subject(subject, wildcards=True)
        sub = _InProcessSubscription(self, subject, validate_queue(queue), handler)
        self._subs.append(sub)
        return sub

    def _remove(self, sub: _InProcessSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subs.remove(sub)

    async def request(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: Headers | None = None,
    ) -> bytes:
        self._check_open("send a request")
        checked = checked_outgoing(subject, payload, headers, self._max_payload, timeout=timeout)
        inbox = f"{_INBOX_PREFIX}{uuid.uuid4().hex}"
        reply: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._inboxes[inbox] = reply
        try:
            if self._dispatch(Message(subject, bytes(payload), checked), inbox) == 0:
                raise NoResponders(f"no responders on {subject!r}")
            try:
                message = await asyncio.wait_for(reply, timeout)
            except TimeoutError:
                raise DeadlineExceeded(f"no reply on {subject!r} within {timeout:g}s") from None
            return message.payload
        finally:
            self._inboxes.pop(inbox, None)

    async def close(self) -> None:
        """Refuse new calls, let every subscriber handle what it was already given (as a
        NATS drain does, bounded by `drain_timeout`), then stop them."""
        if self._closed:
            return
        self._closed = True
        for inbox in self._inboxes.values():
            if not inbox.done():
                inbox.set_exception(SourceUnavailable("the bus closed before the reply came"))
        subs = list(self._subs)
        for sub in subs:
            sub.drain()
        if subs:
            await asyncio.wait([sub.task for sub in subs], timeout=self._drain_timeout)
        for sub in subs:
            await sub.unsubscribe()


@dataclass
class _Durable:
    """Where one durable consumer stands in the log."""

    name: str
    filter: str
    next_seq: int
    """First sequence number never yet delivered."""
    pending: dict[int, tuple[float, int]] = field(default_factory=dict)
    """Delivered but not acknowledged: seq -> (loop time it is due again, deliveries)."""
    consumer: _InProcessEventConsumer | None = None


class _InProcessEventConsumer:
    def __init__(self, log_: InProcessEventLog, durable: _Durable, handler: EventHandler):
        self._log = log_
        self._durable = durable
        self._handler = handler
        self.wake = asyncio.Event()
        self._stopping = False
        self._task = watch_task(
            asyncio.get_running_loop().create_task(self._run(), name=f"events:{durable.name}")
        )

    @property
    def durable_name(self) -> str:
        return self._durable.name

    def _next(self, now: float) -> tuple[int, int] | float | None:
        """The next (seq, deliveries so far) to deliver now; else seconds until a pending
        redelivery is due; else None (wait for a publish)."""
        durable = self._durable
        first = self._log._first_seq
        for seq in [s for s in durable.pending if s < first]:
            del durable.pending[seq]  # trimmed from the log by retention
        due = [(seq, n) for seq, (at, n) in durable.pending.items() if at <= now]
        if due:
            return min(due)
        durable.next_seq = max(durable.next_seq, first)
        while durable.next_seq < self._log._next_seq:
            seq = durable.next_seq
            durable.next_seq += 1
            if subject_matches(durable.filter, self._log._event(seq).subject):
                return seq, 0
        if durable.pending:
            return max(0.0, min(at for at, _ in durable.pending.values()) - now)
        return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self._log.policy
        durable = self._durable
        while not self._stopping:
            self.wake.clear()
            nxt = self._next(loop.time())
            if not isinstance(nxt, tuple):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), nxt)
                continue
            seq, deliveries = nxt
            deliveries += 1
            # Recorded before the handler runs: if the consumer stops mid-handler, the
            # event is still unacknowledged and comes again on resume.
            durable.pending[seq] = (loop.time(), deliveries)
            event = self._log._event(seq)
            try:
                await self._handler(event)
            except Exception as exc:
                if deliveries >= policy.max_deliver:
                    del durable.pending[seq]
                    log.error(
                        "platform event %s (%s) dropped by %s after %d failed deliveries (%s)",
                        event.id,
                        event.kind.value,
                        durable.name,
                        deliveries,
                        type(exc).__name__,
                    )
                else:
                    durable.pending[seq] = (loop.time() + policy.delay(deliveries), deliveries)
                    log.warning(
                        "platform event %s (%s) failed in %s (%s); redelivery %d",
                        event.id,
                        event.kind.value,
                        durable.name,
                        type(exc).__name__,
                        deliveries + 1,
                    )
            else:
                durable.pending.pop(seq, None)  # acknowledged

    async def stop(self) -> None:
        """Stop after the event being applied, if any (cancelled if it takes longer than
        `ack_wait`); the durable keeps its position for the next `consume`."""
        if self._durable.consumer is self:
            self._durable.consumer = None
        self._stopping = True
        self.wake.set()
        await finish_task(self._task, self._log.policy.ack_wait)


class InProcessEventLog:
    """`EventLog` in memory: an append-only log (oldest events dropped past
    `max_events`) with a cursor per durable name. Durables live as long as this object,
    so a consumer stopped and started again in the same process resumes."""

    def __init__(
        self,
        *,
        policy: RedeliveryPolicy = DEFAULT_REDELIVERY,
        max_events: int = 100_000,
    ) -> None:
        if max_events < 1:
            raise InvalidArgument("max_events must be at least 1")
        self.policy = policy
        self._max_events = max_events
        self._events: deque[PlatformEvent] = deque()
        self._ids: set[str] = set()
        self._first_seq = 1
        self._next_seq = 1
        self._durables: dict[str, _Durable] = {}
        self._closed = False

    def _event(self, seq: int) -> PlatformEvent:
        return self._events[seq - self._first_seq]

    async def publish_event(self, event: PlatformEvent) -> None:
        if self._closed:
            raise SourceUnavailable("the event log is closed; the event was not published")
        if not isinstance(event, PlatformEvent):
            raise InvalidArgument("publish_event takes a PlatformEvent")
        if event.id in self._ids:
            return  # the same event published twice is stored once (as JetStream dedup)
        self._events.append(event)
        self._ids.add(event.id)
        self._next_seq += 1
        while len(self._events) > self._max_events:
            self._ids.discard(self._events.popleft().id)
            self._first_seq += 1
        for durable in self._durables.values():
            if durable.consumer is not None:
                durable.consumer.wake.set()

    async def consume(
        self,
        durable_name: str,
        handler: EventHandler,
        *,
        tenant: str | None = None,
    ) -> _InProcessEventConsumer:
        if self._closed:
            raise SourceUnavailable("the event log is closed")
        durable_token(durable_name)
        wanted = events_filter(tenant)
        durable = self._durables.get(durable_name)
        if durable is None:
            durable = _Durable(durable_name, wanted, next_seq=self._next_seq)
            self._durables[durable_name] = durable
        elif durable.filter != wanted:
            raise FailedPrecondition(
                f"durable {durable_name!r} exists with another filter; use another name"
            )
        if durable.consumer is not None:
            raise FailedPrecondition(
                f"durable {durable_name!r} is already being consumed in this process"
            )
        consumer = _InProcessEventConsumer(self, durable, handler)
        durable.consumer = consumer
        return consumer

    async def unacknowledged(self, durable_name: str) -> int:
        """Events delivered to the durable and not acknowledged yet (being handled, or
        waiting for redelivery)."""
        durable = self._durables.get(durable_token(durable_name))
        if durable is None:
            raise NotFound(f"no durable consumer {durable_name!r}")
        return len(durable.pending)

    async def outstanding(self, durable_name: str) -> int:
        durable = self._durables.get(durable_token(durable_name))
        if durable is None:
            raise NotFound(f"no durable consumer {durable_name!r}")
        undelivered = sum(
            1
            for seq in range(max(durable.next_seq, self._first_seq), self._next_seq)
            if subject_matches(durable.filter, self._event(seq).subject)
        )
        return undelivered + len(durable.pending)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for durable in self._durables.values():
            if durable.consumer is not None:
                await durable.consumer.stop()
