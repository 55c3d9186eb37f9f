"""One behavioural suite for every bus backend: in-process and NATS give the same answers.

Each test runs once per backend (`backend` fixture). The NATS runs use the shared server
(FABRIC_TEST_NATS_URL or 127.0.0.1:4222, JetStream on) with a fresh tenant and fresh
durable names, and delete their durables afterwards. Waiting is on events and futures with
timeouts, never on sleeps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from fabric.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    ResourceExhausted,
    SourceUnavailable,
)
from fabric.messaging import (
    Bus,
    EventKind,
    EventLog,
    InProcessBus,
    InProcessEventLog,
    Message,
    PlatformEvent,
    RedeliveryPolicy,
    events_filter,
    subject_for,
)
from tests.support.nats import nats_url, run_bounded

# Short delays so redelivery tests finish fast; ack_wait bounds a crashed handler's retry.
POLICY = RedeliveryPolicy(max_deliver=5, initial_delay=0.05, max_delay=0.2, ack_wait=1.0)
WAIT = 10.0


@dataclass
class Session:
    """One test's bus and event log, a fresh tenant, and durable names to clean up."""

    bus: Bus
    events: EventLog
    tenant: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:12]}")
    durables: list[str] = field(default_factory=list)
    other_tenants: list[str] = field(default_factory=list)

    def other_tenant(self) -> str:
        name = f"o{uuid.uuid4().hex[:12]}"
        self.other_tenants.append(name)
        return name

    def durable(self, label: str) -> str:
        name = f"{label}-{uuid.uuid4().hex[:10]}"
        self.durables.append(name)
        return name

    def subject(self, kind: str = "query") -> str:
        return subject_for(kind, self.tenant, "dev")

    def event(self, kind: EventKind = EventKind.CONNECTION_UPDATED, **fields: Any) -> PlatformEvent:
        return PlatformEvent(kind=kind, tenant=self.tenant, connection="pg", **fields)


Opener = Callable[[], Awaitable[tuple[Bus, EventLog, Callable[[Session], Awaitable[None]]]]]


@dataclass
class Backend:
    name: str
    open: Opener

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        bus, events, cleanup = await self.open()
        session = Session(bus, events)
        try:
            yield session
        finally:
            try:
                await events.close()
                await cleanup(session)
            finally:
                await bus.close()


async def _open_inprocess() -> tuple[Bus, EventLog, Callable[[Session], Awaitable[None]]]:
    async def cleanup(_: Session) -> None:
        return None

    return InProcessBus(), InProcessEventLog(policy=POLICY), cleanup


def _nats_opener(url: str) -> Opener:
    async def open_nats() -> tuple[Bus, EventLog, Callable[[Session], Awaitable[None]]]:
        from fabric.messaging.nats_bus import JetStreamEventLog, NatsBus

        bus = await NatsBus.connect(url, name="fabric-contract-test")
        events = await JetStreamEventLog.open(bus, policy=POLICY, fetch_timeout=0.5)

        async def cleanup(session: Session) -> None:
            if bus.closed:
                return
            for durable in session.durables:
                await events.delete_durable(durable)
            # Leave the shared stream as it was: drop this test tenant's events.
            for tenant in [session.tenant, *session.other_tenants]:
                await bus.jetstream().purge_stream(events.stream, subject=events_filter(tenant))

        return bus, events, cleanup

    return open_nats


@pytest.fixture(params=["inprocess", "nats"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "inprocess":
        return Backend("inprocess", _open_inprocess)
    return Backend("nats", _nats_opener(nats_url()))


def _future() -> asyncio.Future[Any]:
    return asyncio.get_running_loop().create_future()


# -- core messaging ----------------------------------------------------------------------


def test_publish_reaches_every_plain_subscriber_with_headers(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            got: list[asyncio.Future[Message]] = [_future(), _future()]
            for fut in got:

                async def handler(msg: Message, fut: asyncio.Future[Message] = fut) -> None:
                    fut.set_result(msg)

                await s.bus.subscribe(s.subject(), handler)
            wildcard: asyncio.Future[Message] = _future()

            async def on_any(msg: Message) -> None:
                wildcard.set_result(msg)

            await s.bus.subscribe(f"fabric.{s.tenant}.*.query", on_any)
            await s.bus.publish(s.subject(), b"\x00payload\xff", {"Fabric-Kind": "test"})
            for msg in [
                *await asyncio.wait_for(asyncio.gather(*got), WAIT),
                await asyncio.wait_for(wildcard, WAIT),
            ]:
                assert msg.subject == s.subject()
                assert msg.payload == b"\x00payload\xff"
                assert msg.headers.get("Fabric-Kind") == "test"

    run_bounded(body())


def test_subscription_order_is_kept_and_unsubscribe_stops_delivery(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            seen: list[bytes] = []
            done = asyncio.Event()

            async def handler(msg: Message) -> None:
                seen.append(msg.payload)
                if len(seen) == 50:
                    done.set()

            sub = await s.bus.subscribe(s.subject(), handler)
            for i in range(50):
                await s.bus.publish(s.subject(), str(i).encode())
            await asyncio.wait_for(done.wait(), WAIT)
            assert seen == [str(i).encode() for i in range(50)]
            await sub.unsubscribe()
            await sub.unsubscribe()  # idempotent
            with pytest.raises(SourceUnavailable, match="no responders"):
                await s.bus.request(s.subject(), b"anyone?", timeout=2.0)

    run_bounded(body())


def test_queue_group_delivers_each_message_to_exactly_one_member(backend: Backend) -> None:
    total = 60

    async def body() -> None:
        async with backend.session() as s:
            received: Counter[bytes] = Counter()
            per_member: Counter[int] = Counter()
            all_in = asyncio.Event()

            for member in range(3):

                async def handler(msg: Message, member: int = member) -> None:
                    received[msg.payload] += 1
                    per_member[member] += 1
                    if sum(received.values()) >= total:
                        all_in.set()

                await s.bus.subscribe(s.subject(), handler, queue="replicas")
            for i in range(total):
                await s.bus.publish(s.subject(), f"q{i}".encode())
            await asyncio.wait_for(all_in.wait(), WAIT)
        # Closing drained every subscription: nothing more can arrive now.
        assert set(received) == {f"q{i}".encode() for i in range(total)}
        assert all(count == 1 for count in received.values())
        assert sorted(per_member) == [0, 1, 2]
        assert all(per_member[m] > 0 for m in range(3))

    run_bounded(body())


def test_request_reply(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:

            async def echo(msg: Message) -> None:
                await msg.respond(b"re:" + msg.payload, {"Fabric-Reply": "1"})

            await s.bus.subscribe(s.subject(), echo, queue="replicas")
            replies = await asyncio.gather(
                *(s.bus.request(s.subject(), f"r{i}".encode(), timeout=5.0) for i in range(20))
            )
            assert replies == [f"re:r{i}".encode() for i in range(20)]

    run_bounded(body())


def test_request_without_responders_is_unavailable(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            with pytest.raises(SourceUnavailable, match="no responders"):
                await s.bus.request(s.subject("nobody"), b"x", timeout=5.0)

    run_bounded(body())


def test_request_without_reply_times_out(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            heard = asyncio.Event()

            async def silent(msg: Message) -> None:
                heard.set()

            await s.bus.subscribe(s.subject(), silent)
            with pytest.raises(DeadlineExceeded, match="no reply"):
                await s.bus.request(s.subject(), b"x", timeout=0.3)
            assert heard.is_set()

    run_bounded(body())


def test_plain_message_cannot_be_answered(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            outcome: asyncio.Future[BaseException | None] = _future()

            async def handler(msg: Message) -> None:
                try:
                    await msg.respond(b"nobody asked")
                except Exception as exc:
                    outcome.set_result(exc)
                else:
                    outcome.set_result(None)

            await s.bus.subscribe(s.subject(), handler)
            await s.bus.publish(s.subject(), b"x")
            error = await asyncio.wait_for(outcome, WAIT)
            assert error is not None and "no reply subject" in str(error)

    run_bounded(body())


def test_payload_up_to_max_is_delivered_whole_and_over_max_is_refused(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            limit = s.bus.max_payload
            assert limit > 0
            got: asyncio.Future[Message] = _future()

            async def handler(msg: Message) -> None:
                got.set_result(msg)

            await s.bus.subscribe(s.subject(), handler)
            with pytest.raises(ResourceExhausted, match="split it into chunks"):
                await s.bus.publish(s.subject(), b"x" * (limit + 1))
            with pytest.raises(ResourceExhausted):  # headers count against the limit too
                await s.bus.publish(s.subject(), b"x" * (limit - 4), {"K": "v"})
            with pytest.raises(ResourceExhausted):
                await s.bus.request(s.subject(), b"x" * (limit + 1), timeout=1.0)
            whole = bytes(range(256)) * (limit // 256) + b"\x01" * (limit % 256)
            assert len(whole) == limit
            await s.bus.publish(s.subject(), whole)
            msg = await asyncio.wait_for(got, WAIT)
            assert msg.payload == whole

    run_bounded(body())


def test_publish_after_close_is_an_error(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            await s.bus.close()
            with pytest.raises(SourceUnavailable, match="closed"):
                await s.bus.publish(s.subject(), b"lost?")
            with pytest.raises(SourceUnavailable):
                await s.bus.request(s.subject(), b"lost?", timeout=1.0)
            await s.bus.close()  # idempotent

    run_bounded(body())


def test_handler_failure_does_not_end_the_subscription(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            second: asyncio.Future[bytes] = _future()

            async def handler(msg: Message) -> None:
                if msg.payload == b"boom":
                    raise RuntimeError("handler bug")
                second.set_result(msg.payload)

            await s.bus.subscribe(s.subject(), handler)
            await s.bus.publish(s.subject(), b"boom")
            await s.bus.publish(s.subject(), b"fine")
            assert await asyncio.wait_for(second, WAIT) == b"fine"

    run_bounded(body())


# -- durable platform events -------------------------------------------------------------


def test_event_is_acknowledged_only_after_its_handler_returns(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            durable = s.durable("replica")
            during: list[int] = []
            handled: asyncio.Queue[PlatformEvent] = asyncio.Queue()

            async def handler(event: PlatformEvent) -> None:
                # While applying, exactly this event is unacknowledged: the ones before
                # were acknowledged when their handler returned, this one not yet.
                during.append(await s.events.unacknowledged(durable))
                await handled.put(event)

            consumer = await s.events.consume(durable, handler, tenant=s.tenant)
            sent = []
            for version in range(3):
                event = s.event(catalog_version=version)
                sent.append(event)
                await s.events.publish_event(event)
                assert await asyncio.wait_for(handled.get(), WAIT) == event
            await consumer.stop()
            assert during == [1, 1, 1]
            assert await s.events.unacknowledged(durable) == 0

    run_bounded(body())


def test_handler_error_redelivers_the_same_event(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            durable = s.durable("replica")
            deliveries: list[str] = []
            applied: asyncio.Future[PlatformEvent] = _future()

            async def flaky(event: PlatformEvent) -> None:
                deliveries.append(event.id)
                if len(deliveries) < 3:
                    raise RuntimeError("source briefly unreachable")
                applied.set_result(event)

            consumer = await s.events.consume(durable, flaky, tenant=s.tenant)
            event = s.event(EventKind.CONNECTION_DELETED)
            await s.events.publish_event(event)
            assert await asyncio.wait_for(applied, WAIT) == event
            await consumer.stop()
            assert deliveries == [event.id] * 3
            assert await s.events.unacknowledged(durable) == 0

    run_bounded(body())


def test_event_is_dropped_after_max_deliver_failures_and_others_flow(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            durable = s.durable("replica")
            attempts: Counter[str] = Counter()
            spent = asyncio.Event()
            fence_seen = asyncio.Event()
            poison = s.event(EventKind.KEYS_ROTATED)
            follow = s.event(EventKind.METADATA_REFRESHED)
            fence = s.event(EventKind.SELECTION_CHANGED)

            async def handler(event: PlatformEvent) -> None:
                attempts[event.id] += 1
                if event.id == fence.id:
                    fence_seen.set()
                if event.id == poison.id:
                    if attempts[poison.id] == POLICY.max_deliver:
                        spent.set()
                    raise RuntimeError("always fails")

            consumer = await s.events.consume(durable, handler, tenant=s.tenant)
            await s.events.publish_event(poison)
            await s.events.publish_event(follow)
            await asyncio.wait_for(spent.wait(), WAIT)
            await s.events.publish_event(fence)
            await asyncio.wait_for(fence_seen.wait(), WAIT)
            await consumer.stop()
            assert attempts == {poison.id: POLICY.max_deliver, follow.id: 1, fence.id: 1}
            assert await s.events.unacknowledged(durable) == 0

    run_bounded(body())


def test_handler_that_dies_mid_event_gets_it_again_on_resume(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            durable = s.durable("replica")
            started = asyncio.Event()

            async def dies(event: PlatformEvent) -> None:
                started.set()
                raise asyncio.CancelledError  # the replica is torn down mid-handler

            first = await s.events.consume(durable, dies, tenant=s.tenant)
            event = s.event()
            await s.events.publish_event(event)
            await asyncio.wait_for(started.wait(), WAIT)
            await first.stop()

            again: asyncio.Future[PlatformEvent] = _future()

            async def applies(event: PlatformEvent) -> None:
                again.set_result(event)

            second = await s.events.consume(durable, applies, tenant=s.tenant)
            assert (await asyncio.wait_for(again, WAIT)).id == event.id  # after ack_wait
            await second.stop()

    run_bounded(body())


def test_same_event_published_twice_is_delivered_once(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            durable = s.durable("replica")
            seen: list[str] = []
            fence_seen = asyncio.Event()
            fence = s.event(EventKind.SELECTION_CHANGED)

            async def handler(event: PlatformEvent) -> None:
                seen.append(event.id)
                if event.id == fence.id:
                    fence_seen.set()

            consumer = await s.events.consume(durable, handler, tenant=s.tenant)
            event = s.event()
            await s.events.publish_event(event)
            await s.events.publish_event(event)  # a publisher retry after a lost confirm
            await s.events.publish_event(fence)
            await asyncio.wait_for(fence_seen.wait(), WAIT)
            await consumer.stop()
            assert seen == [event.id, fence.id]

    run_bounded(body())


def test_every_durable_gets_every_event_and_only_its_tenant(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            other_tenant = s.other_tenant()
            queues: list[asyncio.Queue[PlatformEvent]] = [asyncio.Queue() for _ in range(3)]
            consumers = []
            for index, queue in enumerate(queues):

                async def handler(
                    event: PlatformEvent, q: asyncio.Queue[PlatformEvent] = queue
                ) -> None:
                    await q.put(event)

                consumers.append(
                    await s.events.consume(s.durable(f"r{index}"), handler, tenant=s.tenant)
                )
            foreign = PlatformEvent(EventKind.CONNECTION_UPDATED, other_tenant, "pg")
            await s.events.publish_event(foreign)
            sent = [s.event(kind) for kind in EventKind]
            for event in sent:
                await s.events.publish_event(event)
            for queue in queues:
                got = [await asyncio.wait_for(queue.get(), WAIT) for _ in sent]
                assert got == sent
            for consumer in consumers:
                await consumer.stop()
            for queue in queues:
                assert queue.empty()

    run_bounded(body())


def test_events_published_while_a_consumer_is_stopped_arrive_when_it_resumes(
    backend: Backend,
) -> None:
    async def body() -> None:
        async with backend.session() as s:
            durable = s.durable("replica")
            got: asyncio.Queue[PlatformEvent] = asyncio.Queue()

            async def handler(event: PlatformEvent) -> None:
                await got.put(event)

            consumer = await s.events.consume(durable, handler, tenant=s.tenant)
            before = s.event(catalog_version=1)
            await s.events.publish_event(before)
            assert await asyncio.wait_for(got.get(), WAIT) == before
            await consumer.stop()

            missed = [s.event(catalog_version=v) for v in (2, 3, 4)]
            for event in missed:
                await s.events.publish_event(event)

            consumer = await s.events.consume(durable, handler, tenant=s.tenant)
            assert [await asyncio.wait_for(got.get(), WAIT) for _ in missed] == missed
            await consumer.stop()
            assert got.empty()

    run_bounded(body())


def test_one_durable_is_consumed_once_per_process(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            durable = s.durable("replica")

            async def handler(event: PlatformEvent) -> None:
                return None

            consumer = await s.events.consume(durable, handler, tenant=s.tenant)
            with pytest.raises(FailedPrecondition, match="already being consumed"):
                await s.events.consume(durable, handler, tenant=s.tenant)
            await consumer.stop()
            with pytest.raises(FailedPrecondition, match="another filter"):
                await s.events.consume(durable, handler)
            consumer = await s.events.consume(durable, handler, tenant=s.tenant)
            await consumer.stop()

    run_bounded(body())


def test_publish_event_after_close_is_an_error(backend: Backend) -> None:
    async def body() -> None:
        async with backend.session() as s:
            await s.events.close()
            await s.bus.close()
            with pytest.raises(SourceUnavailable):
                await s.events.publish_event(s.event())

    run_bounded(body())
