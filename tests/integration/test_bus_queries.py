"""Queries over NATS: runtime replicas in a queue group, the gateway's forwarder, sealing.

Real NATS (the shared 127.0.0.1:4222, or FABRIC_TEST_NATS_URL) for the normal cases, a
private nats-server (killed in `finally`) where the server is restarted or configured
with a small max_payload; real engines over a DuckDB file with planted values. Every
test uses its own stage name, so runs sharing the server do not see each other's
queries. Everything is bounded: `run_bounded` fails a test body that overruns, and
waiting for a condition is `until`, which fails after its timeout.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import nats
import pyarrow as pa
import pytest
from nats.aio.msg import Msg

from connectors import Connector, QueryHandle
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.config import Settings
from fabric.context import RequestContext, Role
from fabric.errors import (
    DeadlineExceeded,
    FabricError,
    InvalidArgument,
    QueryRejected,
    ResourceExhausted,
    SourceUnavailable,
)
from fabric.messaging.nats_bus import NatsBus
from fabric.messaging.query_rpc import (
    BusQueryForwarder,
    RuntimeReplica,
    query_subject,
)
from fabric.messaging.sealing import BusSealer
from fabric.model import Connection, SettingValue
from fabric.query.engine import QueryEngine, QueryRequest
from fabric.query.runs import Summary
from fabric.query.sources import default_connector_factory
from fabric.results.ipc import open_ipc_stream
from fabric.security.kms import LocalKeyRing
from tests.support.nats import NatsServerProcess, nats_url, private_nats_server, run_bounded

TENANT = "acme"
OTHER_TENANT = "globex"
CONNECTION = "crm"

# Distinctive values: none of them may ever cross the bus readable.
PLANTED_NAME = "Quintavious-Zelphorne-7731"
PLANTED_EMAIL = "qz7731.planted@nowhere-example.org"
PLANTED_NOTE = "PLANTED-NOTE-4f9e2c-marmalade"
PLANTED_PARAM = "param-xylophone-83311"
PLANTED_NUMBER = 918273645
PLANTED = [PLANTED_NAME, PLANTED_EMAIL, PLANTED_NOTE, PLANTED_PARAM, str(PLANTED_NUMBER)]

BIG_ROWS = 30_000  # with ~100-byte rows: several MiB, many 1 MiB chunks


def make_database(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute(f"""
            CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR, email VARCHAR,
                                 note VARCHAR, code VARCHAR, score BIGINT);
            INSERT INTO people SELECT i, 'person ' || i, 'p' || i || '@example.com',
                'note ' || i, CASE WHEN i = 42 THEN '{PLANTED_PARAM}' ELSE 'code-' || i END,
                i * 10 FROM range(1, 201) t(i);
            UPDATE people SET name = '{PLANTED_NAME}', email = '{PLANTED_EMAIL}',
                note = '{PLANTED_NOTE}', score = {PLANTED_NUMBER} WHERE id = 42;
            CREATE TABLE big (id INTEGER PRIMARY KEY, label VARCHAR, payload VARCHAR);
            INSERT INTO big SELECT i, 'label-' || i, repeat(chr(CAST(97 + (i % 26) AS INTEGER)), 80)
                FROM range(1, {BIG_ROWS + 1}) t(i);
        """)


@dataclass
class Site:
    """A DuckDB file and a metadata store file shared by every engine of a test."""

    root: Path
    database: Path
    metadata: Path
    stages: tuple[str, ...]
    kms: LocalKeyRing
    gate: threading.Event = field(default_factory=threading.Event)


def make_site(tmp_path: Path, *stages: str) -> Site:
    database = tmp_path / "crm.duckdb"
    make_database(database)
    metadata = tmp_path / "metadata.sqlite"
    store = SqliteMetadataStore(metadata)
    try:
        manager = catalog_manager(store)
        for tenant in (TENANT, OTHER_TENANT):
            manager.create_connection(tenant, CONNECTION, "duckdb", {"*": {"path": str(database)}})
            for stage in stages:
                manager.select(tenant, CONNECTION, stage, "people")
                manager.select(tenant, CONNECTION, stage, "big")
    finally:
        store.close()
    site = Site(tmp_path, database, metadata, stages, LocalKeyRing.create(tmp_path / "kr.json"))
    site.gate.set()
    return site


class CountingConnector(Connector):
    """The real DuckDB connector; counts executions and can hold them at a gate."""

    def __init__(self, inner: Connector, counter: list[int], gate: threading.Event) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.counter = counter
        self.gate = gate
        self.kind = inner.kind  # type: ignore[misc]
        self.dialect = inner.dialect  # type: ignore[misc]
        self.param_style = inner.param_style  # type: ignore[misc]

    def test(self) -> None:
        self.inner.test()

    def introspect(self, schemas: Sequence[str] | None = None) -> Any:
        return self.inner.introspect(schemas)

    def execute(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        batch_rows: int = 65_536,
    ) -> QueryHandle:
        self.counter[0] += 1
        if not self.gate.wait(timeout=20):
            raise TimeoutError("the test never opened the gate")
        return self.inner.execute(sql, params, timeout=timeout, batch_rows=batch_rows)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Engine:
    engine: QueryEngine
    store: SqliteMetadataStore
    executions: list[int]

    def close(self) -> None:
        self.engine.close()
        self.store.close()


def make_engine(site: Site, name: str, gate: threading.Event | None = None) -> Engine:
    store = SqliteMetadataStore(site.metadata)
    held = site.gate if gate is None else gate
    executions = [0]

    def factory(
        connection: Connection, settings: Mapping[str, SettingValue], password: str | None
    ) -> Connector:
        return CountingConnector(
            default_connector_factory(connection, settings, password), executions, held
        )

    home = site.root / name
    home.mkdir(exist_ok=True)
    settings = Settings(home=home, metrics_port=0, batch_rows=4096)
    return Engine(QueryEngine(store, settings, connector_factory=factory), store, executions)


def name_of(key: int) -> str:
    return PLANTED_NAME if key == 42 else f"person {key}"


def new_stage() -> str:
    return f"st-{uuid.uuid4().hex[:10]}"


async def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Wait for `condition` (checked every few ms), failing after `timeout` seconds."""

    async def check() -> None:
        while not condition():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout}s waiting for {what or condition}")


class Node(RuntimeReplica):
    """A replica with its engine's execution count and its own source gate."""

    executions: list[int]
    gate: threading.Event


@asynccontextmanager
async def replicas(
    site: Site, url: str, stage: str, count: int, **options: Any
) -> AsyncIterator[list[Node]]:
    """`count` replicas of `stage`, each with its own engine and NATS connection."""
    async with AsyncExitStack() as stack:
        started: list[Node] = []
        for index in range(count):
            gate = threading.Event()
            gate.set()
            stack.callback(gate.set)  # never leave a source query held
            engine = make_engine(site, f"{stage}-r{index}", gate)
            stack.callback(engine.close)
            bus = await NatsBus.connect(url, name=f"replica-{index}")
            stack.push_async_callback(bus.close)
            replica = Node(bus, engine.engine, site.kms, stage=stage, **options)
            replica.executions = engine.executions
            replica.gate = gate
            await replica.start()
            stack.push_async_callback(replica.stop, 2.0)
            started.append(replica)
        yield started


async def run_query(
    forwarder: BusQueryForwarder,
    ctx: RequestContext,
    sql: str,
    params: Mapping[str, Any] | None = None,
    *,
    deadline: float | None = None,
) -> tuple[pa.Table, Summary]:
    messages: list[bytes] = []
    summary: Summary | None = None
    items = forwarder.execute(ctx, QueryRequest(CONNECTION, sql, dict(params or {})), deadline)
    try:
        async for item in items:
            if isinstance(item, Summary):
                summary = item
            else:
                messages.append(item)
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    assert summary is not None
    return open_ipc_stream(messages).read_all(), summary


def expected(site: Site, sql: str) -> list[dict[str, Any]]:
    """The rows DuckDB itself returns for `sql`."""
    with duckdb.connect(str(site.database), read_only=True) as con:
        rows: list[dict[str, Any]] = con.sql(sql).to_arrow_table().to_pylist()
        return rows


def ctx_for(stage: str, tenant: str = TENANT) -> RequestContext:
    return RequestContext(tenant=tenant, stage=stage, role=Role.ADMIN, principal="local")


# -- must-hold 1: nothing readable on the bus ----------------------------------------------


def _encodings(value: str) -> list[bytes]:
    """The value as it could appear on the wire in clear: raw (UTF-8, UTF-16), hex, and
    base64 at each of the three alignments (trimmed of the edge characters that depend
    on neighbouring bytes)."""
    raw = value.encode()
    forms = [raw, value.encode("utf-16-le"), raw.hex().encode(), raw.hex().upper().encode()]
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\x00" * pad + raw)
            skip = (pad * 4 + 2) // 3 + 1
            forms.append(encoded[skip:-4])
    return forms


@dataclass
class Capture:
    """Every message the NATS server delivers on `>` (all subjects) while it runs."""

    messages: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    sentinels: set[str] = field(default_factory=set)

    async def on_message(self, msg: Msg) -> None:
        if msg.subject.startswith("capture-sentinel."):
            self.sentinels.add(msg.subject)
        self.messages.append((msg.subject, msg.data, dict(msg.headers or {})))


def test_capture_of_every_bus_message_holds_no_planted_value(tmp_path: Path) -> None:
    url = nats_url()

    async def body(site: Site) -> None:
        stage = site.stages[0]
        capture = Capture()
        spy = await nats.connect(url, name="capture")
        try:
            await spy.subscribe(">", cb=capture.on_message)
            await spy.flush()
            async with replicas(site, url, stage, 2) as (first, second):
                bus = await NatsBus.connect(url, name="gateway")
                try:
                    forwarder = BusQueryForwarder(bus, site.kms, timeout=5.0)
                    ctx = ctx_for(stage)
                    table, summary = await run_query(
                        forwarder,
                        ctx,
                        "SELECT id, name, email, note, score FROM people "
                        "WHERE code = :code OR score = :score OR name = :name",
                        {"code": PLANTED_PARAM, "score": PLANTED_NUMBER, "name": PLANTED_NAME},
                    )
                    assert table.num_rows == 1 and summary.rows == 1
                    assert table.column("name").to_pylist() == [PLANTED_NAME]
                    assert table.column("email").to_pylist() == [PLANTED_EMAIL]
                    # A whole table, planted row included, in many chunks.
                    table, _ = await run_query(
                        forwarder,
                        ctx,
                        "SELECT * FROM people CROSS JOIN big WHERE people.id = 42 ORDER BY big.id",
                    )
                    assert table.num_rows == BIG_ROWS
                    assert set(table.column("note").to_pylist()) == {PLANTED_NOTE}
                    big, _ = await run_query(
                        forwarder, ctx_for(stage, OTHER_TENANT), "SELECT * FROM big ORDER BY id"
                    )
                    assert big.to_pylist() == expected(site, "SELECT * FROM big ORDER BY id")
                    chunks = first.stats.chunks_sent + second.stats.chunks_sent
                    assert chunks >= 4, "the large results should have needed several chunks"
                    # Each publisher's messages reach the capture in order: a sentinel from
                    # every connection that published marks the end of what it sent.
                    names = []
                    for index, connection in enumerate((bus, first.bus, second.bus)):
                        assert isinstance(connection, NatsBus)
                        names.append(f"capture-sentinel.{index}")
                        await connection.client.publish(names[-1], b"end")
                    await until(lambda: capture.sentinels == set(names), 10, "sentinels")
                finally:
                    await bus.close()
        finally:
            await spy.close()

        ours = [m for m in capture.messages if f".{stage}." in m[0] or m[0].startswith("_INBOX")]
        assert len(ours) >= 10, "the capture should hold the run's requests and replies"
        kinds = {subject.split(".")[3] for subject, _, _ in ours if subject.startswith("fabric.")}
        assert {"query", "reply", "control"} <= kinds
        for subject, data, headers in capture.messages:
            blob = subject.encode() + b"\n" + data + b"\n" + repr(headers).encode()
            for value in PLANTED:
                for form in _encodings(value):
                    assert form not in blob, f"{value!r} readable on {subject}"
        # Nor the SQL text or a column name: nothing readable crosses, not only values.
        assert not any(b"SELECT" in data or b"email" in data for _, data, _ in ours)

    run_bounded(body(make_site(tmp_path, new_stage())), 90)


# -- must-hold 2: exactly once, and replicas that go away ----------------------------------


def test_three_replicas_serve_each_query_exactly_once(tmp_path: Path) -> None:
    url = nats_url()
    queries = 60

    async def body(site: Site) -> None:
        stage = site.stages[0]
        async with replicas(site, url, stage, 3) as group:
            bus = await NatsBus.connect(url, name="gateway")
            try:
                forwarder = BusQueryForwarder(bus, site.kms, timeout=5.0)
                answers = await _run_many(forwarder, stage, queries, concurrency=6)
            finally:
                await bus.close()
            served = [r.stats.served for r in group]
            executed = [r.executions[0] for r in group]
            assert sum(served) == queries, served
            assert sum(executed) == queries, executed
            assert all(count > 0 for count in served), served
            assert forwarder.stats.retries == 0
            assert answers == {i: name_of(i) for i in range(1, queries + 1)}

    run_bounded(body(make_site(tmp_path, new_stage())), 90)


async def _run_many(
    forwarder: BusQueryForwarder,
    stage: str,
    queries: int,
    *,
    concurrency: int,
    client_retries: int = 0,
    after: Callable[[int], Awaitable[None]] | None = None,
) -> dict[int, str]:
    """Run `queries` point queries (id = 1..N) `concurrency` at a time; a client retry
    repeats a query that failed with a transient error. Returns id -> name."""
    answers: dict[int, str] = {}
    todo = list(range(1, queries + 1))
    done = 0

    async def worker() -> None:
        nonlocal done
        while todo:
            key = todo.pop(0)
            for attempt in range(client_retries + 1):
                try:
                    table, summary = await run_query(
                        forwarder,
                        ctx_for(stage),
                        "SELECT id, name FROM people WHERE id = :id",
                        {"id": key},
                    )
                    break
                except (SourceUnavailable, DeadlineExceeded):
                    if attempt == client_retries:
                        raise
            assert summary.rows == 1
            assert key not in answers, "answered twice"
            answers[key] = table.column("name")[0].as_py()
            done += 1
            if after is not None:
                await after(done)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


@pytest.mark.parametrize("how", ["graceful", "abrupt"])
def test_stopping_a_replica_mid_run_loses_no_retried_query(how: str, tmp_path: Path) -> None:
    """A third of the way through, one replica stops while it holds queries (they wait
    at its source). Graceful: it leaves the queue group and finishes them. Abrupt: its
    connection dies, the queries it held are lost and retried elsewhere. Either way
    every query is answered once, and the other two replicas carry on."""
    url = nats_url()
    queries = 60

    async def body(site: Site) -> None:
        stage = site.stages[0]
        async with replicas(site, url, stage, 3) as group:
            leaving, staying = group[0], group[1:]
            at_stop: list[int] = []

            async def stop_one(done: int) -> None:
                if done != queries // 3:
                    return
                leaving.gate.clear()
                started = leaving.executions[0]
                # Any query that reaches the source from now on waits at the gate.
                await until(
                    lambda: leaving.executions[0] > started, 10, "a query held by the replica"
                )
                at_stop.extend(r.stats.served for r in staying)
                if how == "graceful":
                    stopping = asyncio.create_task(leaving.stop(grace=10.0))
                    await until(lambda: not leaving._request_subs, 5, "the replica to leave")
                    leaving.gate.set()
                    await stopping
                else:
                    # The process dies: its connection goes at once (no drain), the
                    # queries it held are lost.
                    assert isinstance(leaving.bus, NatsBus)
                    await leaving.bus.client.close()
                    leaving.gate.set()

            bus = await NatsBus.connect(url, name="gateway")
            try:
                forwarder = BusQueryForwarder(bus, site.kms, timeout=1.0, retries=3)
                answers = await _run_many(
                    forwarder, stage, queries, concurrency=6, client_retries=2, after=stop_one
                )
            finally:
                await bus.close()
            assert answers == {i: name_of(i) for i in range(1, queries + 1)}
            assert at_stop, "the replica was never stopped"
            # The others carried on, each serving more after the stop.
            assert all(r.stats.served > s for r, s in zip(staying, at_stop, strict=True))
            # Served (answered to the end) exactly once each, whatever happened.
            assert sum(r.stats.served for r in group) == queries
            executed = sum(r.executions[0] for r in group)
            if how == "graceful":
                # Nothing ran twice. (A request that reached the replica in the instant
                # it unsubscribed is dropped unrun and retried: retries may be > 0.)
                assert executed == queries
            else:
                # The queries it held ran there, were never answered, and ran again
                # on another replica after the forwarder's retry.
                assert leaving.stats.accepted > leaving.stats.served
                assert forwarder.stats.retries >= 1
                assert executed > queries

    run_bounded(body(make_site(tmp_path, new_stage())), 100)


def test_nats_restart_replicas_reconnect_and_serve_again(tmp_path: Path) -> None:
    async def body(server: NatsServerProcess, site: Site) -> None:
        stage = site.stages[0]
        async with replicas(site, server.url, stage, 2) as group:
            bus = await NatsBus.connect(
                server.url, name="gateway", reconnect_wait=0.05, max_reconnect_wait=0.2
            )
            try:
                forwarder = BusQueryForwarder(bus, site.kms, timeout=2.0, retries=5)
                answers = await _run_many(forwarder, stage, 6, concurrency=2)
                assert len(answers) == 6
                await asyncio.to_thread(server.restart)
                for connection in (bus, *(r.bus for r in group)):
                    assert isinstance(connection, NatsBus)
                    await connection.wait_connected(15)
                # Replicas resubscribe on reconnect; the forwarder retries "no responders"
                # in the moment before that.
                answers = await _run_many(forwarder, stage, 12, concurrency=3, client_retries=2)
                assert answers == {i: name_of(i) for i in range(1, 13)}
                assert sum(r.stats.served for r in group) >= 18
            finally:
                await bus.close()

    with private_nats_server(tmp_path, jetstream=False) as server:
        run_bounded(body(server, make_site(tmp_path, new_stage())), 90)


# -- streaming: chunks, flow control, cancellation, deadlines, errors -----------------------


def test_large_result_streams_in_bounded_chunks_with_flow_control(tmp_path: Path) -> None:
    """A server with a 64 KiB max_payload: a result of megabytes travels in many sealed
    chunks, at most `window` unacknowledged; a consumer that stops pulling holds the
    replica at the window, and one that goes away cancels the query at the replica."""

    async def body(server: NatsServerProcess, site: Site) -> None:
        stage = site.stages[0]
        async with replicas(site, server.url, stage, 1) as (replica,):
            assert replica.bus.max_payload == 64 * 1024
            bus = await NatsBus.connect(server.url, name="gateway")
            try:
                window = 4
                forwarder = BusQueryForwarder(bus, site.kms, timeout=5.0, window=window)
                sql = "SELECT * FROM big ORDER BY id"
                table, summary = await run_query(forwarder, ctx_for(stage), sql)
                assert table.to_pylist() == expected(site, sql)
                assert summary.rows == BIG_ROWS
                chunks = replica.stats.chunks_sent
                assert chunks > 40, chunks
                assert forwarder.stats.chunks_received == chunks

                # A consumer that takes one message and stops pulling.
                items = forwarder.execute(ctx_for(stage), QueryRequest(CONNECTION, sql))
                first = await items.__anext__()
                assert isinstance(first, bytes)
                await until(lambda: _waiting_for_credit(replica), 10, "the replica to block")
                in_flight = replica.stats.chunks_sent - chunks
                assert in_flight <= window, in_flight
                # The consumer goes away: the replica is told, and the query stops.
                await items.aclose()  # type: ignore[attr-defined]
                await until(lambda: replica.in_flight == 0, 10, "the replica to cancel")
                assert replica.stats.cancelled == 1
                assert forwarder.stats.cancelled == 1
                assert replica.stats.chunks_sent - chunks <= window
            finally:
                await bus.close()

    with private_nats_server(tmp_path, jetstream=False, config="max_payload: 65536\n") as srv:
        run_bounded(body(srv, make_site(tmp_path, new_stage())), 90)


def _waiting_for_credit(replica: Node) -> bool:
    serving = list(replica._serving.values())
    return bool(serving) and all(
        s.acked + s.request.window <= replica.stats.chunks_sent and not s.credit.is_set()
        for s in serving
    )


def test_errors_travel_as_the_same_class_and_deadlines_propagate(tmp_path: Path) -> None:
    url = nats_url()

    async def body(site: Site) -> None:
        stage = site.stages[0]
        async with replicas(site, url, stage, 1) as (replica,):
            bus = await NatsBus.connect(url, name="gateway")
            try:
                forwarder = BusQueryForwarder(bus, site.kms, timeout=5.0)
                with pytest.raises(QueryRejected) as rejected:
                    await run_query(forwarder, ctx_for(stage), "DELETE FROM people")
                assert rejected.value.code == "query_rejected"
                with pytest.raises(FabricError) as failed:
                    await run_query(
                        forwarder, ctx_for(stage), "SELECT CAST(name AS INTEGER) AS n FROM people"
                    )
                direct = make_engine(site, "direct")
                try:
                    with pytest.raises(FabricError) as local:
                        items = direct.engine.execute(
                            ctx_for(stage),
                            QueryRequest(
                                CONNECTION, "SELECT CAST(name AS INTEGER) AS n FROM people"
                            ),
                        )
                        async for _ in items:
                            pass
                finally:
                    direct.close()
                assert type(failed.value) is type(local.value)
                assert failed.value.sqlstate == local.value.sqlstate
                assert failed.value.message == local.value.message

                # The caller's deadline reaches the replica: a query held at the source
                # past it fails with DeadlineExceeded, and the replica lets go of it.
                replica.gate.clear()
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(DeadlineExceeded):
                    await run_query(
                        forwarder,
                        ctx_for(stage),
                        "SELECT id FROM people",
                        deadline=time.monotonic() + 0.5,
                    )
                assert loop.time() - started < 3.0
                replica.gate.set()
                await until(lambda: replica.in_flight == 0, 10, "the replica to let go")

                # A query too large to send is refused with a clear error, not cut.
                huge = "x" * (bus.max_payload + 1)
                with pytest.raises(ResourceExhausted, match="bus maximum"):
                    await run_query(
                        forwarder,
                        ctx_for(stage),
                        "SELECT id FROM people WHERE code = :c",
                        {"c": huge},
                    )
            finally:
                await bus.close()

    run_bounded(body(make_site(tmp_path, new_stage())), 60)


def test_over_the_bus_the_byte_cap_truncates_and_nul_never_leaves_the_gateway(
    tmp_path: Path,
) -> None:
    url = nats_url()
    cap = 64 * 1024

    async def body(site: Site) -> None:
        stage = site.stages[0]
        async with replicas(site, url, stage, 1) as (replica,):
            bus = await NatsBus.connect(url, name="gateway")
            try:
                forwarder = BusQueryForwarder(bus, site.kms, timeout=5.0)
                request = QueryRequest(
                    CONNECTION, "SELECT id, payload FROM big ORDER BY id", max_bytes=cap
                )
                messages: list[bytes] = []
                summary: Summary | None = None
                async for item in forwarder.execute(ctx_for(stage), request):
                    if isinstance(item, Summary):
                        summary = item
                    else:
                        messages.append(item)
                table = open_ipc_stream(messages).read_all()
                assert summary is not None and summary.truncated
                assert 0 < table.num_rows < BIG_ROWS and table.nbytes <= cap
                assert table.column("id").to_pylist() == list(range(1, table.num_rows + 1))
                counted = replica.engine.metrics.registry.get_sample_value(
                    "fabric_results_truncated_total", {"reason": "bytes"}
                )
                assert counted == 1 and replica.executions == [1]
                accepted = replica.stats.accepted

                with pytest.raises(QueryRejected, match="NUL character"):
                    await run_query(forwarder, ctx_for(stage), "SELECT id FROM people\x00")
                with pytest.raises(InvalidArgument, match="parameter 'c' contains a NUL") as nul:
                    await run_query(
                        forwarder,
                        ctx_for(stage),
                        "SELECT id FROM people WHERE code = :c",
                        {"c": f"{PLANTED_PARAM}\x00"},
                    )
                assert PLANTED_PARAM not in nul.value.message
                # Refused before sealing and sending: no replica saw them.
                assert replica.stats.accepted == accepted and replica.executions == [1]
            finally:
                await bus.close()

    run_bounded(body(make_site(tmp_path, new_stage())), 60)


# -- must-hold 3: tampered, replayed, oversized ---------------------------------------------


def test_tampered_replayed_and_oversized_messages_are_rejected_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    url = nats_url()
    caplog.set_level(logging.DEBUG)

    async def body(site: Site) -> None:
        stage, other_stage = site.stages
        spy = await nats.connect(url, name="attacker")
        requests: list[bytes] = []

        async def keep(msg: Msg) -> None:
            requests.append(msg.data)

        try:
            await spy.subscribe(query_subject(TENANT, stage), cb=keep)
            await spy.flush()
            small = BusSealer(site.kms, max_message_bytes=16 * 1024)
            async with (
                replicas(site, url, stage, 1, sealer=small) as (replica,),
                replicas(site, url, other_stage, 1) as (elsewhere,),
            ):
                bus = await NatsBus.connect(url, name="gateway")
                try:
                    forwarder = BusQueryForwarder(bus, site.kms, timeout=5.0)
                    sql = "SELECT id, name FROM people WHERE code = :code"
                    params = {"code": PLANTED_PARAM}
                    table, _ = await run_query(forwarder, ctx_for(stage), sql, params)
                    assert table.column("name").to_pylist() == [PLANTED_NAME]
                    await until(lambda: len(requests) == 1, 5, "the captured request")
                    sealed = requests[0]
                    tampered = bytearray(sealed)
                    tampered[len(tampered) // 2] ^= 0x01

                    subject = query_subject(TENANT, stage)
                    await spy.publish(subject, bytes(tampered))  # tampered
                    await spy.publish(subject, sealed[:-1])  # cut short
                    await spy.publish(query_subject(OTHER_TENANT, stage), sealed)  # tenant
                    await spy.publish(query_subject(TENANT, other_stage), sealed)  # stage
                    await spy.publish(subject, sealed)  # replayed as is
                    await spy.publish(subject, b"\x00" * (64 * 1024))  # oversized
                    await spy.flush()
                    # What the server already has for a replica reaches it before any
                    # later request; a query on each stage marks the end.
                    await run_query(forwarder, ctx_for(stage), sql, params)
                    await run_query(forwarder, ctx_for(other_stage), sql, params)

                    counts = replica.sealer.counters
                    assert counts["rejected_integrity"] == 3, counts  # tampered, cut, tenant
                    assert counts["rejected_duplicate"] == 1, counts
                    assert counts["rejected_oversized"] == 1, counts
                    assert elsewhere.sealer.counters["rejected_integrity"] == 1
                    assert replica.stats.served == 2 and elsewhere.stats.served == 1
                    figures = replica.snapshot()
                    assert figures["bus_rejected_integrity"] == 3
                    assert forwarder.sealer.rejected == 0
                finally:
                    await bus.close()
        finally:
            await spy.close()

        text = caplog.text
        assert "rejected (integrity" in text and "rejected (oversized" in text
        for value in PLANTED:
            for form in _encodings(value):
                assert form.decode("latin-1") not in text
        for record in caplog.records:
            assert "SELECT" not in record.getMessage()
            for arg in record.args or ():
                assert not isinstance(arg, bytes | bytearray)

    run_bounded(body(make_site(tmp_path, new_stage(), new_stage())), 60)
