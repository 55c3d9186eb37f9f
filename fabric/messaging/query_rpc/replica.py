"""The runtime side of queries over the bus: a replica that serves its stage's queries
with a `QueryEngine` and streams the results back under flow control."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from fabric.context import RequestContext, Role
from fabric.errors import (
    Cancelled,
    DeadlineExceeded,
    FabricError,
    InternalError,
    InvalidArgument,
    ResourceExhausted,
    SourceUnavailable,
)
from fabric.messaging.bus import (
    EVENTS_TOKEN,
    SUBJECT_ROOT,
    Bus,
    Message,
    Subscription,
    subject_token,
)
from fabric.messaging.query_rpc.wire import (
    CONTROL_KIND,
    FRAME_HEADER,
    Frame,
    FrameKind,
    WireRequest,
    control_subject,
    encode_json,
    end_body,
    error_body,
    offload_large,
    offload_policy,
    query_subject,
    stage_query_filter,
)
from fabric.messaging.sealing import BusSealer, Purpose, RejectReason
from fabric.observability import tracing
from fabric.observability.access import AccessLog, CallRecord
from fabric.query.engine import QueryEngine, QueryRequest
from fabric.query.runs import Summary
from fabric.security.envelope import StreamCipher, stream_id_of
from fabric.security.kms import Kms

log = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT = 64
DEFAULT_MAX_REQUEST_AGE = 120.0
DEFAULT_LINGER = 0.05
_SEEN_IDS = 65_536


@dataclass
class ReplicaStats:
    """What one replica did; `served` counts queries answered to the end."""

    accepted: int = 0
    served: int = 0
    failed: int = 0
    cancelled: int = 0
    stalled: int = 0
    busy: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0


@dataclass
class _Serving:
    """One request being served: its task and its flow-control state."""

    request: WireRequest
    control: str
    cipher: StreamCipher
    answer: Message
    """The request, answered by the stream's first frame (`_ReplyStream.send`)."""
    acked: int = 0
    credit: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None


class _ReplyStream:
    """Publishes one request's reply frames in order: chunks under the window, the
    final END or ERROR, heartbeats when quiet.

    The first frame answers the request itself: END (or ERROR) when the whole result
    is there before anything else had to go out, so a small result costs one reply;
    otherwise ACCEPT, then the stream on the reply inbox. The request is answered
    within `linger` seconds in any case (`tick`), so the forwarder soon knows which
    replica serves it."""

    def __init__(self, replica: RuntimeReplica, serving: _Serving) -> None:
        self._replica = replica
        self._serving = serving
        request = serving.request
        self._subject = request.reply
        self._budget = replica.chunk_budget
        self._buffer = bytearray()
        self._seq = 0
        self._lock = asyncio.Lock()
        self._answered = False
        loop = asyncio.get_running_loop()
        self._started = loop.time()
        self._last_sent = loop.time()
        self._last_flush = loop.time()

    async def send(self, kind: FrameKind, seq: int = 0, body: bytes = b"") -> None:
        if not self._answered and kind in (FrameKind.END, FrameKind.ERROR):
            self._answered = True
            await self._publish(kind, seq, body, answer=True)
            return
        await self._accept()
        await self._publish(kind, seq, body)

    async def _accept(self) -> None:
        """Answer the request with ACCEPT, unless it was answered already."""
        if not self._answered:
            self._answered = True
            accept = encode_json({"replica": self._replica.replica_id})
            await self._publish(FrameKind.ACCEPT, 0, accept, answer=True)

    async def _publish(
        self, kind: FrameKind, seq: int, body: bytes, *, answer: bool = False
    ) -> None:
        replica = self._replica
        serving = self._serving
        request = serving.request
        frame = Frame(kind, request.request_id, seq, body).encode()
        sealed = await replica._seal(
            serving.cipher, frame, request, self._subject, Purpose.QUERY_REPLY
        )
        if answer:
            await serving.answer.respond(sealed)
        else:
            await replica.bus.publish(self._subject, sealed)
        self._last_sent = asyncio.get_running_loop().time()
        if kind == FrameKind.CHUNK:
            replica.stats.chunks_sent += 1
            replica.stats.bytes_sent += len(sealed)

    async def add(self, message: bytes) -> None:
        """Append the next bytes of the result's IPC stream; chunks are cut at the
        budget wherever it falls (the forwarder passes the bytes on as they are)."""
        async with self._lock:
            self._buffer += message
            while len(self._buffer) >= self._budget:
                piece = bytes(self._buffer[: self._budget])
                del self._buffer[: self._budget]
                await self._chunk(piece)

    async def _chunk(self, body: bytes) -> None:
        await self._wait_credit(self._seq)
        await self.send(FrameKind.CHUNK, self._seq, body)
        self._seq += 1
        self._last_flush = asyncio.get_running_loop().time()

    async def _wait_credit(self, seq: int) -> None:
        serving = self._serving
        request = serving.request
        while seq >= serving.acked + request.window:
            serving.credit.clear()
            try:
                await asyncio.wait_for(serving.credit.wait(), request.stall)
            except TimeoutError:
                serving.cancel_reason = "stalled"
                raise _Stalled from None

    async def flush(self) -> None:
        async with self._lock:
            if self._buffer:
                piece = bytes(self._buffer)
                self._buffer.clear()
                await self._chunk(piece)

    async def finish(self, summary: Summary) -> None:
        """END with the summary and what is left of the result (a small result is then
        one frame), or a last CHUNK first when the two do not fit one frame."""
        async with self._lock:
            tail = bytes(self._buffer)
            self._buffer.clear()
            body = end_body(summary, tail)
            if len(body) > self._budget:
                await self._chunk(tail)
                body = end_body(summary, b"")
            await self.send(FrameKind.END, self._seq, body)

    async def error(self, error: FabricError, retryable: bool = False) -> None:
        await self.send(FrameKind.ERROR, self._seq, error_body(error, retryable))

    async def tick(self, linger: float) -> None:
        """Runs beside the query: flushes a partial chunk the source has left waiting
        for `linger` seconds, and sends a heartbeat when nothing went out for a while.
        Everything it sends goes out under the stream's lock, so chunk numbers stay in
        order with the query's own sends."""
        heartbeat = self._serving.request.heartbeat
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(linger, heartbeat))
            async with self._lock:
                if not self._answered and loop.time() - self._started >= linger:
                    await self._accept()
                if self._buffer and loop.time() - self._last_flush >= linger:
                    piece = bytes(self._buffer)
                    self._buffer.clear()
                    await self._chunk(piece)
                if loop.time() - self._last_sent >= heartbeat:
                    await self.send(FrameKind.HEARTBEAT)

    async def stop_ticker(self, ticker: asyncio.Task[None]) -> None:
        """Stop `tick` between two sends (never in the middle of one)."""
        async with self._lock:
            ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await ticker


class _Stalled(Exception):
    """The forwarder gave no credit for `stall` seconds."""


class RuntimeReplica:
    """Serves a stage's queries from the bus with a `QueryEngine`.

    `tenants`: None serves every tenant of the stage (one wildcard subscription
    `fabric.*.<stage>.query`), else a subscription per listed tenant. Replicas of one
    stage share the queue group `queue` and must be configured alike. `kms` must be the
    one (or hold the keys of the one) the forwarders seal with. At most
    `max_concurrent` queries run at once; more are answered "busy" (retryable, so the
    forwarder tries another replica). Requests older than `max_request_age` seconds
    (send time, wall clock) or whose deadline has passed are refused, as are request
    ids seen before: a captured request replayed later is not run again.
    """

    def __init__(
        self,
        bus: Bus,
        engine: QueryEngine,
        kms: Kms,
        *,
        stage: str,
        tenants: list[str] | tuple[str, ...] | None = None,
        queue: str | None = None,
        replica_id: str | None = None,
        sealer: BusSealer | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_request_age: float = DEFAULT_MAX_REQUEST_AGE,
        linger: float = DEFAULT_LINGER,
        access: AccessLog | None = None,
    ) -> None:
        self.bus = bus
        # Each query served gets an access-log line (protocol `bus`) under the request id
        # of the call the platform forwards; without `access`, a record but no line.
        self.access = access or AccessLog(enabled=False)
        self.engine = engine
        self.stage = subject_token(stage, "stage")
        self.tenants = None if tenants is None else tuple(tenants)
        if self.tenants is not None:
            for tenant in self.tenants:
                query_subject(tenant, self.stage)  # validates the tenant token
        self.queue = subject_token(queue or f"fabric-runtime-{self.stage}", "queue group")
        self.replica_id = subject_token(replica_id or uuid.uuid4().hex[:16], "replica id")
        self.sealer = sealer or BusSealer(kms, max_message_bytes=bus.max_payload)
        self._offload = offload_policy(kms)
        if max_concurrent < 1 or max_request_age <= 0 or linger <= 0:
            raise InvalidArgument("max_concurrent, max_request_age and linger must be positive")
        self.max_concurrent = max_concurrent
        self.max_request_age = max_request_age
        self.linger = linger
        self.stats = ReplicaStats()
        self._serving: dict[bytes, _Serving] = {}
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._request_subs: list[Subscription] = []
        self._control_subs: list[Subscription] = []
        self._started = False

    @property
    def chunk_budget(self) -> int:
        """Bytes of result data per chunk: the bus's max payload less the seal and frame."""
        budget = self.bus.max_payload - self.sealer.overhead - FRAME_HEADER.size
        if budget < 1024:
            raise ResourceExhausted("the bus's max_payload is too small to carry results")
        return budget

    @property
    def in_flight(self) -> int:
        return len(self._serving)

    async def start(self) -> None:
        """Subscribe (control subject first, so no credit is ever missed)."""
        if self._started:
            return
        self._started = True
        if self.tenants is None:
            controls = [f"{SUBJECT_ROOT}.*.{self.stage}.{CONTROL_KIND}.{self.replica_id}"]
            requests = [stage_query_filter(self.stage)]
        else:
            controls = [control_subject(t, self.stage, self.replica_id) for t in self.tenants]
            requests = [query_subject(t, self.stage) for t in self.tenants]
        for subject in controls:
            self._control_subs.append(await self.bus.subscribe(subject, self._on_control))
        for subject in requests:
            self._request_subs.append(
                await self.bus.subscribe(subject, self._on_request, queue=self.queue)
            )
        log.info(
            "runtime replica %s serving stage %s (queue %s)",
            self.replica_id,
            self.stage,
            self.queue,
        )

    async def stop(self, grace: float = 10.0) -> None:
        """Leave the queue group (no new requests), let queries in flight finish for
        `grace` seconds, then cancel the rest: their forwarders get a retryable error."""
        leaving, self._request_subs = self._request_subs, []
        for sub in leaving:  # a request still arriving meanwhile is answered "busy"
            await sub.unsubscribe()
        tasks = [s.task for s in self._serving.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for serving in list(self._serving.values()):
            if serving.task is not None and not serving.task.done():
                serving.cancel_reason = "shutdown"
                serving.task.cancel()
        tasks = [s.task for s in self._serving.values() if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for sub in self._control_subs:
            await sub.unsubscribe()
        self._control_subs.clear()
        self._started = False

    async def __aenter__(self) -> RuntimeReplica:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def snapshot(self) -> dict[str, float]:
        """Counters for metrics: queries by outcome, chunks, rejected messages."""
        figures = {f"bus_replica_{name}": float(value) for name, value in vars(self.stats).items()}
        figures["bus_replica_in_flight"] = float(len(self._serving))
        figures.update(self.sealer.snapshot())
        return figures

    # -- internals -----------------------------------------------------------------------

    async def _seal(
        self,
        cipher: StreamCipher,
        data: bytes,
        request: WireRequest,
        subject: str,
        purpose: Purpose,
    ) -> bytes:
        """Seal a frame of `request`'s stream (its key is held: no KMS call)."""
        seal = functools.partial(
            self.sealer.seal_in,
            cipher,
            data,
            tenant=request.tenant,
            stage=request.stage,
            subject=subject,
            purpose=purpose,
        )
        return await asyncio.to_thread(seal) if offload_large(len(data)) else seal()

    def _tenant_of(self, subject: str) -> str | None:
        tokens = subject.split(".")
        if len(tokens) < 4 or tokens[0] != SUBJECT_ROOT or tokens[2] != self.stage:
            return None
        tenant = tokens[1]
        if tenant == EVENTS_TOKEN or (self.tenants is not None and tenant not in self.tenants):
            return None
        return tenant

    def _frame(self, msg: Message, data: bytes) -> Frame | None:
        """The frame an opened message carries; None (counted, logged without content)
        when it is not one."""
        try:
            return Frame.decode(data)
        except InvalidArgument as error:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload), error)
            return None

    async def _accept(self, msg: Message) -> tuple[str, StreamCipher, Frame] | None:
        """A request's tenant, its stream's cipher (one unwrap by the KMS) and its frame;
        None when the subject is not one this replica serves, or the message does not
        open or decode (counted and logged, without content, by the sealer)."""
        tenant = self._tenant_of(msg.subject)
        if tenant is None:
            self.sealer.reject(RejectReason.UNEXPECTED, msg.subject, len(msg.payload))
            return None
        accept = functools.partial(
            self.sealer.accept_stream,
            msg.payload,
            tenant=tenant,
            stage=self.stage,
            subject=msg.subject,
            purpose=Purpose.QUERY_REQUEST,
        )
        try:
            if self._offload(len(msg.payload)):
                cipher, data = await asyncio.to_thread(accept)
            else:
                cipher, data = accept()
        except FabricError:
            return None  # counted and logged (without content) by the sealer
        frame = self._frame(msg, data)
        if frame is None:
            return None
        if frame.request_id != cipher.stream_id:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload))
            return None
        return tenant, cipher, frame

    async def _on_request(self, msg: Message) -> None:
        opened = await self._accept(msg)
        if opened is None:
            return
        tenant, cipher, frame = opened
        try:
            if frame.kind != FrameKind.REQUEST:
                raise InvalidArgument("not a request frame")
            request = WireRequest.decode(frame, tenant, self.stage)
        except InvalidArgument as error:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload), error)
            return
        age = time.time() - request.sent_at
        if abs(age) > self.max_request_age or (
            request.timeout is not None and request.timeout <= age
        ):
            self.sealer.reject(RejectReason.EXPIRED, msg.subject, len(msg.payload))
            return
        if request.request_id in self._seen:
            self.sealer.reject(RejectReason.DUPLICATE, msg.subject, len(msg.payload))
            return
        self._seen[request.request_id] = None
        while len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)
        if len(self._serving) >= self.max_concurrent or not self._request_subs:
            self.stats.busy += 1
            await self._answer(
                msg,
                request,
                cipher,
                FrameKind.ERROR,
                error_body(
                    ResourceExhausted(
                        f"runtime replica {self.replica_id} is busy; another replica may serve"
                    ),
                    retryable=True,
                ),
            )
            return
        serving = _Serving(
            request, control_subject(tenant, self.stage, self.replica_id), cipher, msg
        )
        self._serving[request.request_id] = serving
        self.stats.accepted += 1
        serving.task = asyncio.get_running_loop().create_task(
            self._serve(serving), name=f"bus-query:{request.request_id.hex()}"
        )

    async def _answer(
        self,
        msg: Message,
        request: WireRequest,
        cipher: StreamCipher,
        kind: FrameKind,
        body: bytes,
    ) -> None:
        """Reply to the request itself (sealed for its reply inbox subject)."""
        frame = Frame(kind, request.request_id, 0, body).encode()
        sealed = await self._seal(cipher, frame, request, request.reply, Purpose.QUERY_REPLY)
        await msg.respond(sealed)

    async def _serve(self, serving: _Serving) -> None:
        request = serving.request
        with (
            self.access.call("bus", "fabric.query", request.call_id) as record,
            tracing.span(
                "fabric.bus.serve",
                {"messaging.system": "nats", "fabric.replica": self.replica_id},
                parent=tracing.extract(serving.answer.headers),
            ) as traced,
        ):
            await self._serve_recorded(serving, record)
            if record.status != "OK":
                traced.fail(record.status)

    async def _serve_recorded(self, serving: _Serving, record: CallRecord) -> None:
        request = serving.request
        stream = _ReplyStream(self, serving)
        ctx = RequestContext(
            tenant=request.tenant,
            stage=request.stage,
            role=Role(request.role),
            principal=request.principal,
        )
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        ticker = asyncio.get_running_loop().create_task(stream.tick(self.linger))
        try:
            try:
                async with asyncio.timeout(request.timeout):
                    summary = await self._run(ctx, request.query, deadline, stream)
            except TimeoutError:
                raise DeadlineExceeded(
                    "the query ran past the caller's deadline on the runtime replica; "
                    "it was cancelled"
                ) from None
            await stream.stop_ticker(ticker)
            await stream.finish(summary)
            self.stats.served += 1
        except FabricError as error:
            self.stats.failed += 1
            record.status = error.code
            ticker.cancel()
            with contextlib.suppress(FabricError):
                await stream.error(error)
        except _Stalled:
            self.stats.stalled += 1
            record.status = "stalled"
            ticker.cancel()
            log.warning(
                "replica %s: query %s got no credit for %gs; cancelled",
                self.replica_id,
                request.request_id.hex(),
                request.stall,
            )
            with contextlib.suppress(FabricError):
                await stream.error(
                    DeadlineExceeded(
                        "the result was not taken in time; the runtime replica cancelled it"
                    )
                )
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            record.status = "cancelled"
            if serving.cancel_reason is None and self.engine.queries.cancelled_here(
                asyncio.current_task()
            ):
                # An administrator cancelled it while its result was on its way out here
                # (the engine tells that itself when it is waiting on the source).
                serving.cancel_reason = "cancelled"
                ticker.cancel()
                with contextlib.suppress(FabricError):
                    await stream.error(
                        Cancelled("an administrator cancelled this query; it was stopped")
                    )
            elif serving.cancel_reason == "shutdown":
                ticker.cancel()
                with contextlib.suppress(FabricError):
                    await stream.error(
                        SourceUnavailable("the runtime replica is shutting down; retry"),
                        retryable=True,
                    )
            elif serving.cancel_reason is None:
                raise
        except Exception as error:
            self.stats.failed += 1
            record.status = "internal"
            ticker.cancel()
            log.error("replica %s: query failed (%s)", self.replica_id, type(error).__name__)
            with contextlib.suppress(FabricError):
                await stream.error(
                    InternalError(
                        "internal error on a runtime replica; its log names the error type"
                    )
                )
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await ticker
            self._serving.pop(request.request_id, None)

    async def _run(
        self, ctx: RequestContext, query: QueryRequest, deadline: float | None, stream: _ReplyStream
    ) -> Summary:
        summary: Summary | None = None
        items = self.engine.execute(ctx, query, deadline)
        try:
            async for item in items:
                if isinstance(item, Summary):
                    summary = item
                else:
                    await stream.add(item)
        finally:
            await items.aclose()
        if summary is None:
            raise InternalError("the result ended without its summary")
        return summary

    async def _on_control(self, msg: Message) -> None:
        tenant = self._tenant_of(msg.subject)
        if tenant is None:
            self.sealer.reject(RejectReason.UNEXPECTED, msg.subject, len(msg.payload))
            return
        try:
            serving = self._serving.get(stream_id_of(msg.payload))
        except FabricError as error:
            self.sealer.reject(RejectReason.INTEGRITY, msg.subject, len(msg.payload), error)
            return
        if serving is None or serving.request.tenant != tenant:
            return  # finished already (a late ack or cancel): nothing to do
        try:
            data = self.sealer.open_in(
                serving.cipher,
                msg.payload,
                tenant=tenant,
                stage=self.stage,
                subject=msg.subject,
                purpose=Purpose.QUERY_CONTROL,
            )
        except FabricError:
            return  # counted and logged (without content) by the sealer
        frame = self._frame(msg, data)
        if frame is None or frame.request_id != serving.request.request_id:
            return
        if frame.kind == FrameKind.ACK:
            if frame.seq > serving.acked:
                serving.acked = frame.seq
                serving.credit.set()
        elif frame.kind == FrameKind.CANCEL:
            serving.cancel_reason = "cancelled"
            if serving.task is not None and not serving.task.done():
                serving.task.cancel()
        else:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload))
