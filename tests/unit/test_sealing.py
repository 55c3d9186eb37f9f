"""Sealed bus payloads, and the query protocol's checks, on the in-process bus.

`BusSealer` binds tenant, stage, subject and purpose; whatever does not open, or is too
large, is refused, counted by reason and logged without content. The forwarder refuses
a reply stream with a gap, a duplicate, a short ending or more chunks than its window,
and ignores (counting) forged messages on its inbox.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

import pyarrow as pa
import pytest

from fabric.context import RequestContext, Role
from fabric.errors import (
    DeadlineExceeded,
    IntegrityError,
    InternalError,
    InvalidArgument,
    QueryRejected,
    ResourceExhausted,
    SourceQueryError,
    SourceUnavailable,
)
from fabric.messaging import InProcessBus, Message
from fabric.messaging.query_rpc import (
    BusQueryForwarder,
    Frame,
    FrameKind,
    RuntimeReplica,
    WireRequest,
    query_subject,
    reply_subject,
    stage_query_filter,
)
from fabric.messaging.query_rpc.wire import end_body, split_end
from fabric.messaging.sealing import BusSealer, Purpose
from fabric.query.engine import QueryRequest
from fabric.query.runs import Summary
from fabric.results.ipc import IpcChunker, open_ipc_stream
from fabric.security.envelope import StreamCipher
from fabric.security.kms import LocalKeyRing
from tests.support.nats import run_bounded

SECRET = b"row value Jorunn-Aasgaard 0475-112233"
SUBJECT = "fabric.acme.production.reply.abc123"


class SealContext(TypedDict):
    tenant: str
    stage: str
    subject: str
    purpose: Purpose


CTX: SealContext = {
    "tenant": "acme",
    "stage": "production",
    "subject": SUBJECT,
    "purpose": Purpose.QUERY_REPLY,
}


class CountingKms:
    """A key ring that counts its data keys and unwraps (what would each be a round trip
    to Vault transit)."""

    def __init__(self, inner: LocalKeyRing) -> None:
        self.inner = inner
        self.unwraps = 0
        self.data_keys = 0

    @property
    def key_id(self) -> str:
        return self.inner.key_id

    @property
    def current_version(self) -> int:
        return self.inner.current_version

    def generate_data_key(self, context: Mapping[str, str]) -> Any:
        self.data_keys += 1
        return self.inner.generate_data_key(context)

    def unwrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        self.unwraps += 1
        return self.inner.unwrap(wrapped, context)

    def rewrap(self, wrapped: bytes, context: Mapping[str, str]) -> bytes:
        return self.inner.rewrap(wrapped, context)

    def rotate(self) -> int:
        return self.inner.rotate()


@pytest.fixture
def kms(tmp_path: Path) -> LocalKeyRing:
    return LocalKeyRing.create(tmp_path / "keyring.json")


def test_round_trip_and_counters(kms: LocalKeyRing) -> None:
    sealer = BusSealer(kms)
    blob = sealer.seal(SECRET, **CTX)
    assert SECRET not in blob
    assert sealer.open(blob, **CTX) == SECRET
    assert sealer.counters["sealed"] == 1 and sealer.counters["opened"] == 1
    assert sealer.rejected == 0
    assert len(blob) - len(SECRET) <= sealer.overhead
    assert sealer.snapshot()["bus_sealed"] == 1.0


@pytest.mark.parametrize(
    "change",
    [
        {"tenant": "globex", "subject": "fabric.globex.production.reply.abc123"},
        {"stage": "test", "subject": "fabric.acme.test.reply.abc123"},
        {"subject": "fabric.acme.production.reply.other"},
        {"purpose": Purpose.QUERY_REQUEST},
        {"purpose": Purpose.QUERY_CONTROL},
    ],
)
def test_another_tenant_stage_subject_or_purpose_does_not_open(
    kms: LocalKeyRing, change: dict[str, Any]
) -> None:
    sealer = BusSealer(kms)
    blob = sealer.seal(SECRET, **CTX)
    with pytest.raises(IntegrityError):
        sealer.open(blob, **{**CTX, **change})
    assert sealer.counters["rejected_integrity"] == 1


def test_any_altered_byte_or_cut_is_rejected_and_counted(kms: LocalKeyRing) -> None:
    sealer = BusSealer(kms)
    blob = sealer.seal(SECRET, **CTX)
    positions = range(0, len(blob), max(1, len(blob) // 40))
    for position in positions:
        tampered = bytearray(blob)
        tampered[position] ^= 0x40
        with pytest.raises(IntegrityError):
            sealer.open(bytes(tampered), **CTX)
    for cut in (blob[:-1], blob[:20], blob + b"\x00", b""):
        with pytest.raises(IntegrityError):
            sealer.open(cut, **CTX)
    assert sealer.counters["rejected_integrity"] == len(positions) + 4
    assert sealer.counters["opened"] == 0


def test_oversized_is_refused_unopened_and_counted(tmp_path: Path) -> None:
    kms = CountingKms(LocalKeyRing.create(tmp_path / "kr.json"))
    sealer = BusSealer(kms, max_message_bytes=1024)
    blob = sealer.seal(b"x" * 2000, **CTX)
    with pytest.raises(ResourceExhausted, match="over the limit"):
        sealer.open(blob, **CTX)
    assert kms.unwraps == 0
    assert sealer.counters["rejected_oversized"] == 1


def test_a_subject_outside_the_tenant_or_stage_is_refused(kms: LocalKeyRing) -> None:
    sealer = BusSealer(kms)
    for subject in (
        "fabric.globex.production.reply.x",
        "fabric.acme.test.reply.x",
        "other.acme.production.reply",
        "fabric.acme.production",
    ):
        with pytest.raises(InvalidArgument):
            sealer.seal(SECRET, **(CTX | {"subject": subject}))


def test_rejections_are_logged_without_content(
    kms: LocalKeyRing, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sealer = BusSealer(kms)
    blob = sealer.seal(SECRET, **CTX)
    for _ in range(3):
        with pytest.raises(IntegrityError):
            sealer.open(blob, **(CTX | {"purpose": Purpose.QUERY_CONTROL}))
    rejections = [r for r in caplog.records if "rejected" in r.getMessage()]
    assert [r.levelno for r in rejections] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert SUBJECT in rejections[0].getMessage()
    assert "integrity" in rejections[0].getMessage()
    for text in (SECRET.decode(), SECRET.hex(), blob.hex()[:32]):
        assert text not in caplog.text
    assert all(not isinstance(a, bytes | bytearray) for r in caplog.records for a in r.args or ())


# -- streams: one data key for a query's messages -----------------------------------------

STREAM_ID = bytes(range(16))
REQUEST_SUBJECT = "fabric.acme.production.query"


def test_a_stream_takes_one_data_key_and_one_unwrap_for_all_its_messages(
    tmp_path: Path,
) -> None:
    sender_kms = CountingKms(LocalKeyRing.create(tmp_path / "kr.json"))
    receiver_kms = CountingKms(LocalKeyRing.load(tmp_path / "kr.json"))
    sender, receiver = BusSealer(sender_kms), BusSealer(receiver_kms)
    sender_kms.data_keys = receiver_kms.data_keys = 0  # the sealers' probes of their overhead
    request_ctx: SealContext = CTX | {"subject": REQUEST_SUBJECT, "purpose": Purpose.QUERY_REQUEST}
    cipher = sender.start_stream(tenant="acme", stage="production", stream_id=STREAM_ID)
    first = sender.seal_in(cipher, SECRET, **request_ctx, with_key=True)
    assert SECRET not in first
    accepted, plaintext = receiver.accept_stream(first, **request_ctx)
    assert plaintext == SECRET and accepted.stream_id == STREAM_ID
    for n in range(50):  # replies one way, control the other, all under the same key
        reply = receiver.seal_in(accepted, SECRET + bytes([n]), **CTX)
        assert sender.open_in(cipher, reply, **CTX) == SECRET + bytes([n])
        control = sender.seal_in(cipher, b"ack", **(CTX | {"purpose": Purpose.QUERY_CONTROL}))
        assert (
            receiver.open_in(accepted, control, **(CTX | {"purpose": Purpose.QUERY_CONTROL}))
            == b"ack"
        )
    assert (sender_kms.data_keys, sender_kms.unwraps) == (1, 0)
    assert (receiver_kms.data_keys, receiver_kms.unwraps) == (0, 1)
    assert len(first) - len(SECRET) <= sender.overhead


def test_a_stream_message_opens_only_in_its_stream_subject_and_purpose(kms: LocalKeyRing) -> None:
    sealer = BusSealer(kms)
    cipher = sealer.start_stream(tenant="acme", stage="production", stream_id=STREAM_ID)
    other = sealer.start_stream(tenant="acme", stage="production", stream_id=bytes(16))
    blob = sealer.seal_in(cipher, SECRET, **CTX)
    refused = 0
    for change in (
        {"subject": "fabric.acme.production.reply.other"},
        {"purpose": Purpose.QUERY_CONTROL},
        {"tenant": "globex", "subject": "fabric.globex.production.reply.abc123"},
        {"stage": "test", "subject": "fabric.acme.test.reply.abc123"},
    ):
        with pytest.raises(IntegrityError):
            sealer.open_in(cipher, blob, **(CTX | change))  # type: ignore[arg-type]
        refused += 1
    with pytest.raises(IntegrityError, match="another stream"):
        sealer.open_in(other, blob, **CTX)
    refused += 1
    for position in range(0, len(blob), 3):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(IntegrityError):
            sealer.open_in(cipher, bytes(tampered), **CTX)
        refused += 1
    assert sealer.counters["rejected_integrity"] == refused
    assert sealer.open_in(cipher, blob, **CTX) == SECRET


def test_a_stream_key_moved_to_another_stream_or_tenant_does_not_unwrap(
    kms: LocalKeyRing,
) -> None:
    sealer = BusSealer(kms)
    request_ctx: SealContext = CTX | {"subject": REQUEST_SUBJECT, "purpose": Purpose.QUERY_REQUEST}
    cipher = sealer.start_stream(tenant="acme", stage="production", stream_id=STREAM_ID)
    first = sealer.seal_in(cipher, SECRET, **request_ctx, with_key=True)
    renamed = first.replace(STREAM_ID, bytes(16))  # the clear stream id, rewritten
    assert renamed != first
    with pytest.raises(IntegrityError):
        sealer.accept_stream(renamed, **request_ctx)
    elsewhere: SealContext = request_ctx | {
        "tenant": "globex",
        "subject": "fabric.globex.production.query",
    }
    with pytest.raises(IntegrityError):
        sealer.accept_stream(first, **elsewhere)
    with pytest.raises(IntegrityError):  # a message without the key cannot start a stream
        sealer.accept_stream(sealer.seal_in(cipher, SECRET, **request_ctx), **request_ctx)
    assert sealer.counters["rejected_integrity"] == 3


def test_a_forwarded_query_takes_one_data_key_however_many_chunks(tmp_path: Path) -> None:
    """With Vault transit each data key and each unwrap is a round trip: a query's stream
    costs one of each, not one per sealed chunk."""
    platform_kms = CountingKms(LocalKeyRing.create(tmp_path / "kr.json"))
    replica_kms = CountingKms(LocalKeyRing.load(tmp_path / "kr.json"))

    async def body() -> None:
        bus = InProcessBus(max_payload=4096)
        engine = StubEngine(_ipc(2000))
        replica = RuntimeReplica(bus, engine, replica_kms, stage="production")  # type: ignore[arg-type]
        await replica.start()
        forwarder = BusQueryForwarder(bus, platform_kms, timeout=2.0, window=2)
        keys_before = (platform_kms.data_keys, replica_kms.data_keys)
        unwraps_before = (platform_kms.unwraps, replica_kms.unwraps)
        for _ in range(2):
            messages, _summary = await _collect(
                forwarder.execute(CALLER, QueryRequest("crm", "SELECT 1"))
            )
            assert b"".join(messages) == b"".join(engine.messages)
        assert replica.stats.chunks_sent > 2 * 10  # 4 KiB payloads: many chunks each
        assert (platform_kms.data_keys, replica_kms.data_keys) == (
            keys_before[0] + 2,
            keys_before[1],
        )
        assert (platform_kms.unwraps, replica_kms.unwraps) == (
            unwraps_before[0],
            unwraps_before[1] + 2,
        )
        await replica.stop()
        await bus.close()

    run_bounded(body(), 20)


# -- frames and records ------------------------------------------------------------------


def test_frames_round_trip_and_refuse_garbage() -> None:
    frame = Frame(FrameKind.CHUNK, b"r" * 16, 7, b"body")
    assert Frame.decode(frame.encode()) == frame
    for garbage in (
        b"",
        b"FQ",
        b"XX" + frame.encode()[2:],
        frame.encode()[:3] + b"\x63" + frame.encode()[4:],
    ):
        with pytest.raises(InvalidArgument):
            Frame.decode(garbage)


def test_the_end_frame_carries_the_summary_and_the_last_bytes() -> None:
    summary = Summary(3, True, False, 17)
    for tail in (b"", b"\xff\xff\xff\xff\x00\x00\x00\x00", b"x" * 5000):
        fields, rest = split_end(end_body(summary, tail))
        assert fields == {"rows": 3, "truncated": True, "from_cache": False, "elapsed_us": 17}
        assert rest == tail
    for garbage in (b"", b"\x00\x00", b"\x00\x00\x00\x09{}"):
        with pytest.raises(InvalidArgument):
            split_end(garbage)


# -- the protocol on the in-process bus ----------------------------------------------------


def _ipc(rows: int) -> list[bytes]:
    table = pa.table({"id": list(range(rows)), "name": [f"name {i}" for i in range(rows)]})
    chunker = IpcChunker(table.schema, 1 << 20)
    messages = [chunker.schema_message()]
    for batch in table.to_batches(max_chunksize=1000):
        messages += chunker.batch_messages(chunker.to_wire(batch))
    return [*messages, chunker.end_of_stream()]


class StubEngine:
    """Stands in for QueryEngine.execute: a fixed result, an error, or a hold."""

    def __init__(
        self,
        messages: list[bytes] | None = None,
        error: Exception | None = None,
        hold: asyncio.Event | None = None,
    ) -> None:
        self.messages = messages or _ipc(10)
        self.error = error
        self.hold = hold
        self.calls: list[tuple[RequestContext, QueryRequest, float | None]] = []
        self.closed = 0

    async def execute(
        self, ctx: RequestContext, request: QueryRequest, deadline: float | None = None
    ) -> AsyncIterator[bytes | Summary]:
        self.calls.append((ctx, request, deadline))
        try:
            if self.error is not None:
                raise self.error
            for message in self.messages:
                if self.hold is not None:
                    await self.hold.wait()
                yield message
            yield Summary(10, False, False, 5)
        finally:
            self.closed += 1


async def _collect(items: AsyncIterator[bytes | Summary]) -> tuple[list[bytes], Summary]:
    messages: list[bytes] = []
    summary = None
    async for item in items:
        if isinstance(item, Summary):
            summary = item
        else:
            messages.append(item)
    assert summary is not None
    return messages, summary


CALLER = RequestContext(tenant="acme", stage="production", role=Role.ADMIN, principal="local")


def test_round_trip_with_parameters_identity_and_deadline(kms: LocalKeyRing) -> None:
    async def body() -> None:
        bus = InProcessBus(max_payload=4096)
        engine = StubEngine(_ipc(2000))
        replica = RuntimeReplica(bus, engine, kms, stage="production")  # type: ignore[arg-type]
        await replica.start()
        forwarder = BusQueryForwarder(bus, kms, timeout=2.0, window=2)
        params = {"name": "Jorunn", "n": 5, "none": None}
        deadline = time.monotonic() + 10
        messages, summary = await _collect(
            forwarder.execute(
                CALLER, QueryRequest("crm", "SELECT 1", params, cache_ttl=2.5, max_rows=9), deadline
            )
        )
        # The IPC stream's bytes, cut where the bus's payload limit fell.
        assert b"".join(messages) == b"".join(engine.messages)
        assert summary.rows == 10
        ctx, request, remote_deadline = engine.calls[0]
        assert (ctx.tenant, ctx.stage, ctx.role, ctx.principal) == (
            "acme",
            "production",
            CALLER.role,
            "local",
        )
        assert request.params == params and request.cache_ttl == 2.5 and request.max_rows == 9
        assert remote_deadline is not None and remote_deadline <= deadline + 0.5
        assert replica.stats.chunks_sent > 10  # 4 KiB payloads
        assert forwarder.stats.chunks_received == replica.stats.chunks_sent
        assert open_ipc_stream(messages).read_all().num_rows == 2000
        await replica.stop()
        await bus.close()

    run_bounded(body(), 20)


def test_a_small_result_is_the_answer_to_the_request_itself(kms: LocalKeyRing) -> None:
    async def body() -> None:
        bus = InProcessBus()
        engine = StubEngine(_ipc(10))
        replica = RuntimeReplica(bus, engine, kms, stage="production")  # type: ignore[arg-type]
        await replica.start()
        forwarder = BusQueryForwarder(bus, kms, timeout=2.0)
        messages, summary = await _collect(
            forwarder.execute(CALLER, QueryRequest("crm", "SELECT 1"))
        )
        assert b"".join(messages) == b"".join(engine.messages) and summary.rows == 10
        # No ACCEPT, no chunk: the END frame, with the result, answered the request.
        assert replica.stats.chunks_sent == 0 and forwarder.stats.chunks_received == 0
        assert replica.stats.served == 1
        await replica.stop()
        await bus.close()

    run_bounded(body(), 20)


def test_errors_keep_class_message_and_sqlstate(kms: LocalKeyRing) -> None:
    async def body() -> None:
        bus = InProcessBus()
        error = SourceQueryError(
            "the source refused the query (DuckDB ConversionException)", sqlstate="22018"
        )
        replica = RuntimeReplica(
            bus,
            StubEngine(error=error),  # type: ignore[arg-type]  # stands in for execute only
            kms,
            stage="production",
        )
        await replica.start()
        forwarder = BusQueryForwarder(bus, kms, timeout=2.0)
        with pytest.raises(SourceQueryError) as raised:
            await _collect(forwarder.execute(CALLER, QueryRequest("crm", "SELECT 1")))
        assert raised.value.message == error.message
        assert raised.value.sqlstate == "22018"
        assert replica.stats.failed == 1
        await replica.stop()
        await bus.close()

    run_bounded(body(), 20)


def test_an_over_long_text_is_refused_before_it_is_sealed_or_sent(kms: LocalKeyRing) -> None:
    async def body() -> None:
        bus = InProcessBus()
        forwarder = BusQueryForwarder(bus, kms, timeout=1.0, max_sql_length=100)
        sql = "SELECT 1 AS x WHERE 'secret-literal' = '" + "x" * 200 + "'"
        with pytest.raises(QueryRejected, match="longer than 100 characters") as refused:
            await _collect(forwarder.execute(CALLER, QueryRequest("crm", sql)))
        assert "secret-literal" not in str(refused.value)
        assert forwarder.stats.attempts == 0
        assert forwarder.sealer.counters["sealed"] == 0
        await bus.close()

    run_bounded(body(), 20)


def test_no_replica_is_unavailable_after_bounded_retries(kms: LocalKeyRing) -> None:
    async def body() -> None:
        bus = InProcessBus()
        forwarder = BusQueryForwarder(bus, kms, timeout=1.0, retries=2, backoff=0.001)
        with pytest.raises(SourceUnavailable, match="no responders"):
            await _collect(forwarder.execute(CALLER, QueryRequest("crm", "SELECT 1")))
        assert forwarder.stats.attempts == 3 and forwarder.stats.retries == 2
        await bus.close()

    run_bounded(body(), 20)


def test_cancel_reaches_the_replica_and_closes_the_query(kms: LocalKeyRing) -> None:
    async def body() -> None:
        bus = InProcessBus(max_payload=4096)  # many chunks: the replica is mid-result
        hold = asyncio.Event()
        hold.set()
        engine = StubEngine(_ipc(3000), hold=hold)
        replica = RuntimeReplica(bus, engine, kms, stage="production")  # type: ignore[arg-type]
        await replica.start()
        forwarder = BusQueryForwarder(bus, kms, timeout=2.0)
        items = forwarder.execute(CALLER, QueryRequest("crm", "SELECT 1"))
        assert isinstance(await items.__anext__(), bytes)
        hold.clear()  # the source is mid-result
        tasks = [s.task for s in replica._serving.values() if s.task is not None]
        assert len(tasks) == 1
        await items.aclose()  # type: ignore[attr-defined]
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert replica.in_flight == 0
        assert replica.stats.cancelled == 1 and engine.closed == 1
        await replica.stop()
        await bus.close()

    run_bounded(body(), 20)


class FakeReplica:
    """Answers a request with ACCEPT, then sends the frames a test scripts."""

    def __init__(
        self, bus: InProcessBus, kms: LocalKeyRing, script: list[tuple[FrameKind, int, bytes]]
    ) -> None:
        self.bus = bus
        self.sealer = BusSealer(kms)
        self.script = script

    async def start(self) -> None:
        await self.bus.subscribe(stage_query_filter("production"), self.on_request, "q")

    def sealed(
        self, cipher: StreamCipher, request: WireRequest, kind: FrameKind, seq: int, body: bytes
    ) -> bytes:
        frame = Frame(kind, request.request_id, seq, body).encode()
        return self.sealer.seal_in(
            cipher,
            frame,
            tenant="acme",
            stage="production",
            subject=request.reply,
            purpose=Purpose.QUERY_REPLY,
        )

    async def on_request(self, msg: Message) -> None:
        cipher, data = self.sealer.accept_stream(
            msg.payload,
            tenant="acme",
            stage="production",
            subject=msg.subject,
            purpose=Purpose.QUERY_REQUEST,
        )
        request = WireRequest.decode(Frame.decode(data), "acme", "production")
        # A forged message on the inbox first: ignored, counted.
        await self.bus.publish(request.reply, b"FBSM" + b"\x00" * 200)
        # Every scripted frame is queued at the forwarder's inbox before the acceptance,
        # so the forwarder finds them all there when it starts reading.
        for kind, seq, body in self.script:
            await self.bus.publish(request.reply, self.sealed(cipher, request, kind, seq, body))
        accept = self.sealed(cipher, request, FrameKind.ACCEPT, 0, b'{"replica":"fake"}')
        await msg.respond(accept)


END = end_body(Summary(1, False, False, 1), b"")


@pytest.mark.parametrize(
    ("script", "error", "match"),
    [
        (
            [(FrameKind.CHUNK, 0, b"m0"), (FrameKind.CHUNK, 2, b"m2")],
            SourceUnavailable,
            "a gap at chunk 1",
        ),
        (
            [(FrameKind.CHUNK, 0, b"m0"), (FrameKind.CHUNK, 0, b"m0")],
            SourceUnavailable,
            "a duplicate at chunk 1",
        ),
        (
            [(FrameKind.CHUNK, 0, b"m0"), (FrameKind.END, 2, END)],
            SourceUnavailable,
            "ended after 1 of 2 chunks",
        ),
        (
            [(FrameKind.CHUNK, n, b"m") for n in range(5)],
            InternalError,
            "flow-control window",
        ),
        (
            [
                (FrameKind.CHUNK, 0, b"m0"),
                (FrameKind.ERROR, 1, b'{"code":"deadline_exceeded","message":"too slow"}'),
            ],
            DeadlineExceeded,
            "too slow",
        ),
    ],
)
def test_the_forwarder_never_returns_a_broken_stream(
    kms: LocalKeyRing,
    script: list[tuple[FrameKind, int, bytes]],
    error: type[Exception],
    match: str,
) -> None:
    async def body() -> None:
        bus = InProcessBus()
        await FakeReplica(bus, kms, script).start()
        forwarder = BusQueryForwarder(bus, kms, timeout=1.0, window=2, retries=0)
        with pytest.raises(error, match=match):
            await _collect(forwarder.execute(CALLER, QueryRequest("crm", "SELECT 1")))
        assert forwarder.sealer.counters["rejected_integrity"] == 1  # the forged one
        await bus.close()

    run_bounded(body(), 20)


def test_subjects_are_namespaced_by_tenant_and_stage() -> None:
    assert query_subject("acme", "production") == "fabric.acme.production.query"
    assert stage_query_filter("production") == "fabric.*.production.query"
    reply = reply_subject("acme", "test", "in", b"\x01" * 16)
    assert reply == "fabric.acme.test.reply.in." + "01" * 16
    with pytest.raises(InvalidArgument):
        query_subject("acme.*", "production")
