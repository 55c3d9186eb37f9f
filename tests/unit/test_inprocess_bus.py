"""Subject naming, message checks, platform events and the in-process backend's own rules.

The behaviour both backends share is in tests/integration/test_bus_contract.py; this
file covers the pure functions and what only the in-process bus promises.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import uuid
from collections import Counter

import pytest

import fabric.messaging as messaging
from fabric.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    SourceUnavailable,
)
from fabric.messaging import (
    Bus,
    EventKind,
    EventLog,
    IdempotentHandler,
    InProcessBus,
    InProcessEventLog,
    Message,
    PlatformEvent,
    RedeliveryPolicy,
    event_subject,
    events_filter,
    subject_for,
    subject_matches,
)
from fabric.messaging.bus import check_headers, encoded_size, validate_subject
from tests.support.nats import run_bounded

WAIT = 5.0

# -- subjects ------------------------------------------------------------------------


def test_subject_for_namespaces_by_tenant_and_stage() -> None:
    assert subject_for("query", "acme", "production") == "fabric.acme.production.query"
    assert subject_for("query", "acme", "dev", "chunk", "7") == "fabric.acme.dev.query.chunk.7"
    assert event_subject("connection.updated", "acme") == "fabric.events.acme.connection.updated"
    assert events_filter() == "fabric.events.>"
    assert events_filter("acme") == "fabric.events.acme.>"


@pytest.mark.parametrize(
    "tenant",
    ["", "a.b", "*", ">", "a*", "a>", "a b", "ac\nme", "$SYS", "événement", "x" * 129, "events"],
)
def test_user_tokens_cannot_change_the_subject_shape(tenant: str) -> None:
    with pytest.raises(InvalidArgument):
        subject_for("query", tenant, "dev")
    with pytest.raises(InvalidArgument):
        subject_for("query", "acme", tenant if tenant != "events" else "a.b")
    with pytest.raises(InvalidArgument):
        event_subject("connection.updated", tenant)


def test_subject_validation_and_matching() -> None:
    assert validate_subject("fabric.acme.dev.query", wildcards=False)
    assert validate_subject("fabric.*.dev.>", wildcards=True)
    for bad in ["", "a..b", ".a", "a.", "a b", "a.>.b", "a.b*"]:
        with pytest.raises(InvalidArgument):
            validate_subject(bad, wildcards=True)
    with pytest.raises(InvalidArgument, match="only subscriptions"):
        validate_subject("fabric.*.query", wildcards=False)
    assert subject_matches("a.*.c", "a.b.c")
    assert not subject_matches("a.*.c", "a.b.c.d")
    assert subject_matches("a.>", "a.b.c")
    assert not subject_matches("a.>", "a")
    assert not subject_matches("a.b", "a.b.c")
    assert subject_matches("a.b", "a.b")


def test_headers_are_checked_not_rewritten_and_counted() -> None:
    assert check_headers({"Fabric-Chunk": "1/3"}) == {"Fabric-Chunk": "1/3"}
    for bad in [{"a:b": "v"}, {"": "v"}, {"K": "line\r\nbreak"}, {"K": " padded "}]:
        with pytest.raises(InvalidArgument):
            check_headers(bad)
    # NATS/1.0\r\n + "K: v\r\n" + \r\n
    assert encoded_size(b"abc", {"K": "v"}) == 3 + 10 + 6 + 2
    assert encoded_size(b"abc", None) == 3


# -- platform events -----------------------------------------------------------------


def test_platform_event_round_trips_as_json_without_extra_fields() -> None:
    event = PlatformEvent(
        EventKind.METADATA_REFRESHED,
        "acme",
        "warehouse",
        stage="production",
        catalog_version=12,
    )
    body = json.loads(event.to_json())
    assert set(body) == {
        "v",
        "id",
        "kind",
        "tenant",
        "connection",
        "stage",
        "catalog_version",
        "at",
    }
    assert PlatformEvent.from_json(event.to_json()) == event
    assert event.subject == "fabric.events.acme.metadata.refreshed"
    assert uuid.UUID(event.id)
    assert event.at.tzinfo is not None
    assert PlatformEvent(EventKind.KEYS_ROTATED, "acme", "x").id != event.id


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "kind": "connection.updated"}',
        json.dumps(
            {
                "v": 1,
                "id": "nope",
                "kind": "connection.updated",
                "tenant": "acme",
                "connection": "pg",
                "at": "2026-01-01T00:00:00+00:00",
            }
        ).encode(),
        json.dumps(
            {
                "v": 1,
                "id": str(uuid.uuid4()),
                "kind": "table.dropped",
                "tenant": "acme",
                "connection": "pg",
                "at": "2026-01-01T00:00:00+00:00",
            }
        ).encode(),
        json.dumps(
            {
                "v": 1,
                "id": str(uuid.uuid4()),
                "kind": "keys.rotated",
                "tenant": "a.b",
                "connection": "pg",
                "at": "2026-01-01T00:00:00+00:00",
            }
        ).encode(),
    ],
)
def test_malformed_events_are_refused_without_echoing_them(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as raised:
        PlatformEvent.from_json(data)
    assert "a.b" not in str(raised.value)


def test_platform_event_fields_are_validated() -> None:
    with pytest.raises(InvalidArgument):
        PlatformEvent(EventKind.CONNECTION_UPDATED, "acme", "")
    with pytest.raises(InvalidArgument):
        PlatformEvent(EventKind.CONNECTION_UPDATED, "acme", "pg", catalog_version=True)
    with pytest.raises(InvalidArgument):
        PlatformEvent(EventKind.CONNECTION_UPDATED, "acme", "pg", stage="pro.d")
    with pytest.raises(InvalidArgument):
        PlatformEvent(EventKind.CONNECTION_UPDATED, "acme", "pg", at=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        PlatformEvent("table.dropped", "acme", "pg")  # type: ignore[arg-type]


def test_redelivery_policy_backs_off_to_a_bound() -> None:
    policy = RedeliveryPolicy(initial_delay=0.5, max_delay=4.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(InvalidArgument):
        RedeliveryPolicy(max_deliver=0)
    with pytest.raises(InvalidArgument):
        RedeliveryPolicy(initial_delay=5.0, max_delay=1.0)


def test_idempotent_handler_applies_an_id_once() -> None:
    applied: list[str] = []

    async def apply(event: PlatformEvent) -> None:
        applied.append(event.id)

    async def body() -> None:
        handler = IdempotentHandler(apply, capacity=2)
        a, b, c = (PlatformEvent(EventKind.CONNECTION_UPDATED, "acme", "pg") for _ in range(3))
        for event in (a, a, b, a, c, a):
            await handler(event)
        # capacity 2: each skip refreshes a, so b is the one forgotten when c arrives.
        assert applied == [a.id, b.id, c.id]
        assert handler.skipped == 3
        assert handler.seen(a.id) and handler.seen(c.id) and not handler.seen(b.id)

    run_bounded(body())


def test_idempotent_handler_does_not_remember_a_failure() -> None:
    calls = Counter[str]()

    async def flaky(event: PlatformEvent) -> None:
        calls[event.id] += 1
        if calls[event.id] == 1:
            raise RuntimeError("first try fails")

    async def body() -> None:
        handler = IdempotentHandler(flaky)
        event = PlatformEvent(EventKind.CONNECTION_DELETED, "acme", "pg")
        with pytest.raises(RuntimeError):
            await handler(event)
        await handler(event)
        await handler(event)
        assert calls[event.id] == 2 and handler.skipped == 1

    run_bounded(body())


# -- the in-process backend ----------------------------------------------------------


def test_backends_satisfy_the_protocols() -> None:
    async def body() -> None:
        bus = InProcessBus()
        events = InProcessEventLog()
        assert isinstance(bus, Bus)
        assert isinstance(events, EventLog)
        await events.close()
        await bus.close()

    run_bounded(body())


def test_public_names_match_all() -> None:
    exported = set(messaging.__all__)
    defined = {
        name
        for name, value in vars(messaging).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    } - {"annotations", "TYPE_CHECKING", "Any"}
    assert defined | {"NatsBus", "JetStreamEventLog"} == exported  # those two load lazily
    for name in exported:
        assert getattr(messaging, name) is not None
    with pytest.raises(AttributeError):
        _ = messaging.NoSuchThing


def test_queue_group_is_round_robin_in_process() -> None:
    async def body() -> None:
        bus = InProcessBus()
        seen: Counter[int] = Counter()
        done = asyncio.Event()
        for member in range(3):

            async def handler(msg: Message, member: int = member) -> None:
                seen[member] += 1
                if sum(seen.values()) == 9:
                    done.set()

            await bus.subscribe("fabric.acme.dev.query", handler, queue="replicas")
        for _ in range(9):
            await bus.publish("fabric.acme.dev.query", b"")
        await asyncio.wait_for(done.wait(), WAIT)
        assert seen == {0: 3, 1: 3, 2: 3}
        await bus.close()

    run_bounded(body())


def test_configurable_max_payload_and_bad_arguments() -> None:
    async def body() -> None:
        bus = InProcessBus(max_payload=16)
        assert bus.max_payload == 16
        with pytest.raises(ResourceExhausted, match="16 bytes"):
            await bus.publish("a.b", b"x" * 17)
        with pytest.raises(InvalidArgument):
            await bus.publish("a.*", b"")
        with pytest.raises(InvalidArgument):
            await bus.publish("a.b", "text")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await bus.subscribe("a.b", _ignore, queue="bad.queue")
        with pytest.raises(InvalidArgument):
            await bus.request("a.b", b"", timeout=0)
        await bus.close()
        with pytest.raises(InvalidArgument):
            InProcessBus(max_payload=0)

    run_bounded(body())


async def _ignore(msg: Message) -> None:
    return None


def test_close_fails_a_request_in_flight_and_refuses_subscriptions() -> None:
    async def body() -> None:
        bus = InProcessBus()
        heard = asyncio.Event()

        async def silent(msg: Message) -> None:
            heard.set()

        await bus.subscribe("fabric.acme.dev.query", silent)
        pending = asyncio.ensure_future(bus.request("fabric.acme.dev.query", b"", timeout=WAIT))
        await asyncio.wait_for(heard.wait(), WAIT)
        await bus.close()
        with pytest.raises(SourceUnavailable, match="closed before the reply"):
            await pending
        with pytest.raises(SourceUnavailable):
            await bus.subscribe("a.b", silent)
        assert bus.closed

    run_bounded(body())


def test_request_timeout_is_deadline_exceeded() -> None:
    async def body() -> None:
        bus = InProcessBus()
        await bus.subscribe("fabric.acme.dev.query", _ignore)
        with pytest.raises(DeadlineExceeded):
            await bus.request("fabric.acme.dev.query", b"", timeout=0.05)
        await bus.close()

    run_bounded(body())


def test_stop_waits_for_the_event_being_applied() -> None:
    async def body() -> None:
        events = InProcessEventLog()
        started, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def slow(event: PlatformEvent) -> None:
            started.set()
            await release.wait()
            finished.set()

        consumer = await events.consume("r1", slow)
        await events.publish_event(PlatformEvent(EventKind.CONNECTION_UPDATED, "acme", "pg"))
        await asyncio.wait_for(started.wait(), WAIT)
        stopping = asyncio.ensure_future(consumer.stop())
        assert await events.unacknowledged("r1") == 1
        release.set()
        await asyncio.wait_for(stopping, WAIT)
        assert finished.is_set()
        assert await events.unacknowledged("r1") == 0
        with pytest.raises(NotFound):
            await events.unacknowledged("nobody")
        await events.close()

    run_bounded(body())


def test_retention_drops_the_oldest_events() -> None:
    async def body() -> None:
        events = InProcessEventLog(max_events=2)
        got: asyncio.Queue[PlatformEvent] = asyncio.Queue()

        async def handler(event: PlatformEvent) -> None:
            await got.put(event)

        consumer = await events.consume("r1", handler)
        await consumer.stop()
        sent = [PlatformEvent(EventKind.CONNECTION_UPDATED, "acme", f"c{i}") for i in range(4)]
        for event in sent:
            await events.publish_event(event)
        consumer = await events.consume("r1", handler)
        assert [await asyncio.wait_for(got.get(), WAIT) for _ in range(2)] == sent[2:]
        await consumer.stop()
        assert got.empty()
        await events.close()
        with pytest.raises(SourceUnavailable):
            await events.publish_event(sent[0])
        with pytest.raises(SourceUnavailable):
            await events.consume("r2", handler)

    run_bounded(body())


def test_durable_names_are_tokens() -> None:
    async def body() -> None:
        events = InProcessEventLog()
        with pytest.raises(InvalidArgument):
            await events.consume("replica.1", _ignore_event)
        with pytest.raises(FailedPrecondition):
            first = await events.consume("r1", _ignore_event)
            try:
                await events.consume("r1", _ignore_event)
            finally:
                await first.stop()
        await events.close()

    run_bounded(body())


async def _ignore_event(event: PlatformEvent) -> None:
    return None
