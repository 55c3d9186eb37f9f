"""Queries over the bus: runtime replicas that serve them, and the gateway's forwarder.

`RuntimeReplica` subscribes, in a queue group, to its stage's query subject of every
tenant it serves, so each request is served by exactly one replica of the stage and more
replicas mean more capacity. `BusQueryForwarder.execute` has the contract of
`QueryEngine.execute` (Arrow IPC messages, then one `Summary`), so the gRPC servicer can
drive either.

Subjects (`<t>` tenant, `<s>` stage; all built with `subject_for`)::

    fabric.<t>.<s>.query                requests; replicas subscribe `fabric.*.<s>.query`
                                        (every tenant) or one subject per tenant, queue
                                        group `fabric-runtime-<s>`
    fabric.<t>.<s>.reply.<request id>   one request's reply stream (the forwarder's inbox)
    fabric.<t>.<s>.control.<replica>    credit and cancellation for a replica's requests

Protocol. Every payload is one sealed blob (`BusSealer`; tenant, stage, exact subject
and purpose bound as context); there are no headers, so nothing readable crosses the
bus but the subject names. Inside the seal a frame is::

    magic b"FQ" | version u8 | kind u8 | request id 16 bytes | seq u32 | body

1. The forwarder subscribes to the reply inbox, then sends REQUEST with `Bus.request`
   (so "no responders" is detected at once). The body is a JSON head (connection, SQL,
   cache lifetime, row cap, role, principal, time left, send time, reply inbox, window,
   heartbeat and stall intervals) and the parameters as a protobuf `ExecuteRequest`.
2. The replica answers the request with ACCEPT (its replica id) or a retryable ERROR
   (busy, shutting down), then streams on the inbox: CHUNK frames numbered 0, 1, 2...
   whose bodies, concatenated, are a stream of length-prefixed (u32) Arrow IPC
   messages cut to fit the bus's `max_payload`; HEARTBEAT while the source is quiet; and
   finally END (the summary, `seq` = number of chunks) or ERROR (code, message,
   SQLSTATE; `seq` = chunks sent before it).
3. Flow control: the replica sends chunk `n` only while `n < acked + window`; the
   forwarder publishes ACK(`seq` = chunks its consumer has taken) on the replica's
   control subject every `window // 2` chunks. A replica without credit for `stall`
   seconds gives up and cancels the query. A forwarder whose consumer goes away
   publishes CANCEL; the replica cancels the query at its source.
4. The forwarder checks every chunk's number (a gap or a duplicate fails the query),
   that END counts as many chunks as it received, and that something arrives at least
   every `timeout` seconds: a result is complete or the call fails, never cut short.

Retries: queries are read-only, so before any byte of a result has been handed to the
caller the forwarder retries (bounded: `retries` more attempts, within the deadline) on
no responders, a bus that is reconnecting, no acceptance in time, a replica that
accepted and went silent, and retryable errors. After the first byte it fails instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from fabric.context import RequestContext, Role
from fabric.errors import (
    ALL_ERRORS,
    DeadlineExceeded,
    FabricError,
    IntegrityError,
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
    subject_for,
    subject_token,
)
from fabric.messaging.sealing import BusSealer, Purpose, RejectReason
from fabric.proto_values import params_from_proto, params_to_proto
from fabric.query.engine import QueryEngine, QueryRequest, Summary
from fabric.security.kms import Kms, LocalKeyRing
from fabric.v1 import query_pb2 as pb

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DEFAULT_WINDOW = 8
"""Chunks a replica may have in flight, unacknowledged, per query."""
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
DEFAULT_MAX_CONCURRENT = 64
DEFAULT_MAX_REQUEST_AGE = 120.0
DEFAULT_LINGER = 0.05
MAX_RECORD_BYTES = 1 << 30

QUERY_KIND = "query"
REPLY_KIND = "reply"
CONTROL_KIND = "control"

_FRAME = struct.Struct(">2sBB16sI")
_MAGIC = b"FQ"
_RECORD = struct.Struct(">I")
_OFFLOAD_BYTES = 64 * 1024
_SEEN_IDS = 65_536
_ERRORS_BY_CODE: dict[str, type[FabricError]] = {cls.code: cls for cls in ALL_ERRORS}


class FrameKind(IntEnum):
    REQUEST = 1
    ACCEPT = 2
    CHUNK = 3
    HEARTBEAT = 4
    END = 5
    ERROR = 6
    ACK = 7
    CANCEL = 8


@dataclass(frozen=True, slots=True)
class Frame:
    """One protocol message, as it is inside the seal."""

    kind: FrameKind
    request_id: bytes
    seq: int = 0
    body: bytes = b""

    def encode(self) -> bytes:
        return (
            _FRAME.pack(_MAGIC, PROTOCOL_VERSION, self.kind, self.request_id, self.seq) + self.body
        )

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        """Parse an opened payload; `InvalidArgument` if it is not a frame of this
        protocol (the caller counts it as malformed)."""
        if len(data) < _FRAME.size:
            raise InvalidArgument("bus frame is truncated")
        magic, version, kind, request_id, seq = _FRAME.unpack_from(data)
        if magic != _MAGIC or version != PROTOCOL_VERSION:
            raise InvalidArgument("bus frame has an unknown magic or version")
        try:
            frame_kind = FrameKind(kind)
        except ValueError:
            raise InvalidArgument("bus frame has an unknown kind") from None
        return cls(frame_kind, request_id, seq, data[_FRAME.size :])


def query_subject(tenant: str, stage: str) -> str:
    """Where a tenant's queries for a stage are sent: `fabric.<tenant>.<stage>.query`."""
    return subject_for(QUERY_KIND, tenant, stage)


def stage_query_filter(stage: str) -> str:
    """Every tenant's query subject of a stage: `fabric.*.<stage>.query`."""
    return f"{SUBJECT_ROOT}.*.{subject_token(stage, 'stage')}.{QUERY_KIND}"


def reply_subject(tenant: str, stage: str, request_id: bytes) -> str:
    return subject_for(REPLY_KIND, tenant, stage, request_id.hex())


def control_subject(tenant: str, stage: str, replica_id: str) -> str:
    return subject_for(CONTROL_KIND, tenant, stage, replica_id)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _unjson(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidArgument("bus frame body is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument("bus frame body is not a JSON object")
    return value


def _error_body(error: FabricError, retryable: bool = False) -> bytes:
    return _json(
        {
            "code": error.code,
            "message": error.message,
            "sqlstate": error.sqlstate,
            "retryable": retryable,
        }
    )


def _error_from(body: bytes) -> tuple[FabricError, bool]:
    data = _unjson(body)
    cls = _ERRORS_BY_CODE.get(str(data.get("code")), InternalError)
    sqlstate = data.get("sqlstate")
    error = cls(
        str(data.get("message") or cls.code),
        sqlstate=sqlstate if isinstance(sqlstate, str) else None,
    )
    return error, bool(data.get("retryable"))


def _offload(kms: Kms) -> Callable[[int], bool]:
    """Whether sealing a payload of some size should leave the event loop: always for a
    remote KMS (a data key is a round trip), for large payloads with the local ring."""
    local = isinstance(kms, LocalKeyRing)
    return lambda size: not local or size >= _OFFLOAD_BYTES


# -- request encoding -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Request:
    request_id: bytes
    tenant: str
    stage: str
    role: str
    principal: str
    query: QueryRequest
    timeout: float | None
    sent_at: float
    reply: str
    window: int
    heartbeat: float
    stall: float

    def encode(self) -> bytes:
        head = _json(
            {
                "connection": self.query.connection,
                "sql": self.query.sql,
                "cache_ttl": self.query.cache_ttl,
                "max_rows": self.query.max_rows,
                "role": self.role,
                "principal": self.principal,
                "timeout": self.timeout,
                "sent_at": self.sent_at,
                "reply": self.reply,
                "window": self.window,
                "heartbeat": self.heartbeat,
                "stall": self.stall,
            }
        )
        params = pb.ExecuteRequest(params=params_to_proto(self.query.params))
        encoded: bytes = params.SerializeToString()
        return _RECORD.pack(len(head)) + head + encoded

    @classmethod
    def decode(cls, frame: Frame, tenant: str, stage: str) -> _Request:
        body = frame.body
        if len(body) < _RECORD.size:
            raise InvalidArgument("query request is truncated")
        (head_len,) = _RECORD.unpack_from(body)
        if len(body) < _RECORD.size + head_len:
            raise InvalidArgument("query request is truncated")
        head = _unjson(body[_RECORD.size : _RECORD.size + head_len])
        params = pb.ExecuteRequest()
        try:
            params.ParseFromString(body[_RECORD.size + head_len :])
        except Exception:
            raise InvalidArgument("query request parameters do not parse") from None
        try:
            max_rows = head.get("max_rows")
            timeout = head.get("timeout")
            query = QueryRequest(
                connection=str(head["connection"]),
                sql=str(head["sql"]),
                params=params_from_proto(params.params),
                cache_ttl=float(head["cache_ttl"]),
                max_rows=None if max_rows is None else int(max_rows),
            )
            request = cls(
                frame.request_id,
                tenant,
                stage,
                Role(head["role"]).value,
                str(head["principal"]),
                query,
                None if timeout is None else float(timeout),
                float(head["sent_at"]),
                str(head["reply"]),
                int(head["window"]),
                float(head["heartbeat"]),
                float(head["stall"]),
            )
        except (KeyError, TypeError, ValueError):
            raise InvalidArgument("query request head is malformed") from None
        if request.reply != reply_subject(tenant, stage, frame.request_id):
            raise InvalidArgument("query request names a reply subject not its own")
        if request.window < 1 or request.heartbeat <= 0 or request.stall <= 0:
            raise InvalidArgument("query request has a non-positive window or interval")
        return request


# -- the replica ------------------------------------------------------------------------


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

    request: _Request
    control: str
    acked: int = 0
    credit: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None


class _ReplyStream:
    """Publishes one request's reply frames in order: chunks under the window, the
    final END or ERROR, heartbeats when quiet."""

    def __init__(self, replica: RuntimeReplica, serving: _Serving) -> None:
        self._replica = replica
        self._serving = serving
        request = serving.request
        self._subject = request.reply
        self._budget = replica.chunk_budget
        self._buffer = bytearray()
        self._seq = 0
        self._lock = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self._last_sent = loop.time()
        self._last_flush = loop.time()

    async def send(self, kind: FrameKind, seq: int = 0, body: bytes = b"") -> None:
        replica = self._replica
        request = self._serving.request
        frame = Frame(kind, request.request_id, seq, body).encode()
        sealed = await replica._seal(
            frame, request.tenant, request.stage, self._subject, Purpose.QUERY_REPLY
        )
        await replica.bus.publish(self._subject, sealed)
        self._last_sent = asyncio.get_running_loop().time()
        if kind == FrameKind.CHUNK:
            replica.stats.chunks_sent += 1
            replica.stats.bytes_sent += len(sealed)

    async def add(self, message: bytes) -> None:
        async with self._lock:
            self._buffer += _RECORD.pack(len(message))
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
        await self.flush()
        async with self._lock:
            await self.send(
                FrameKind.END,
                self._seq,
                _json(
                    {
                        "rows": summary.rows,
                        "truncated": summary.truncated,
                        "from_cache": summary.from_cache,
                        "elapsed_us": summary.elapsed_us,
                    }
                ),
            )

    async def error(self, error: FabricError, retryable: bool = False) -> None:
        await self.send(FrameKind.ERROR, self._seq, _error_body(error, retryable))

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
    ) -> None:
        self.bus = bus
        self.engine = engine
        self.stage = subject_token(stage, "stage")
        self.tenants = None if tenants is None else tuple(tenants)
        if self.tenants is not None:
            for tenant in self.tenants:
                query_subject(tenant, self.stage)  # validates the tenant token
        self.queue = subject_token(queue or f"fabric-runtime-{self.stage}", "queue group")
        self.replica_id = subject_token(replica_id or uuid.uuid4().hex[:16], "replica id")
        self.sealer = sealer or BusSealer(kms, max_message_bytes=bus.max_payload)
        self._offload = _offload(kms)
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
        budget = self.bus.max_payload - self.sealer.overhead - _FRAME.size
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
        self, data: bytes, tenant: str, stage: str, subject: str, purpose: Purpose
    ) -> bytes:
        if self._offload(len(data)):
            return await asyncio.to_thread(
                self.sealer.seal, data, tenant=tenant, stage=stage, subject=subject, purpose=purpose
            )
        return self.sealer.seal(data, tenant=tenant, stage=stage, subject=subject, purpose=purpose)

    def _tenant_of(self, subject: str) -> str | None:
        tokens = subject.split(".")
        if len(tokens) < 4 or tokens[0] != SUBJECT_ROOT or tokens[2] != self.stage:
            return None
        tenant = tokens[1]
        if tenant == EVENTS_TOKEN or (self.tenants is not None and tenant not in self.tenants):
            return None
        return tenant

    def _open(self, msg: Message, tenant: str, purpose: Purpose) -> Frame | None:
        try:
            data = self.sealer.open(
                msg.payload, tenant=tenant, stage=self.stage, subject=msg.subject, purpose=purpose
            )
        except FabricError:
            return None  # counted and logged (without content) by the sealer
        try:
            return Frame.decode(data)
        except InvalidArgument as error:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload), error)
            return None

    async def _on_request(self, msg: Message) -> None:
        tenant = self._tenant_of(msg.subject)
        if tenant is None:
            self.sealer.reject(RejectReason.UNEXPECTED, msg.subject, len(msg.payload))
            return
        frame = self._open(msg, tenant, Purpose.QUERY_REQUEST)
        if frame is None:
            return
        try:
            if frame.kind != FrameKind.REQUEST:
                raise InvalidArgument("not a request frame")
            request = _Request.decode(frame, tenant, self.stage)
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
                FrameKind.ERROR,
                _error_body(
                    ResourceExhausted(
                        f"runtime replica {self.replica_id} is busy; another replica may serve"
                    ),
                    retryable=True,
                ),
            )
            return
        serving = _Serving(request, control_subject(tenant, self.stage, self.replica_id))
        self._serving[request.request_id] = serving
        try:
            await self._answer(msg, request, FrameKind.ACCEPT, _json({"replica": self.replica_id}))
        except FabricError as error:
            del self._serving[request.request_id]
            log.warning("replica %s could not accept a request (%s)", self.replica_id, error.code)
            return
        self.stats.accepted += 1
        if serving.cancel_reason is not None:  # cancelled while the acceptance went out
            self._serving.pop(request.request_id, None)
            self.stats.cancelled += 1
            return
        serving.task = asyncio.get_running_loop().create_task(
            self._serve(serving), name=f"bus-query:{request.request_id.hex()}"
        )

    async def _answer(self, msg: Message, request: _Request, kind: FrameKind, body: bytes) -> None:
        """Reply to the request itself (sealed for its reply inbox subject)."""
        frame = Frame(kind, request.request_id, 0, body).encode()
        sealed = await self._seal(
            frame, request.tenant, request.stage, request.reply, Purpose.QUERY_REPLY
        )
        await msg.respond(sealed)

    async def _serve(self, serving: _Serving) -> None:
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
            ticker.cancel()
            with contextlib.suppress(FabricError):
                await stream.error(error)
        except _Stalled:
            self.stats.stalled += 1
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
            if serving.cancel_reason == "shutdown":
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
        frame = self._open(msg, tenant, Purpose.QUERY_CONTROL)
        if frame is None:
            return
        serving = self._serving.get(frame.request_id)
        if serving is None or serving.request.tenant != tenant:
            return  # finished already (a late ack or cancel): nothing to do
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


# -- the forwarder ----------------------------------------------------------------------


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
        tenant: str,
        stage: str,
        subject: str,
        request_id: bytes,
        window: int,
    ) -> None:
        self._forwarder = forwarder
        self._tenant = tenant
        self._stage = stage
        self.subject = subject
        self._request_id = request_id
        self._window = window
        self.queue: asyncio.Queue[Frame | FabricError] = asyncio.Queue()
        self._chunks_queued = 0
        self.failed = False

    def consumed_chunk(self) -> None:
        self._chunks_queued -= 1

    async def on_message(self, msg: Message) -> None:
        if self.failed:
            return
        try:
            frame = await self._forwarder._open(
                msg.payload, self._tenant, self._stage, self.subject
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


class BusQueryForwarder:
    """Sends queries to the stage's runtime replicas over the bus.

    `execute(ctx, request, deadline)` yields what `QueryEngine.execute` yields. The
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
        self.sealer = sealer or BusSealer(kms, max_message_bytes=bus.max_payload)
        self._offload = _offload(kms)
        self.stats = ForwarderStats()

    def snapshot(self) -> dict[str, float]:
        figures = {
            f"bus_forwarder_{name}": float(value) for name, value in vars(self.stats).items()
        }
        figures.update(self.sealer.snapshot())
        return figures

    async def _open(self, payload: bytes, tenant: str, stage: str, subject: str) -> Frame:
        kwargs: dict[str, Any] = {
            "tenant": tenant,
            "stage": stage,
            "subject": subject,
            "purpose": Purpose.QUERY_REPLY,
        }
        if self._offload(len(payload)):
            data = await asyncio.to_thread(self.sealer.open, payload, **kwargs)
        else:
            data = self.sealer.open(payload, **kwargs)
        try:
            return Frame.decode(data)
        except InvalidArgument as error:
            raise self.sealer.reject(RejectReason.MALFORMED, subject, len(payload), error) from None

    async def _seal(
        self, data: bytes, tenant: str, stage: str, subject: str, purpose: Purpose
    ) -> bytes:
        if self._offload(len(data)):
            return await asyncio.to_thread(
                self.sealer.seal, data, tenant=tenant, stage=stage, subject=subject, purpose=purpose
            )
        return self.sealer.seal(data, tenant=tenant, stage=stage, subject=subject, purpose=purpose)

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
        started = time.perf_counter()
        self.stats.requests += 1
        attempt = 0
        outcome = "failed"
        try:
            while True:
                attempt += 1
                self.stats.attempts += 1
                attempt_items = self._attempt(ctx, request, deadline, started)
                try:
                    async for item in attempt_items:
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
        inbox = _Inbox(
            self, tenant, stage, reply_subject(tenant, stage, request_id), request_id, self.window
        )
        remaining = self._remaining(deadline)
        wire = _Request(
            request_id,
            tenant,
            stage,
            ctx.role.value,
            ctx.principal,
            request,
            remaining,
            time.time(),
            inbox.subject,
            self.window,
            self.timeout / 3,
            self.stall,
        )
        frame = Frame(FrameKind.REQUEST, request_id, 0, wire.encode()).encode()
        sealed = await self._seal(frame, tenant, stage, subject, Purpose.QUERY_REQUEST)
        if len(sealed) > self.bus.max_payload:
            raise ResourceExhausted(
                f"the query and its parameters take {len(sealed)} bytes sealed, over the "
                f"bus maximum of {self.bus.max_payload}; use fewer or smaller parameters"
            )
        sub = await self.bus.subscribe(inbox.subject, inbox.on_message)
        control: str | None = None
        finished = False
        yielded = False
        try:
            try:
                answer = await self.bus.request(subject, sealed, self._wait(deadline))
            except (SourceUnavailable, DeadlineExceeded) as unanswered:
                raise _Retry(unanswered) from None
            accepted = await self._open(answer, tenant, stage, inbox.subject)
            if accepted.request_id != request_id:
                raise IntegrityError("the acceptance answers another request")
            if accepted.kind == FrameKind.ERROR:
                refused, retryable = _error_from(accepted.body)
                raise _Retry(refused) if retryable else refused
            if accepted.kind != FrameKind.ACCEPT:
                raise InternalError("a runtime replica answered a query with an unexpected frame")
            replica = subject_token(str(_unjson(accepted.body).get("replica")), "replica id")
            control = control_subject(tenant, stage, replica)
            records = _Records()
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
                    for message in records.feed(item.body):
                        yielded = True
                        yield message
                    if expected - acked >= max(1, self.window // 2):
                        acked = expected
                        await self._control(
                            FrameKind.ACK, request_id, acked, tenant, stage, control
                        )
                    continue
                if item.kind == FrameKind.ERROR:
                    failure, retryable = _error_from(item.body)
                    if retryable and not yielded:
                        raise _Retry(failure)
                    raise failure
                if item.kind == FrameKind.END:
                    if item.seq != expected or records.pending:
                        self.stats.protocol_errors += 1
                        where = (
                            f"after {expected} of {item.seq} chunks"
                            if item.seq != expected
                            else "inside a message"
                        )
                        raise SourceUnavailable(
                            f"the result stream ended {where}; the result is incomplete, "
                            "retry the query"
                        )
                    body = _unjson(item.body)
                    finished = True
                    yield Summary(
                        int(body["rows"]),
                        bool(body["truncated"]),
                        bool(body["from_cache"]),
                        int((time.perf_counter() - started) * 1_000_000),
                    )
                    return
                raise InternalError("a runtime replica sent an unexpected frame")
        finally:
            inbox.failed = True
            await sub.unsubscribe()
            if not finished and control is not None:
                # The consumer went away or the stream failed: stop the source query.
                with contextlib.suppress(FabricError):
                    await self._control(FrameKind.CANCEL, request_id, 0, tenant, stage, control)

    async def _control(
        self, kind: FrameKind, request_id: bytes, seq: int, tenant: str, stage: str, subject: str
    ) -> None:
        frame = Frame(kind, request_id, seq).encode()
        sealed = await self._seal(frame, tenant, stage, subject, Purpose.QUERY_CONTROL)
        await self.bus.publish(subject, sealed)


class _Records:
    """Cuts the concatenated chunk bodies back into the IPC messages the replica sent."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out: list[bytes] = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= _RECORD.size:
            (size,) = _RECORD.unpack_from(buffer, offset)
            if size > MAX_RECORD_BYTES:
                raise InternalError(
                    "a result message from a runtime replica is implausibly "
                    "large; the stream is corrupt"
                )
            end = offset + _RECORD.size + size
            if len(buffer) < end:
                break
            out.append(bytes(buffer[offset + _RECORD.size : end]))
            offset = end
        if offset:
            del buffer[:offset]
        return out
