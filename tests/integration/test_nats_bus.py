"""NATS-only behaviour: connecting, server limits, JetStream setup, and a server restart.

Tests that stop or reconfigure NATS start their own nats-server (tests/support/nats.py)
on a free port with JetStream in a tmp dir; it is killed in `finally`. The machine's
shared server is only connected to, never stopped.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections import Counter
from pathlib import Path

import nats
import pytest

from fabric.errors import FailedPrecondition, ResourceExhausted, SourceUnavailable
from fabric.messaging import (
    EventKind,
    IdempotentHandler,
    Message,
    PlatformEvent,
    RedeliveryPolicy,
    subject_for,
)
from fabric.messaging.nats_bus import JetStreamEventLog, NatsBus, nats_url_from_env
from tests.support.nats import (
    NatsServerProcess,
    nats_url,
    private_nats_server,
    run_bounded,
)

WAIT = 15.0
FAST = RedeliveryPolicy(max_deliver=5, initial_delay=0.05, max_delay=0.2, ack_wait=2.0)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABRIC_NATS_URL", raising=False)
    assert nats_url_from_env() == ["nats://127.0.0.1:4222"]
    monkeypatch.setenv("FABRIC_NATS_URL", "nats://a:4222, nats://b:4222")
    assert nats_url_from_env() == ["nats://a:4222", "nats://b:4222"]


def test_connect_to_nothing_is_unavailable_within_the_deadline() -> None:
    async def body() -> None:
        with pytest.raises(SourceUnavailable, match="cannot connect to NATS"):
            await NatsBus.connect(
                f"nats://127.0.0.1:{_closed_port()}",
                connect_timeout=0.5,
                connect_deadline=1.0,
                reconnect_wait=0.1,
            )

    run_bounded(body(), 10)


def test_wrong_password_is_refused_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-value-never-logged"

    async def body(url: str) -> None:
        with pytest.raises(SourceUnavailable) as raised:
            await NatsBus.connect(
                url,
                user="fabric",
                password=secret,
                connect_timeout=0.5,
                connect_deadline=1.5,
                reconnect_wait=0.1,
            )
        # The server writes its refusal and closes at once; the client often reads the
        # refusal (and then keeps it over later errors), but when its own unread CONNECT
        # makes the close a reset, the refusal is lost in the kernel and only the reset
        # is left to report.
        assert re.search(
            r"last error: (AuthorizationError|ConnectionResetError)", str(raised.value)
        )
        assert "credentials" in str(raised.value)
        assert secret not in str(raised.value)
        bus = await NatsBus.connect(url, user="fabric", password="right-one")
        await bus.close()

    caplog.set_level(logging.DEBUG)
    with private_nats_server(
        tmp_path, jetstream=False, extra_args=["--user", "fabric", "--pass", "right-one"]
    ) as server:
        run_bounded(body(server.url), 20)
    assert secret not in caplog.text
    assert "right-one" not in caplog.text


def test_max_payload_comes_from_the_server(tmp_path: Path) -> None:
    async def body(url: str) -> None:
        bus = await NatsBus.connect(url)
        try:
            assert bus.max_payload == 4096
            subject = subject_for("query", "acme", "dev")
            got: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

            async def handler(msg: Message) -> None:
                got.set_result(msg)

            await bus.subscribe(subject, handler)
            with pytest.raises(ResourceExhausted, match="4096"):
                await bus.publish(subject, b"x" * 4097)
            await bus.publish(subject, b"y" * 4096)
            assert (await asyncio.wait_for(got, WAIT)).payload == b"y" * 4096
            assert bus.connected  # the refused message never reached the server
        finally:
            await bus.close()

    with private_nats_server(tmp_path, jetstream=False, config="max_payload: 4096\n") as server:
        run_bounded(body(server.url), 20)


def test_event_log_without_jetstream_is_unavailable(tmp_path: Path) -> None:
    async def body(url: str) -> None:
        bus = await NatsBus.connect(url)
        try:
            with pytest.raises(SourceUnavailable, match="JetStream"):
                await JetStreamEventLog.open(bus, api_timeout=1.0)
        finally:
            await bus.close()

    with private_nats_server(tmp_path, jetstream=False) as server:
        run_bounded(body(server.url), 20)


def test_stream_creation_is_idempotent_and_checked(tmp_path: Path) -> None:
    async def body(url: str) -> None:
        buses = [await NatsBus.connect(url, name=f"replica-{i}") for i in range(3)]
        try:
            # Three replicas starting at once all end up with the one stream.
            logs = await asyncio.gather(*(JetStreamEventLog.open(bus) for bus in buses))
            await logs[0].ensure_stream()
            info = await buses[0].jetstream().stream_info("FABRIC_EVENTS")
            assert info.config.subjects == ["fabric.events.>"]
            assert info.config.storage == nats.js.api.StorageType.FILE
            # A stream of that name that does not capture the events is refused.
            await buses[0].jetstream().add_stream(name="ODD", subjects=["odd.>"])
            with pytest.raises(FailedPrecondition, match="does not capture"):
                await JetStreamEventLog.open(buses[0], stream="ODD")
            # So is a name of our own when another stream already captures the events.
            with pytest.raises(FailedPrecondition, match="already captures"):
                await JetStreamEventLog.open(buses[0], stream="OTHER_NAME")
        finally:
            for bus in buses:
                await bus.close()

    with private_nats_server(tmp_path) as server:
        run_bounded(body(server.url), 30)


def test_shared_server_answers_and_reports_its_limits() -> None:
    async def body() -> None:
        bus = await NatsBus.connect(nats_url(), name="fabric-test-shared")
        try:
            assert bus.connected
            assert bus.max_payload >= 1024
            subject = subject_for("ping", "acme", "dev")

            async def pong(msg: Message) -> None:
                await msg.respond(b"pong")

            sub = await bus.subscribe(subject, pong, queue="replicas")
            assert await bus.request(subject, b"ping", timeout=5.0) == b"pong"
            await sub.unsubscribe()
        finally:
            await bus.close()
        assert bus.closed

    run_bounded(body(), 20)


def test_server_restart_reconnects_and_applies_events_exactly_once(tmp_path: Path) -> None:
    """A NATS server restart, on a nats-server of our own:

    - replica B keeps consuming through the restart, replica C is down across it;
    - while the server is down a publish is refused, not dropped;
    - after the restart every client reconnects by itself, B's queue subscription is back,
      and the events published before, during (retried) and after the restart are
      applied by both replicas, each exactly once in effect.
    """
    tenant = "acme"

    async def body(server: NatsServerProcess) -> None:
        server_url = server.url

        async def connect(name: str) -> NatsBus:
            return await NatsBus.connect(
                server_url,
                name=name,
                reconnect_wait=0.05,
                max_reconnect_wait=0.5,
                connect_timeout=1.0,
            )

        platform = await connect("platform")
        replica_b = await connect("replica-b")
        replica_c = await connect("replica-c")
        try:
            log_p = await JetStreamEventLog.open(platform, policy=FAST, fetch_timeout=0.5)
            log_b = await JetStreamEventLog.open(replica_b, policy=FAST, fetch_timeout=0.5)
            log_c = await JetStreamEventLog.open(replica_c, policy=FAST, fetch_timeout=0.5)

            effects: dict[str, Counter[str]] = {"b": Counter(), "c": Counter()}
            arrived: dict[str, asyncio.Queue[str]] = {"b": asyncio.Queue(), "c": asyncio.Queue()}

            def applier(name: str) -> IdempotentHandler:
                async def apply(event: PlatformEvent) -> None:
                    effects[name][event.id] += 1  # "purge the connection's caches"
                    await arrived[name].put(event.id)

                return IdempotentHandler(apply)

            async def expect(name: str, ids: list[str]) -> None:
                got = [await asyncio.wait_for(arrived[name].get(), WAIT) for _ in ids]
                assert sorted(got) == sorted(ids)

            query = subject_for("query", tenant, "production")

            async def serve(msg: Message) -> None:
                await msg.respond(b"served:" + msg.payload)

            await replica_b.subscribe(query, serve, queue="production")
            consumer_b = await log_b.consume("replica-b", applier("b"), tenant=tenant)
            consumer_c = await log_c.consume("replica-c", applier("c"), tenant=tenant)

            first = PlatformEvent(EventKind.CONNECTION_UPDATED, tenant, "pg", catalog_version=1)
            await log_p.publish_event(first)
            await expect("b", [first.id])
            await expect("c", [first.id])

            await consumer_c.stop()  # replica C goes down
            while_c_down = PlatformEvent(EventKind.SELECTION_CHANGED, tenant, "pg")
            await log_p.publish_event(while_c_down)
            await expect("b", [while_c_down.id])

            # -- the server restarts ------------------------------------------------
            restart_done = asyncio.get_running_loop().run_in_executor(None, server.restart)
            await platform.wait_disconnected(WAIT)
            during = PlatformEvent(EventKind.CONNECTION_DELETED, tenant, "pg")
            refused = 0
            while not platform.connected:
                try:
                    await log_p.publish_event(during)
                except SourceUnavailable:
                    refused += 1  # the caller sees it; it retries with the same event
                    await platform.wait_connected(WAIT)
            await restart_done
            for bus in (platform, replica_b, replica_c):
                await bus.wait_connected(WAIT)
            assert refused >= 1
            await log_p.publish_event(during)  # retried after the restart; stored once
            await log_p.publish_event(during)
            after = [
                PlatformEvent(EventKind.METADATA_REFRESHED, tenant, "pg", catalog_version=2),
                PlatformEvent(EventKind.KEYS_ROTATED, tenant, "pg"),
            ]
            for event in after:
                await log_p.publish_event(event)

            # Replica B, consuming throughout, picks up after its reconnect.
            await expect("b", [during.id, *(e.id for e in after)])
            # B's queue subscription was replayed on reconnect.
            assert await platform.request(query, b"q1", timeout=5.0) == b"served:q1"

            # Replica C comes back and gets everything it missed.
            consumer_c = await log_c.consume("replica-c", applier("c"), tenant=tenant)
            await expect("c", [while_c_down.id, during.id, *(e.id for e in after)])

            await consumer_b.stop()
            await consumer_c.stop()
            every = {first.id, while_c_down.id, during.id, *(e.id for e in after)}
            for name in ("b", "c"):
                assert set(effects[name]) == every
                assert all(count == 1 for count in effects[name].values()), effects[name]
                assert (
                    await (log_b if name == "b" else log_c).unacknowledged(f"replica-{name}") == 0
                )
            assert platform.reconnects >= 1 and replica_b.reconnects >= 1
            info = await platform.jetstream().stream_info("FABRIC_EVENTS")
            assert info.state.messages == len(every)  # the retried publish was deduplicated
        finally:
            for bus in (platform, replica_b, replica_c):
                await bus.close()

    with private_nats_server(tmp_path) as server:
        run_bounded(body(server), 60)
