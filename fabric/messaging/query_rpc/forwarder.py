"""The gateway side of queries over the bus: the forwarder that sends a query to its
stage's runtime replicas and hands the result on as `QueryEngine.execute` would."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fabric.clock import elapsed_us
from fabric.context import RequestContext
from fabric.errors import (
    DeadlineExceeded,
    FabricError,
    IntegrityError,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    SourceUnavailable,
)
from fabric.messaging.bus import Bus, Message, Subscription, subject_token
from fabric.messaging.query_rpc.wire import (
    Frame,
    FrameKind,
    WireRequest,
    control_subject,
    decode_json,
    error_from_body,
    offload_policy,
    query_subject,
    reply_filter,
    reply_subject,
    request_of_reply,
    split_end,
)
from fabric.messaging.sealing import BusSealer, Purpose, RejectReason
from fabric.observability import tracing
from fabric.observability.access import current_call
from fabric.observability.logging import shorten
from fabric.query.compiler.reader import check_text
from fabric.query.compiler.statement import check_text_parameters
from fabric.query.engine import QueryRequest
from fabric.query.runs import Summary
from fabric.security.envelope import StreamCipher
from fabric.security.kms import Kms

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 8
"""Chunks a replica may have in flight, unacknowledged, per query."""
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2


@dataclass
class ForwarderStats:
    requests: int = 0
    attempts: int = 0
    retries: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    chunks_received: int = 0
    protocol_errors: int = 0


class _Retry(Exception):
    """This attempt failed in a way another attempt may fix (nothing was yielded)."""

    def __init__(self, error: FabricError) -> None:
        super().__init__(error.message)
        self.error = error


class _Inbox:
    """Frames of one request's reply stream, opened and queued in arrival order."""

    def __init__(
        self,
        forwarder: BusQueryForwarder,
        cipher: StreamCipher,
        tenant: str,
        stage: str,
        subject: str,
        window: int,
    ) -> None:
        self._forwarder = forwarder
        self._cipher = cipher
        self._tenant = tenant
        self._stage = stage
        self.subject = subject
        self._request_id = cipher.stream_id
        self._window = window
        self.queue: asyncio.Queue[Frame | FabricError] = asyncio.Queue()
        self._chunks_queued = 0
        self.failed = False

    def consumed_chunk(self) -> None:
        self._chunks_queued -= 1

    def on_message(self, msg: Message) -> None:
        if self.failed:
            return
        if msg.subject != self.subject:
            self._forwarder.sealer.reject(RejectReason.UNEXPECTED, msg.subject, len(msg.payload))
            return
        try:
            frame = self._forwarder._open(
                self._cipher, msg.payload, self._tenant, self._stage, self.subject
            )
        except FabricError:
            return  # counted by the sealer; a forged message changes nothing
        if frame.request_id != self._request_id:
            self._forwarder.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload))
            return
        if frame.kind == FrameKind.CHUNK:
            self._chunks_queued += 1
            if self._chunks_queued > self._window:
                self.failed = True
                self._forwarder.stats.protocol_errors += 1
                self.queue.put_nowait(
                    InternalError(
                        "a runtime replica sent more result chunks than the flow-control window "
                        "allows; the result was abandoned"
                    )
                )
                return
        self.queue.put_nowait(frame)


def _summary(body: dict[str, Any], started: float) -> Summary:
    """The Summary of an END frame's fields (time spent: the forwarder's own)."""
    try:
        return Summary(
            int(body["rows"]),
            bool(body["truncated"]),
            bool(body["from_cache"]),
            elapsed_us(started),
        )
    except (KeyError, TypeError, ValueError):
        raise InternalError("a runtime replica sent a malformed end of result") from None


class BusQueryForwarder:
    """Sends queries to the stage's runtime replicas over the bus.

    `execute(ctx, request, deadline)` yields the result's Arrow IPC stream as the
    replica's bytes (cut where the bus cut them, not at message boundaries), then one
    `Summary`, as the gRPC servicer takes from `QueryEngine.execute`. The
    stage is `ctx.stage`, the tenant `ctx.tenant`. `timeout`: longest silence accepted
    from a replica (acceptance, then between frames; replicas send heartbeats every
    `timeout / 3`). `retries`: extra attempts before the first result byte (see the
    module docstring). `window`: chunks in flight per query. `stall`: how long a replica
    waits for this forwarder's consumer to take chunks before it gives up.
    """

    def __init__(
        self,
        bus: Bus,
        kms: Kms,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        window: int = DEFAULT_WINDOW,
        stall: float = 60.0,
        backoff: float = 0.05,
        sealer: BusSealer | None = None,
        max_sql_length: int | None = None,
    ) -> None:
        if timeout <= 0 or stall <= 0 or backoff < 0:
            raise InvalidArgument("timeout and stall must be positive, backoff not negative")
        if retries < 0 or window < 1:
            raise InvalidArgument("retries must not be negative and window must be positive")
        self.bus = bus
        self.timeout = timeout
        self.retries = retries
        self.window = window
        self.stall = stall
        self.backoff = backoff
        self.max_sql_length = max_sql_length
        """The replicas' FABRIC_MAX_SQL_LENGTH: a longer text is refused here, before it
        is sealed and sent."""
        self.sealer = sealer or BusSealer(kms, max_message_bytes=bus.max_payload)
        self._offload = offload_policy(kms)
        self.stats = ForwarderStats()
        self.inbox = uuid.uuid4().hex
        """Names this forwarder's reply subjects: one subscription for every request's
        replies (`reply_filter`), not one per request."""
        self._inboxes: dict[bytes, _Inbox] = {}
        # Cancellations of requests whose caller left before the answer came (kept until
        # sent: the loop holds tasks weakly).
        self._late_cancels: set[asyncio.Task[None]] = set()
        self._inbox_sub: Subscription | None = None
        self._inbox_lock = asyncio.Lock()

    def snapshot(self) -> dict[str, float]:
        figures = {
            f"bus_forwarder_{name}": float(value) for name, value in vars(self.stats).items()
        }
        figures.update(self.sealer.snapshot())
        return figures

    async def _listen(self) -> None:
        """Subscribe to this forwarder's inbox, once (NATS keeps the subscription across
        reconnects)."""
        if self._inbox_sub is not None:
            return
        async with self._inbox_lock:
            if self._inbox_sub is None:
                self._inbox_sub = await self.bus.subscribe(reply_filter(self.inbox), self._route)

    async def _route(self, msg: Message) -> None:
        """Hand a reply to the request waiting for it; a reply for no request waiting
        (one that ended, or a forgery) is dropped."""
        request_id = request_of_reply(msg.subject)
        inbox = self._inboxes.get(request_id) if request_id is not None else None
        if inbox is not None:
            inbox.on_message(msg)

    async def close(self) -> None:
        """Leave the inbox (the bus stays open: it is the caller's)."""
        sub, self._inbox_sub = self._inbox_sub, None
        if sub is not None:
            await sub.unsubscribe()

    def _open(
        self, cipher: StreamCipher, payload: bytes, tenant: str, stage: str, subject: str
    ) -> Frame:
        """A reply frame of `cipher`'s stream: AES-GCM under the stream's key, on the
        event loop (a quarter of a millisecond per MiB; no KMS call)."""
        data = self.sealer.open_in(
            cipher,
            payload,
            tenant=tenant,
            stage=stage,
            subject=subject,
            purpose=Purpose.QUERY_REPLY,
        )
        try:
            return Frame.decode(data)
        except InvalidArgument as error:
            raise self.sealer.reject(RejectReason.MALFORMED, subject, len(payload), error) from None

    async def _start(
        self, request_id: bytes, frame: bytes, tenant: str, stage: str, subject: str
    ) -> tuple[StreamCipher, bytes]:
        """A new stream (one data key from the KMS) and its REQUEST, sealed with the key."""

        def start() -> tuple[StreamCipher, bytes]:
            cipher = self.sealer.start_stream(tenant=tenant, stage=stage, stream_id=request_id)
            sealed = self.sealer.seal_in(
                cipher,
                frame,
                tenant=tenant,
                stage=stage,
                subject=subject,
                purpose=Purpose.QUERY_REQUEST,
                with_key=True,
            )
            return cipher, sealed

        return await asyncio.to_thread(start) if self._offload(len(frame)) else start()

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the call's deadline passed before the result came")
        return remaining

    def _wait(self, deadline: float | None) -> float:
        remaining = self._remaining(deadline)
        return self.timeout if remaining is None else min(self.timeout, remaining)

    async def execute(
        self, ctx: RequestContext, request: QueryRequest, deadline: float | None = None
    ) -> AsyncIterator[bytes | Summary]:
        """Yield the result as Arrow IPC messages, then one Summary (as
        `QueryEngine.execute`); errors are the replica's, re-raised as the same class."""
        # Refused here, before anything is sealed and sent, as the replica would.
        check_text(request.sql, self.max_sql_length)
        check_text_parameters(request.params)
        started = time.perf_counter()
        self.stats.requests += 1
        attempt = 0
        outcome = "failed"
        call = current_call()
        if call is not None:
            call.identify(ctx.principal, ctx.tenant, ctx.stage)
            call.connection = shorten(request.connection)
        try:
            while True:
                attempt += 1
                self.stats.attempts += 1
                attempt_items = self._attempt(ctx, request, deadline, started)
                forwarding = tracing.span(
                    "fabric.bus.forward",
                    {
                        "messaging.system": "nats",
                        "fabric.stage": ctx.stage,
                        "fabric.connection": shorten(request.connection),
                        "fabric.attempt": attempt,
                    },
                )
                try:
                    with forwarding:
                        async for item in attempt_items:
                            if call is not None:
                                if isinstance(item, Summary):
                                    call.rows, call.from_cache = item.rows, item.from_cache
                                else:
                                    call.bytes += len(item)
                            yield item
                    outcome = "completed"
                    return
                except _Retry as retry:
                    if attempt > self.retries:
                        raise retry.error from None
                    self.stats.retries += 1
                    pause = self.backoff * (2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                    remaining = self._remaining(deadline)
                    if remaining is not None and pause >= remaining:
                        raise retry.error from None
                    log.debug(
                        "bus query attempt %d failed (%s); retrying", attempt, retry.error.code
                    )
                    await asyncio.sleep(pause)
                finally:
                    await attempt_items.aclose()  # type: ignore[attr-defined]
        except (GeneratorExit, asyncio.CancelledError):
            outcome = "cancelled"
            raise
        finally:
            if outcome == "completed":
                self.stats.completed += 1
            elif outcome == "cancelled":
                self.stats.cancelled += 1
            else:
                self.stats.failed += 1

    async def _attempt(
        self,
        ctx: RequestContext,
        request: QueryRequest,
        deadline: float | None,
        started: float,
    ) -> AsyncIterator[bytes | Summary]:
        tenant, stage = ctx.tenant, ctx.stage
        subject = query_subject(tenant, stage)
        request_id = uuid.uuid4().bytes
        reply = reply_subject(tenant, stage, self.inbox, request_id)
        remaining = self._remaining(deadline)
        wire = WireRequest(
            request_id,
            tenant,
            stage,
            ctx.role.value,
            ctx.principal,
            request,
            remaining,
            time.time(),
            reply,
            self.window,
            self.timeout / 3,
            self.stall,
            call.request_id if (call := current_call()) is not None else "",
        )
        frame = Frame(FrameKind.REQUEST, request_id, 0, wire.encode()).encode()
        cipher, sealed = await self._start(request_id, frame, tenant, stage, subject)
        inbox = _Inbox(self, cipher, tenant, stage, reply, self.window)
        if len(sealed) > self.bus.max_payload:
            raise ResourceExhausted(
                f"the query and its parameters take {len(sealed)} bytes sealed, over the "
                f"bus maximum of {self.bus.max_payload}; use fewer or smaller parameters"
            )
        await self._listen()
        self._inboxes[request_id] = inbox
        control: str | None = None
        finished = False
        yielded = False
        try:
            requesting = asyncio.ensure_future(
                self.bus.request(
                    subject, sealed, self._wait(deadline), headers=tracing.inject() or None
                )
            )
            try:
                answer = await asyncio.shield(requesting)
            except (SourceUnavailable, DeadlineExceeded) as unanswered:
                raise _Retry(unanswered) from None
            except asyncio.CancelledError:
                # The caller left before the answer named the replica that took the
                # query: cancel it there once the answer comes.
                self._cancel_when_answered(requesting, cipher, request_id, tenant, stage, inbox)
                raise
            accepted = self._open(cipher, answer, tenant, stage, inbox.subject)
            if accepted.request_id != request_id:
                raise IntegrityError("the acceptance answers another request")
            if accepted.kind == FrameKind.ERROR:
                refused, retryable = error_from_body(accepted.body)
                raise _Retry(refused) if retryable else refused
            if accepted.kind == FrameKind.END:
                # The whole result in the answer: a small result is one reply.
                if accepted.seq != 0:
                    self.stats.protocol_errors += 1
                    raise SourceUnavailable(
                        "a runtime replica answered with the end of a result it never sent; "
                        "retry the query"
                    )
                body, tail = split_end(accepted.body)
                if tail:
                    yield tail
                finished = True
                yield _summary(body, started)
                return
            if accepted.kind != FrameKind.ACCEPT:
                raise InternalError("a runtime replica answered a query with an unexpected frame")
            replica = subject_token(str(decode_json(accepted.body).get("replica")), "replica id")
            control = control_subject(tenant, stage, replica)
            expected = 0
            acked = 0
            while True:
                wait = self._wait(deadline)
                try:
                    item = await asyncio.wait_for(inbox.queue.get(), wait)
                except TimeoutError:
                    self._remaining(deadline)  # the caller's deadline: DeadlineExceeded
                    silent = SourceUnavailable(
                        f"the runtime replica sent nothing for {wait:g}s; the result is incomplete"
                    )
                    if yielded:
                        raise silent from None
                    raise _Retry(silent) from None
                if isinstance(item, FabricError):
                    raise item
                if item.kind == FrameKind.HEARTBEAT:
                    continue
                if item.kind == FrameKind.CHUNK:
                    inbox.consumed_chunk()
                    if item.seq != expected:
                        self.stats.protocol_errors += 1
                        what = "a duplicate" if item.seq < expected else "a gap"
                        raise SourceUnavailable(
                            f"the result stream has {what} at chunk {expected} (got "
                            f"{item.seq}); the result is incomplete, retry the query"
                        )
                    expected += 1
                    self.stats.chunks_received += 1
                    if item.body:
                        # The replica's bytes of the IPC stream, handed on as they are.
                        yielded = True
                        yield item.body
                    if expected - acked >= max(1, self.window // 2):
                        acked = expected
                        await self._control(
                            cipher, FrameKind.ACK, request_id, acked, tenant, stage, control
                        )
                    continue
                if item.kind == FrameKind.ERROR:
                    failure, retryable = error_from_body(item.body)
                    if retryable and not yielded:
                        raise _Retry(failure)
                    raise failure
                if item.kind == FrameKind.END:
                    if item.seq != expected:
                        self.stats.protocol_errors += 1
                        raise SourceUnavailable(
                            f"the result stream ended after {expected} of {item.seq} chunks; "
                            "the result is incomplete, retry the query"
                        )
                    body, tail = split_end(item.body)
                    if tail:
                        yield tail
                    finished = True
                    yield _summary(body, started)
                    return
                raise InternalError("a runtime replica sent an unexpected frame")
        finally:
            inbox.failed = True
            del self._inboxes[request_id]
            if not finished and control is not None:
                # The consumer went away or the stream failed: stop the source query.
                with contextlib.suppress(FabricError):
                    await self._control(
                        cipher, FrameKind.CANCEL, request_id, 0, tenant, stage, control
                    )

    def _cancel_when_answered(
        self,
        requesting: asyncio.Future[bytes],
        cipher: StreamCipher,
        request_id: bytes,
        tenant: str,
        stage: str,
        inbox: _Inbox,
    ) -> None:
        """Send CANCEL to the replica whose ACCEPT answers `requesting`, when it comes
        (nothing to cancel for a refusal or a whole result)."""

        async def cancel_there() -> None:
            try:
                answer = await requesting
                accepted = self._open(cipher, answer, tenant, stage, inbox.subject)
                if accepted.kind != FrameKind.ACCEPT or accepted.request_id != request_id:
                    return
                replica = subject_token(
                    str(decode_json(accepted.body).get("replica")), "replica id"
                )
                control = control_subject(tenant, stage, replica)
                await self._control(cipher, FrameKind.CANCEL, request_id, 0, tenant, stage, control)
            except (FabricError, asyncio.CancelledError):
                return  # unanswered, or the bus is gone: the replica's own deadline holds

        task = asyncio.get_running_loop().create_task(cancel_there())
        self._late_cancels.add(task)
        task.add_done_callback(self._late_cancels.discard)

    async def _control(
        self,
        cipher: StreamCipher,
        kind: FrameKind,
        request_id: bytes,
        seq: int,
        tenant: str,
        stage: str,
        subject: str,
    ) -> None:
        frame = Frame(kind, request_id, seq).encode()
        sealed = self.sealer.seal_in(
            cipher,
            frame,
            tenant=tenant,
            stage=stage,
            subject=subject,
            purpose=Purpose.QUERY_CONTROL,
        )
        await self.bus.publish(subject, sealed)
