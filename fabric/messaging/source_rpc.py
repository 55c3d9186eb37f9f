"""The platform's source work over the bus: a stage's runtime replicas test a connection
and read its schema for the platform, so the platform needs no network reach to the
stage's database and never holds a source connection of its own.

`SourceClient` (the platform side) sends one request and waits for one reply;
`SourceReplica` (each runtime replica) serves its stage's requests in a queue group, so
exactly one replica answers each. A replica builds the connector as it does for queries
(settings from the metadata store, the password resolved from the secret store by the
replica itself): no password ever crosses the bus, sealed or not.

Subjects::

    fabric.<t>.<s>.source    requests; replicas subscribe `fabric.*.<s>.source`,
                             queue group `fabric-source-<s>`

Protocol. The request and its reply are one sealed stream (`BusSealer.start_stream`):
the platform asks the KMS for one data key and sends it wrapped in the request (purpose
``source-request``, bound to tenant, stage and subject); the replica unwraps it once
and seals its reply under the same key (purpose ``source-reply``), so a reply opens
only for the request it answers. The request is JSON: operation (`test` or
`introspect`), connection, schemas (None: every user schema), request id, send time and
time allowed. The reply is zlib-compressed JSON: the tables found
(`table_info_document`), nothing for a test, or the error (code and value-free message,
as the connectors word them). A request older than `max_request_age`, past its time or
seen before is dropped (counted by the sealer) and never reaches a source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fabric.catalog.manager import SourceInspector
from fabric.catalog.serialization import table_info_document, table_info_from_document
from fabric.errors import (
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
    subject_for,
    subject_token,
)
from fabric.messaging.query_rpc.wire import error_body, error_from_body
from fabric.messaging.sealing import BusSealer, Purpose, RejectReason
from fabric.model import TableInfo
from fabric.security.envelope import StreamCipher
from fabric.security.kms import Kms

log = logging.getLogger(__name__)

SOURCE_KIND = "source"
DEFAULT_SOURCE_TIMEOUT = 60.0
DEFAULT_MAX_REQUEST_AGE = 300.0
DEFAULT_MAX_CONCURRENT = 4
"""Source requests one replica works on at once (each holds a source connection and a
thread for as long as the source takes)."""
_SEEN_IDS = 4096

OpenInspector = Callable[[str, str, str], SourceInspector]
"""(tenant, connection, stage) -> a connector for the connection in that stage, its
password resolved by the caller's own secret store; the caller closes it."""


class SourceOp(StrEnum):
    TEST = "test"
    INTROSPECT = "introspect"


def source_subject(tenant: str, stage: str) -> str:
    """Where a tenant's source requests for a stage go: `fabric.<tenant>.<stage>.source`."""
    return subject_for(SOURCE_KIND, tenant, stage)


def stage_source_filter(stage: str) -> str:
    """Every tenant's source subject of a stage: `fabric.*.<stage>.source`."""
    return f"{SUBJECT_ROOT}.*.{subject_token(stage, 'stage')}.{SOURCE_KIND}"


@dataclass(frozen=True, slots=True)
class SourceRequest:
    op: SourceOp
    connection: str
    schemas: tuple[str, ...] | None
    request_id: bytes
    sent_at: float
    timeout: float

    def encode(self) -> bytes:
        return json.dumps(
            {
                "op": self.op.value,
                "connection": self.connection,
                "schemas": None if self.schemas is None else list(self.schemas),
                "request_id": self.request_id.hex(),
                "sent_at": self.sent_at,
                "timeout": self.timeout,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> SourceRequest:
        """The request `data` holds; InvalidArgument when it is not one."""
        try:
            body = json.loads(data)
            schemas = body["schemas"]
            request = cls(
                op=SourceOp(body["op"]),
                connection=str(body["connection"]),
                schemas=None if schemas is None else tuple(str(s) for s in schemas),
                request_id=bytes.fromhex(body["request_id"]),
                sent_at=float(body["sent_at"]),
                timeout=float(body["timeout"]),
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise InvalidArgument("not a source request") from None
        if len(request.request_id) != 16:
            raise InvalidArgument("not a source request")
        return request


# -- the platform side ----------------------------------------------------------------------


class SourceClient:
    """Sends source requests to a stage's replicas and waits for the answer.

    `call` runs on the bus's event loop; `inspector` hands out a `SourceInspector` whose
    blocking `test` and `introspect` may be called from any other thread (the platform's
    services run in worker threads) and run `call` on `loop`.
    """

    def __init__(
        self,
        bus: Bus,
        kms: Kms,
        loop: asyncio.AbstractEventLoop,
        *,
        timeout: float = DEFAULT_SOURCE_TIMEOUT,
    ) -> None:
        if timeout <= 0:
            raise InvalidArgument("the source request timeout must be positive")
        self.bus = bus
        self.loop = loop
        self.timeout = timeout
        self.sealer = BusSealer(kms, max_message_bytes=bus.max_payload)
        self.requests = 0

    async def call(
        self,
        tenant: str,
        stage: str,
        op: SourceOp,
        connection: str,
        schemas: Sequence[str] | None = None,
    ) -> list[TableInfo]:
        """What a replica of `stage` found (empty for a test). `NoResponders` when no
        replica of the stage serves; the source's own error (SourceUnavailable, ...) as
        the replica met it; DeadlineExceeded after `timeout`."""
        subject = source_subject(tenant, stage)
        request = SourceRequest(
            op,
            connection,
            None if schemas is None else tuple(schemas),
            uuid.uuid4().bytes,
            time.time(),
            self.timeout,
        )
        # Asking the KMS for a data key may be a network round trip (Vault transit).
        cipher = await asyncio.to_thread(
            self.sealer.start_stream, tenant=tenant, stage=stage, stream_id=request.request_id
        )
        blob = self.sealer.seal_in(
            cipher,
            request.encode(),
            tenant=tenant,
            stage=stage,
            subject=subject,
            purpose=Purpose.SOURCE_REQUEST,
            with_key=True,
        )
        self.requests += 1
        reply = await self.bus.request(subject, blob, timeout=self.timeout)
        data = self.sealer.open_in(
            cipher, reply, tenant=tenant, stage=stage, subject=subject, purpose=Purpose.SOURCE_REPLY
        )
        return _answer_of(data)

    def inspector(self, tenant: str, connection: str, stage: str) -> SourceInspector:
        return _RemoteInspector(self, tenant, connection, stage)

    def snapshot(self) -> dict[str, float]:
        figures = {"bus_source_requests": float(self.requests)}
        figures.update(self.sealer.snapshot("bus_source_"))
        return figures


class _RemoteInspector:
    """A `SourceInspector` whose work a replica of the stage does."""

    def __init__(self, client: SourceClient, tenant: str, connection: str, stage: str) -> None:
        self._client = client
        self._tenant = tenant
        self._connection = connection
        self._stage = stage

    def _run(self, op: SourceOp, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        client = self._client
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is client.loop:
            raise InternalError("a source request cannot wait on the bus's own event loop")
        future = asyncio.run_coroutine_threadsafe(
            client.call(self._tenant, self._stage, op, self._connection, schemas), client.loop
        )
        try:
            return future.result(timeout=client.timeout + 5.0)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(
                f"no runtime replica of stage {self._stage!r} answered within {client.timeout:g}s"
            ) from None

    def test(self) -> None:
        self._run(SourceOp.TEST)

    def introspect(self, schemas: Sequence[str] | None = None) -> list[TableInfo]:
        return self._run(SourceOp.INTROSPECT, schemas)

    def close(self) -> None:
        """Nothing is held here: the replica closed its connector after answering."""


def _answer_of(data: bytes) -> list[TableInfo]:
    try:
        body = json.loads(zlib.decompress(data))
        if "error" in body:
            error, _ = error_from_body(json.dumps(body["error"]).encode())
        else:
            return [table_info_from_document(item) for item in body["tables"]]
    except (ValueError, KeyError, TypeError, zlib.error):
        raise InternalError("a runtime replica sent a source answer that is not one") from None
    raise error


# -- the replica side -----------------------------------------------------------------------


class SourceReplica:
    """Serves its stage's source requests (every tenant's) with `open_inspector`, in the
    stage's queue group; see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        kms: Kms,
        open_inspector: OpenInspector,
        *,
        stage: str,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_request_age: float = DEFAULT_MAX_REQUEST_AGE,
    ) -> None:
        subject_token(stage, "stage")
        if max_concurrent < 1 or max_request_age <= 0:
            raise InvalidArgument("max_concurrent and max_request_age must be positive")
        self.bus = bus
        self.stage = stage
        self.queue = f"fabric-source-{stage}"
        self.sealer = BusSealer(kms, max_message_bytes=bus.max_payload)
        self._open_inspector = open_inspector
        self._slots = asyncio.Semaphore(max_concurrent)
        self.max_request_age = max_request_age
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._subscription: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.served = 0
        self.failed = 0

    async def start(self) -> None:
        if self._subscription is None:
            self._subscription = await self.bus.subscribe(
                stage_source_filter(self.stage), self._on_request, queue=self.queue
            )

    async def stop(self, grace: float = 10.0) -> None:
        """Leave the queue group, let requests in hand finish for `grace` seconds."""
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.unsubscribe()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)

    def snapshot(self) -> dict[str, float]:
        figures = {
            "bus_source_served": float(self.served),
            "bus_source_failed": float(self.failed),
        }
        figures.update(self.sealer.snapshot("bus_source_"))
        return figures

    def _tenant_of(self, subject: str) -> str | None:
        tokens = subject.split(".")
        if (
            len(tokens) != 4
            or tokens[0] != SUBJECT_ROOT
            or tokens[2] != self.stage
            or tokens[3] != SOURCE_KIND
            or tokens[1] == EVENTS_TOKEN
        ):
            return None
        return tokens[1]

    async def _on_request(self, msg: Message) -> None:
        tenant = self._tenant_of(msg.subject)
        if tenant is None:
            self.sealer.reject(RejectReason.UNEXPECTED, msg.subject, len(msg.payload))
            return
        try:
            # Unwrapping the data key may be a KMS round trip: off the event loop.
            cipher, data = await asyncio.to_thread(
                self.sealer.accept_stream,
                msg.payload,
                tenant=tenant,
                stage=self.stage,
                subject=msg.subject,
                purpose=Purpose.SOURCE_REQUEST,
            )
            request = SourceRequest.decode(data)
        except InvalidArgument as error:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload), error)
            return
        except FabricError:
            return  # counted and logged (without content) by the sealer
        if request.request_id != cipher.stream_id:
            self.sealer.reject(RejectReason.MALFORMED, msg.subject, len(msg.payload))
            return
        age = time.time() - request.sent_at
        if abs(age) > self.max_request_age or request.timeout <= age:
            self.sealer.reject(RejectReason.EXPIRED, msg.subject, len(msg.payload))
            return
        if request.request_id in self._seen:
            self.sealer.reject(RejectReason.DUPLICATE, msg.subject, len(msg.payload))
            return
        self._seen[request.request_id] = None
        while len(self._seen) > _SEEN_IDS:
            self._seen.popitem(last=False)
        # Served in a task of its own: the subscription's next message is not held up
        # behind a slow source.
        task = asyncio.get_running_loop().create_task(
            self._serve(msg, tenant, cipher, request, request.timeout - max(0.0, age))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self,
        msg: Message,
        tenant: str,
        cipher: StreamCipher,
        request: SourceRequest,
        time_left: float,
    ) -> None:
        try:
            async with self._slots:
                answer: dict[str, Any] = {
                    "tables": await asyncio.wait_for(
                        asyncio.to_thread(self._work, tenant, request), time_left
                    )
                }
            self.served += 1
        except FabricError as error:
            self.failed += 1
            answer = {"error": json.loads(error_body(error))}
        except TimeoutError:
            # The caller has given up by now; the thread ends when the source answers
            # (its connector's own timeouts bound that).
            self.failed += 1
            return
        payload = zlib.compress(json.dumps(answer, separators=(",", ":")).encode())
        if len(payload) + self.sealer.overhead > self.bus.max_payload:
            payload = zlib.compress(
                json.dumps(
                    {
                        "error": json.loads(
                            error_body(
                                ResourceExhausted(
                                    "the schema found is too large for one bus message; "
                                    "discover fewer schemas at a time"
                                )
                            )
                        )
                    }
                ).encode()
            )
        sealed = self.sealer.seal_in(
            cipher,
            payload,
            tenant=tenant,
            stage=self.stage,
            subject=msg.subject,
            purpose=Purpose.SOURCE_REPLY,
        )
        try:
            await msg.respond(sealed)
        except FabricError as error:
            log.warning("could not answer a source request: %s", type(error).__name__)

    def _work(self, tenant: str, request: SourceRequest) -> list[dict[str, Any]]:
        """Run the request at the source (in a worker thread)."""
        inspector = self._open_inspector(tenant, request.connection, self.stage)
        try:
            if request.op == SourceOp.TEST:
                inspector.test()
                return []
            return [
                table_info_document(info)
                for info in inspector.introspect(
                    None if request.schemas is None else list(request.schemas)
                )
            ]
        except FabricError:
            raise
        except Exception as error:
            # A connector's unexpected failure: named by type only (its text may echo
            # what the source said).
            raise SourceUnavailable(
                f"the runtime replica could not reach the source ({type(error).__name__})"
            ) from None
        finally:
            inspector.close()
