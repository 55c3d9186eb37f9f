"""A gateway with sources to fault, and load to run through it, for the fault tests.

`ChaosRig` is a real gateway (in-process, on a free port) over two connections of one
tenant: `pg`, a private PostgreSQL reached through a `TcpProxy` (so a test can freeze,
cut or slow the network, or restart or freeze the server itself), and `duck`, an
embedded DuckDB file that has nothing to do with it. `Load` runs clients in threads
against it and records what each call got: the status, the rows, whether the summary
said complete, and when.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import grpc
import psycopg

from connectors import Connector, QueryHandle
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient, QueryResult
from fabric.config import Settings
from fabric.context import DEFAULT_STAGE, DEFAULT_TENANT
from fabric.errors import FabricError
from fabric.model import Connection, SettingValue
from fabric.query.engine import QueryEngine
from fabric.query.sources import default_connector_factory
from tests.support.pg_instance import PgInstance
from tests.support.tcp_proxy import TcpProxy

ITEMS = 200_000
"""Rows of the `items` table in the private PostgreSQL."""
SECRET_REF = "connections/default/pg/all"
APP = "fabric-chaos"
"""application_name of the gateway's PostgreSQL sessions."""

LONG = os.environ.get("FABRIC_CHAOS", "").lower() == "long"
"""`make chaos`: the long versions (more clients, longer faults)."""


def fill_postgres(instance: PgInstance) -> None:
    """The tables every fault test reads: `items` (ITEMS rows) and `slow_items` (the same
    rows, half a millisecond each: a query that takes a while at the source)."""
    with psycopg.connect(instance.url(), autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, payload text NOT NULL)"
        )
        conn.execute(
            "INSERT INTO items SELECT i, i % 100, repeat(md5(i::text), 3) "
            f"FROM generate_series(1, {ITEMS}) AS i"
        )
        conn.execute("ANALYZE items")
        conn.execute(
            "CREATE VIEW slow_items AS SELECT i.id, i.grp, i.payload FROM items i "
            "CROSS JOIN LATERAL (SELECT pg_sleep(0.0005 + i.id * 0)) AS pause"
        )


def fill_duckdb(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR)")
        con.execute("INSERT INTO notes SELECT i, 'note ' || i FROM range(1, 1001) t(i)")


class CountingConnector(Connector):
    """A real connector, with the queries that reached it counted (`started`)."""

    def __init__(self, inner: Connector) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.kind = inner.kind  # type: ignore[misc]
        self.dialect = inner.dialect  # type: ignore[misc]
        self.param_style = inner.param_style  # type: ignore[misc]
        self.started = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int | None:
        return self.inner.capacity

    def _count(self) -> None:
        with self._lock:
            self.started += 1

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
        self._count()
        return self.inner.execute(sql, params, timeout=timeout, batch_rows=batch_rows)

    async def execute_small(
        self,
        sql: str,
        params: Sequence[Any] = (),
        *,
        timeout: float | None = None,
        max_rows: int,
    ) -> QueryHandle | None:
        handle = await self.inner.execute_small(sql, params, timeout=timeout, max_rows=max_rows)
        if handle is not None:
            self._count()
        return handle

    def close(self) -> None:
        self.inner.close()


@dataclass
class ChaosRig:
    pg: PgInstance
    proxy: TcpProxy
    gateway: BackgroundGateway
    engine: QueryEngine
    store: SqliteMetadataStore
    connectors: dict[str, list[CountingConnector]]

    @property
    def address(self) -> str:
        return self.gateway.address

    def client(self, timeout: float | None = 30) -> FabricClient:
        return FabricClient(self.address, timeout=timeout)

    def started(self, connection: str) -> int:
        """Queries that reached a connection's source so far."""
        return sum(c.started for c in self.connectors.get(connection, []))

    def sessions(self, *, states: tuple[str, ...] | None = None) -> list[tuple[Any, ...]]:
        """The gateway's sessions at the private PostgreSQL (read directly, not through
        the proxy): (pid, state, query, seconds in that state)."""
        with psycopg.connect(self.pg.url(), autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute(
                "SELECT pid, state, query, "
                "extract(epoch FROM now() - state_change)::float FROM pg_stat_activity "
                "WHERE application_name = %s",
                [APP],
            ).fetchall()
        return [row for row in rows if states is None or row[1] in states]

    def busy_sessions(self) -> list[tuple[Any, ...]]:
        """Sessions doing anything but waiting idle in the pool."""
        return [row for row in self.sessions() if row[1] != "idle"]

    def terminate_sessions(self) -> int:
        """End every gateway session at the server (as an operator or a failover would)."""
        with psycopg.connect(self.pg.url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                [APP],
            ).fetchall()
        return sum(1 for (ended,) in rows if ended)


@contextmanager
def chaos_rig(
    tmp_path: Path,
    pg: PgInstance,
    *,
    pool_max: int = 4,
    pool_timeout: float = 10.0,
    **settings: Any,
) -> Iterator[ChaosRig]:
    """A gateway over `pg` (through a fresh proxy) and a DuckDB file; `settings` are
    gateway Settings overrides (query_timeout, ...)."""
    duck = tmp_path / "notes.duckdb"
    fill_duckdb(duck)

    def secrets(reference: str) -> str:
        assert reference == SECRET_REF
        return pg.password

    with TcpProxy(pg.port) as proxy:
        store = SqliteMetadataStore(tmp_path / "metadata.sqlite")
        manager = catalog_manager(store, secrets)
        source: dict[str, SettingValue] = {
            "host": "127.0.0.1",
            "port": proxy.port,
            "database": "postgres",
            "user": pg.user,
            "application_name": APP,
            "connect_timeout": 5,
            "pool_min": 0,
            "pool_max": pool_max,
            "pool_timeout": pool_timeout,
        }
        manager.create_connection(
            DEFAULT_TENANT, "pg", "postgres", {"*": source}, {"*": SECRET_REF}
        )
        manager.select(DEFAULT_TENANT, "pg", DEFAULT_STAGE, "public.items")
        manager.select(DEFAULT_TENANT, "pg", DEFAULT_STAGE, "public.slow_items")
        manager.create_connection(DEFAULT_TENANT, "duck", "duckdb", {"*": {"path": str(duck)}})
        manager.select(DEFAULT_TENANT, "duck", DEFAULT_STAGE, "notes")
        connectors: dict[str, list[CountingConnector]] = {}

        def counted(
            connection: Connection, values: Mapping[str, SettingValue], password: str | None
        ) -> Connector:
            made = CountingConnector(default_connector_factory(connection, values, password))
            connectors.setdefault(connection.name, []).append(made)
            return made

        engine = QueryEngine(
            store,
            Settings(home=tmp_path, metrics_port=0, **settings),
            secrets=secrets,
            connector_factory=counted,
        )
        gateway = BackgroundGateway(
            assemble_gateway(engine, context_provider=_default_tenant)
        ).start()
        try:
            yield ChaosRig(pg, proxy, gateway, engine, store, connectors)
        finally:
            gateway.stop()
            store.close()


def _default_tenant(context: grpc.aio.ServicerContext) -> Any:
    from fabric.api.auth import local_admin_context

    return local_admin_context(context)


# -- load ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call got."""

    client: int
    started: float
    ended: float
    code: str
    """"OK" or the gRPC status name."""
    rows: int = 0
    complete: bool = False
    """OK and the summary did not say truncated."""

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def call(fn: Callable[[], QueryResult], client: int = 0) -> Outcome:
    """Run one call, recording its outcome (never raising for a status)."""
    started = time.monotonic()
    try:
        result = fn()
    except FabricError as error:
        return Outcome(client, started, time.monotonic(), _status_name(error))
    except grpc.RpcError as error:
        return Outcome(client, started, time.monotonic(), error.code().name)
    return Outcome(
        client,
        started,
        time.monotonic(),
        "OK",
        result.table.num_rows,
        not result.summary.truncated,
    )


def _status_name(error: FabricError) -> str:
    from fabric.api.status import status_for

    return status_for(error).name


@dataclass
class Load:
    """`clients` threads, each calling `work(client, index)` in a loop until `stop`."""

    address: str
    clients: int
    work: Callable[[FabricClient, int], QueryResult]
    timeout: float = 60.0
    token: str | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for index in range(self.clients):
            thread = threading.Thread(target=self._run, args=(index,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, index: int) -> None:
        with FabricClient(self.address, self.token, timeout=self.timeout) as client:
            while not self._stop.is_set():
                outcome = call(lambda: self.work(client, index), index)
                with self._lock:
                    self.outcomes.append(outcome)

    def stop(self, timeout: float = 120.0) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self._threads), "a load client never returned"
        return self.outcomes

    def since(self, moment: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= moment]

    def succeeded_since(self, moment: float) -> bool:
        """Whether a call that started at `moment` or later succeeded."""
        return any(o.code == "OK" for o in self.since(moment))

    def more_than(self, calls: int) -> bool:
        with self._lock:
            return len(self.outcomes) > calls

    def ended_between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.ended <= end]


def codes(outcomes: list[Outcome]) -> Counter[str]:
    return Counter(o.code for o in outcomes)


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Poll `condition` until true; the seconds it took. AssertionError on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


def scaled(short: float, long: float) -> float:
    """A figure of the short (CI) or the long (`make chaos`) version."""
    return long if LONG else short


def hold(seconds: float) -> None:
    """Let a fault last `seconds`: its own duration, not a wait for something to happen
    (those poll a condition with `wait_for`)."""
    time.sleep(seconds)


def recovery(outcomes: list[Outcome], fault_ended: float) -> float | None:
    """Seconds from the end of a fault to the first call that started after it and
    succeeded (None: none did)."""
    after = [o.ended for o in outcomes if o.code == "OK" and o.started >= fault_ended]
    return min(after) - fault_ended if after else None


def assert_nothing_left(rig: ChaosRig, timeout: float = 15.0) -> None:
    """Once the load has stopped: no session of the gateway at the server is doing
    anything (running, idle in a transaction nobody reads), no statement is open, no
    query holds or waits for a slot, no stop is still running."""
    from connectors.workers import CONTROL

    wait_for(lambda: not rig.busy_sessions(), timeout)
    assert rig.engine.settle(timeout)
    waiting = rig.engine.admission.stats.waiting
    wait_for(lambda: rig.engine.admission.running == 0, timeout)
    assert waiting == 0
    wait_for(lambda: rig.engine.snapshot()["open_statements"] == 0, timeout)
    wait_for(lambda: CONTROL.busy == 0, timeout)
