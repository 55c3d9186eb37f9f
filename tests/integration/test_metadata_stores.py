"""One suite, every metadata store: SQLite in a temporary file, PostgreSQL in a schema of
its own (created for each test, dropped after). Both must pass every generic case, the
migrations included; the cases specific to one backend follow at the end (SQLite files:
tests/unit/test_sqlite_store.py).
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, closing
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql

from fabric.catalog.audit import AuditEvent
from fabric.catalog.metadata import postgres, sqlite
from fabric.catalog.metadata.driver import Migration
from fabric.catalog.metadata.open import open_metadata_store, split_schema
from fabric.catalog.metadata.postgres import PostgresMetadataStore
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.catalog.metadata.store import MetadataStore
from fabric.catalog.metadata.version_watch import CatalogVersionWatch
from fabric.catalog.serialization import arrow_type_from_text, arrow_type_to_text
from fabric.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SourceUnavailable,
)
from fabric.model import (
    ALL_STAGES,
    ColumnInfo,
    Entity,
    ForeignKey,
    PhysicalTable,
    SettingValue,
)

T = "acme"
STAGES: dict[str, dict[str, SettingValue]] = {
    "development": {"path": "/data/dev.duckdb", "read_only": True, "threads": 4}
}
START = datetime(2024, 1, 1, tzinfo=UTC)


class TickingClock:
    """A wall clock that moves one second per reading (shared by store instances)."""

    def __init__(self) -> None:
        self._now = START
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=1)
            return self._now


@dataclass
class Backend:
    """One metadata store backend: how to open it (again), how to read all it keeps, and
    how to reach its database without a store (to migrate it, or to write an old schema)."""

    name: str
    opener: Callable[..., MetadataStore]
    dump: Callable[[], bytes]
    raw: Callable[[], AbstractContextManager[Any]]
    """A DB-API connection of the store's database, in autocommit."""
    migrations: Sequence[Migration]
    apply_migrations: Callable[[Any, Sequence[Migration]], int]
    tables: Callable[[Any], set[str]]
    """The tables the store's schema holds, read on a raw connection."""
    syntax_error: type[Exception]
    prefix: str = ""
    """What qualifies a table name in raw SQL ('"schema".' on PostgreSQL)."""
    url: str = ""
    schema: str = ""
    path: Path | None = None
    opened: list[MetadataStore] = field(default_factory=list)

    def open(self, **options: Any) -> MetadataStore:
        """A new store instance on the same database (close it or let teardown do it)."""
        store = self.opener(**options)
        self.opened.append(store)
        return store


def _sqlite_backend(path: Path) -> Backend:
    def dump() -> bytes:
        # The database file and its write-ahead log and shared memory, byte for byte.
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")]
        return b"".join(p.read_bytes() for p in files if p.exists())

    def tables(db: Any) -> set[str]:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    return Backend(
        "sqlite",
        lambda **kw: SqliteMetadataStore(path, **kw),
        dump,
        raw=lambda: closing(sqlite3.connect(path, isolation_level=None)),
        migrations=sqlite.MIGRATIONS,
        apply_migrations=sqlite.apply_migrations,
        tables=tables,
        syntax_error=sqlite3.OperationalError,
        path=path,
    )


def _postgres_backend(url: str, schema: str) -> Backend:
    def dump() -> bytes:
        # Every table and sequence of the schema, as COPY writes it.
        chunks: list[bytes] = []
        with psycopg.connect(url, autocommit=True) as conn:
            relations = conn.execute(
                "SELECT c.relname, c.relkind FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'S') ORDER BY c.relname",
                [schema],
            ).fetchall()
            assert {name for name, _ in relations} >= {
                "connections",
                "catalog_versions",
                "entities",
                "audit_events",
                "schema_migrations",
                "catalog_version_seq",
            }
            for name, _ in relations:
                query = sql.SQL("COPY (SELECT * FROM {}) TO STDOUT").format(
                    sql.Identifier(schema, name)
                )
                with conn.cursor() as cursor, cursor.copy(query) as copy:
                    chunks.extend(bytes(data) for data in copy)
        return b"".join(chunks)

    def tables(conn: Any) -> set[str]:
        return {
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                [schema],
            )
        }

    return Backend(
        "postgres",
        lambda **kw: PostgresMetadataStore(url, schema=schema, **kw),
        dump,
        raw=lambda: psycopg.connect(url, autocommit=True),
        migrations=postgres.MIGRATIONS,
        apply_migrations=lambda conn, steps: postgres.apply_migrations(conn, schema, steps),
        tables=tables,
        syntax_error=psycopg.errors.SyntaxError,
        prefix=f'"{schema}".',
        url=url,
        schema=schema,
    )


def _drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _unique_schema() -> str:
    return f"fabric_mt_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        made = _sqlite_backend(tmp_path / "meta.sqlite")
    else:
        url: str = request.getfixturevalue("postgres_url")
        made = _postgres_backend(url, _unique_schema())
    try:
        yield made
    finally:
        for store in made.opened:
            store.close()
        if made.name == "postgres":
            _drop_schema(made.url, made.schema)


@pytest.fixture
def store(backend: Backend) -> MetadataStore:
    return backend.open()


def entity(name: str = "orders", table: str = "orders", *extra: ColumnInfo) -> Entity:
    return Entity(
        name=name,
        schema="main",
        table=table,
        columns=(
            ColumnInfo("id", "INTEGER", pa.int32(), nullable=False),
            ColumnInfo("total", "DECIMAL(10,2)", pa.decimal128(10, 2)),
            *extra,
        ),
        primary_key=("id",),
    )


def test_is_a_metadata_store(store: MetadataStore) -> None:
    typed: MetadataStore = store
    assert typed is store
    assert store.schema_version() >= 1


# -- connections ------------------------------------------------------------------------


def test_connection_crud(store: MetadataStore) -> None:
    created = store.create_connection(
        T,
        "shop",
        "postgres",
        {"production": {"host": "db", "port": 5432}, ALL_STAGES: {"host": "localhost"}},
        {"production": "secret/shop/prod"},
    )
    assert created.tenant == T and created.name == "shop"
    assert created.kind == "postgres"
    assert created.version == 1
    assert dict(created.stages["production"]) == {"host": "db", "port": 5432}
    assert created.settings_for("test") == {"host": "localhost"}
    assert created.secret_ref_for("production") == "secret/shop/prod"
    assert created.secret_ref_for("test") is None
    with pytest.raises(TypeError):
        created.stages["production"]["host"] = "x"  # type: ignore[index]

    assert store.get_connection(T, "shop") == created
    store.create_connection(T, "analytics", "duckdb", STAGES)
    store.create_connection(T, "Zeta", "duckdb", STAGES)
    assert [c.name for c in store.list_connections(T)] == ["Zeta", "analytics", "shop"]
    assert store.list_connections("other") == []

    store.delete_connection(T, "shop")
    assert [c.name for c in store.list_connections(T)] == ["Zeta", "analytics"]
    with pytest.raises(NotFound, match="'shop'"):
        store.get_connection(T, "shop")


def test_setting_types_round_trip(store: MetadataStore) -> None:
    settings: dict[str, SettingValue] = {
        "s": "text",
        "i": 7,
        "f": 1.5,
        "b": False,
        "t": True,
        "e": 1e20,
        "w": 2.0,
        "big": 2**62,
        "u": "grüße ✓",
    }
    store.create_connection(T, "c", "duckdb", {"dev": settings})
    stored = store.get_connection(T, "c").stages["dev"]
    assert dict(stored) == settings
    assert {k: type(v) for k, v in stored.items()} == {k: type(v) for k, v in settings.items()}


def test_duplicate_connection_is_already_exists(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    with pytest.raises(AlreadyExists, match="'shop' already exists"):
        store.create_connection(T, "shop", "postgres", STAGES)
    assert store.get_connection(T, "shop").kind == "duckdb"
    # Names are per tenant.
    store.create_connection("other", "shop", "duckdb", STAGES)


def test_missing_connection_is_not_found(store: MetadataStore) -> None:
    for call in (
        lambda: store.get_connection(T, "nope"),
        lambda: store.delete_connection(T, "nope"),
        lambda: store.catalog(T, "nope"),
        lambda: store.catalog_version(T, "nope"),
        lambda: store.select_entities(T, "nope", [entity()]),
        lambda: store.unselect_entities(T, "nope", ["orders"]),
        lambda: store.replace_entities(T, "nope", [entity()]),
        lambda: store.bump_catalog_version(T, "nope"),
        lambda: store.update_connection(T, "nope", stages=STAGES, expected_version=1),
    ):
        with pytest.raises(NotFound, match="connection 'nope' not found in tenant 'acme'"):
            call()
    # Another tenant's connection is invisible.
    store.create_connection("other", "shared", "duckdb", STAGES)
    with pytest.raises(NotFound):
        store.catalog_version(T, "shared")
    assert store.list_audit(T) == []


@pytest.mark.parametrize(
    ("name", "kind", "stages", "match"),
    [
        ("", "duckdb", STAGES, "connection name"),
        ("has space", "duckdb", STAGES, "connection name"),
        ("-dash", "duckdb", STAGES, "connection name"),
        ("x" * 129, "duckdb", STAGES, "connection name"),
        ("ok", "oracle", STAGES, "unknown connection kind 'oracle'"),
        ("ok", "duckdb", {}, "at least one stage"),
        ("ok", "duckdb", {"": {"a": 1}}, "stage names"),
        ("ok", "duckdb", {"dev": {"opts": [1, 2]}}, "must be a string, integer"),
        ("ok", "duckdb", {"dev": {"x": None}}, "must be a string, integer"),
        ("ok", "duckdb", {"dev": {"x": float("nan")}}, "finite"),
    ],
)
def test_invalid_connection_arguments(
    store: MetadataStore, name: str, kind: str, stages: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        store.create_connection(T, name, kind, stages)  # type: ignore[arg-type]
    assert store.list_connections(T) == []
    assert store.list_audit(T) == []


SECRET_KEYS = [
    "password",
    "PASSWORD",
    "Passwd",
    "pwd",
    "secret",
    "Token",
    "api_key",
    "PRIVATE_KEY",
    "db_password",
    "sslpassword",
    "client_secret",
    "access_token",
    "passphrase",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_looking_settings_are_refused(backend: Backend, key: str) -> None:
    store = backend.open()
    with pytest.raises(InvalidArgument, match="put secrets in the secret store") as raised:
        store.create_connection(T, "shop", "postgres", {"dev": {"host": "db", key: "hunter2"}})
    assert "hunter2" not in str(raised.value)
    assert store.list_connections(T) == []
    assert b"hunter2" not in backend.dump()


def test_non_secret_keys_that_mention_secrets_are_allowed(store: MetadataStore) -> None:
    settings: dict[str, SettingValue] = {
        "user": "app",
        "password_ref": "vault:x",
        "token_url": "https://idp",
        "keys": 2,
    }
    store.create_connection(T, "c", "postgres", {"dev": settings})
    assert dict(store.get_connection(T, "c").stages["dev"]) == settings


# -- optimistic versioning of connections ------------------------------------------------


def test_update_connection_bumps_versions(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "postgres", STAGES, {"development": "r1"})
    catalog_before = store.catalog_version(T, "shop")

    new_stages = {"development": {"host": "dev-db"}, "production": {"host": "prod-db"}}
    updated = store.update_connection(T, "shop", stages=new_stages, expected_version=1)
    assert updated.version == 2
    assert {k: dict(v) for k, v in updated.stages.items()} == new_stages
    assert dict(updated.secret_refs) == {"development": "r1"}  # None keeps them
    assert store.get_connection(T, "shop") == updated
    # Settings may now point elsewhere: caches keyed by the catalog version must miss.
    assert store.catalog_version(T, "shop") > catalog_before

    refs = store.update_connection(T, "shop", secret_refs={"production": "r2"}, expected_version=2)
    assert refs.version == 3
    assert dict(refs.secret_refs) == {"production": "r2"}
    assert {k: dict(v) for k, v in refs.stages.items()} == new_stages
    assert refs.kind == "postgres"


def test_stale_update_fails_and_changes_nothing(backend: Backend) -> None:
    first, second = backend.open(), backend.open()
    first.create_connection(T, "shop", "duckdb", STAGES)
    read_by_first = first.get_connection(T, "shop")
    read_by_second = second.get_connection(T, "shop")
    second.update_connection(
        T, "shop", stages={"development": {"path": "b"}}, expected_version=read_by_second.version
    )
    version = first.catalog_version(T, "shop")
    with pytest.raises(
        FailedPrecondition,
        match=r"connection 'shop' changed since version 1 \(now 2\); reload and retry",
    ):
        first.update_connection(
            T,
            "shop",
            stages={"development": {"path": "a"}},
            expected_version=read_by_first.version,
        )
    current = first.get_connection(T, "shop")
    assert current.version == 2 and current.stages["development"]["path"] == "b"
    assert first.catalog_version(T, "shop") == version
    assert [e.action for e in first.list_audit(T)] == ["connection.update", "connection.create"]


def test_update_refuses_bad_input_whole(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    with pytest.raises(InvalidArgument, match="nothing to update"):
        store.update_connection(T, "shop", expected_version=1)
    with pytest.raises(InvalidArgument, match="looks like a secret"):
        store.update_connection(
            T, "shop", stages={"development": {"password": "x"}}, expected_version=1
        )
    with pytest.raises(InvalidArgument, match="at least one stage"):
        store.update_connection(T, "shop", stages={}, expected_version=1)
    with pytest.raises(InvalidArgument, match="expected_version"):
        store.update_connection(T, "shop", stages=STAGES, expected_version="1")  # type: ignore[arg-type]
    assert store.get_connection(T, "shop").version == 1


def test_delete_with_expected_version(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    store.update_connection(T, "shop", stages=STAGES, expected_version=1)
    with pytest.raises(FailedPrecondition, match="changed since version 1"):
        store.delete_connection(T, "shop", expected_version=1)
    store.get_connection(T, "shop")
    store.delete_connection(T, "shop", expected_version=2)
    with pytest.raises(NotFound):
        store.get_connection(T, "shop")


def _retrying(call: Callable[[], Any]) -> int:
    """Run a read-modify-write until it wins; returns how many times it lost."""
    lost = 0
    while True:
        try:
            call()
            return lost
        except FailedPrecondition:
            lost += 1


def _run_threads(n: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            barrier.wait()
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_concurrent_connection_updates_lose_nothing(backend: Backend) -> None:
    writers, rounds = 6, 3
    backend.open().create_connection(T, "shop", "duckdb", STAGES)
    stores = [backend.open() for _ in range(writers)]
    lost: list[int] = []

    def work(i: int) -> None:
        store = stores[i]
        for r in range(rounds):

            def add_stage(r: int = r) -> None:
                current = store.get_connection(T, "shop")
                stages = {k: dict(v) for k, v in current.stages.items()}
                stages[f"stage_{i}_{r}"] = {"path": f"/data/{i}/{r}.duckdb"}
                store.update_connection(
                    T,
                    "shop",
                    stages=stages,
                    expected_version=current.version,
                    actor=f"writer-{i}",
                )

            lost.append(_retrying(add_stage))

    _run_threads(writers, work)
    final = stores[0].get_connection(T, "shop")
    expected = {f"stage_{i}_{r}" for i in range(writers) for r in range(rounds)}
    assert set(final.stages) == expected | {"development"}
    assert final.version == 1 + writers * rounds
    updates = [e for e in stores[0].list_audit(T, limit=1000) if e.action == "connection.update"]
    assert len(updates) == writers * rounds
    assert sorted(int(e.details["version"]) for e in updates) == list(
        range(2, 2 + writers * rounds)
    )


def test_concurrent_selection_rewrites_lose_nothing(backend: Backend) -> None:
    writers = 6
    backend.open().create_connection(T, "shop", "duckdb", STAGES)
    stores = [backend.open() for _ in range(writers)]
    versions: list[int] = []

    def work(i: int) -> None:
        store = stores[i]

        def add_entity() -> None:
            snapshot = store.catalog(T, "shop")
            wanted = [*snapshot.entities.values(), entity(f"e{i}", f"t{i}")]
            versions.append(
                store.replace_entities(T, "shop", wanted, expected_catalog_version=snapshot.version)
            )

        _retrying(add_entity)

    _run_threads(writers, work)
    snapshot = stores[0].catalog(T, "shop")
    assert set(snapshot.entities) == {f"e{i}" for i in range(writers)}
    assert snapshot.version == max(versions)
    assert len(set(versions)) == writers


# -- selection and catalog versions -----------------------------------------------------


def test_select_and_catalog(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    empty = store.catalog(T, "shop")
    assert empty.entities == {} and empty.version == store.catalog_version(T, "shop")

    version = store.select_entities(T, "shop", [entity("Orders"), entity("items", "order_items")])
    snapshot = store.catalog(T, "shop")
    assert snapshot.version == version == store.catalog_version(T, "shop")
    assert (snapshot.tenant, snapshot.connection) == (T, "shop")
    assert list(snapshot.entities) == ["items", "orders"]
    assert snapshot.entity("ORDERS") == entity("Orders")
    with pytest.raises(TypeError):
        snapshot.entities["x"] = entity()  # type: ignore[index]


def test_reselect_replaces_by_name_ignoring_case(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    store.select_entities(T, "shop", [entity("Orders")])
    extra = ColumnInfo("note", "VARCHAR", pa.string())
    store.select_entities(T, "shop", [entity("ORDERS", "orders", extra)])
    snapshot = store.catalog(T, "shop")
    assert list(snapshot.entities) == ["orders"]
    replaced = snapshot.entity("orders")
    assert replaced is not None
    assert replaced.name == "ORDERS"
    assert [c.name for c in replaced.columns] == ["id", "total", "note"]


def test_hidden_columns_round_trip_and_unknown_stays_unknown(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    hiding = replace(entity("orders"), hidden_columns=("secret", "Note"))
    nothing = replace(entity("items", "order_items"), hidden_columns=())
    unknown = entity("lines", "order_lines")  # as a row written before they were recorded
    assert unknown.hidden_columns is None
    store.select_entities(T, "shop", [hiding, nothing, unknown])
    snapshot = store.catalog(T, "shop")
    assert snapshot.entity("orders") == hiding
    assert snapshot.entity("items") == nothing
    assert snapshot.entity("lines") == unknown


def test_versions_strictly_increase(store: MetadataStore) -> None:
    first = store.create_connection(T, "shop", "duckdb", STAGES)
    assert first.version == 1
    assert store.catalog_version(T, "shop") == 1
    seen = [1]
    seen.append(store.select_entities(T, "shop", [entity()]))
    seen.append(store.select_entities(T, "shop", [entity()]))  # same content still bumps
    seen.append(store.bump_catalog_version(T, "shop"))
    seen.append(store.replace_entities(T, "shop", [entity()]))
    seen.append(store.unselect_entities(T, "shop", ["ORDERS"]))
    assert seen == sorted(set(seen))
    assert store.catalog_version(T, "shop") == seen[-1]
    # Known without a round trip: the same version, or (a store that would need one) None;
    # a local file always knows.
    known = store.known_catalog_version(T, "shop")
    assert known in (seen[-1], None)
    if isinstance(store, SqliteMetadataStore):
        assert known == seen[-1]

    # Delete and re-create: the new connection starts above everything the old one had.
    store.delete_connection(T, "shop")
    store.create_connection(T, "shop", "duckdb", STAGES)
    recreated = store.catalog_version(T, "shop")
    assert recreated > seen[-1]
    assert store.catalog(T, "shop").entities == {}
    assert store.select_entities(T, "shop", [entity()]) > recreated

    # Other connections draw from the same counter: versions never repeat.
    store.create_connection(T, "other", "duckdb", STAGES)
    assert store.catalog_version(T, "other") > store.catalog_version(T, "shop")


def test_versions_increase_across_reopen(backend: Backend) -> None:
    store = backend.open()
    store.create_connection(T, "shop", "duckdb", STAGES)
    last = store.select_entities(T, "shop", [entity()])
    store.delete_connection(T, "shop")
    store.close()
    store = backend.open()
    store.create_connection(T, "shop", "duckdb", STAGES)
    assert store.catalog_version(T, "shop") > last


def test_delete_connection_removes_its_entities(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    store.select_entities(T, "shop", [entity()])
    store.delete_connection(T, "shop")
    store.create_connection(T, "shop", "duckdb", STAGES)
    assert store.catalog(T, "shop").entities == {}
    with pytest.raises(NotFound):
        store.delete_connection(T, "missing")


def test_unselect_missing_names_changes_nothing(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    version = store.select_entities(T, "shop", [entity()])
    with pytest.raises(NotFound, match="'ghost'"):
        store.unselect_entities(T, "shop", ["orders", "ghost"])
    assert store.catalog_version(T, "shop") == version
    assert list(store.catalog(T, "shop").entities) == ["orders"]
    with pytest.raises(InvalidArgument):
        store.unselect_entities(T, "shop", [])


def test_selection_changes_with_expected_catalog_version(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    v1 = store.catalog_version(T, "shop")
    v2 = store.select_entities(T, "shop", [entity()], expected_catalog_version=v1)
    stale = r"catalog of connection 'shop' changed since version {} \(now {}\); reload and retry"
    with pytest.raises(FailedPrecondition, match=stale.format(v1, v2)):
        store.select_entities(T, "shop", [entity("items")], expected_catalog_version=v1)
    with pytest.raises(FailedPrecondition, match=stale.format(v1, v2)):
        store.unselect_entities(T, "shop", ["orders"], expected_catalog_version=v1)
    with pytest.raises(FailedPrecondition, match=stale.format(v1, v2)):
        store.replace_entities(T, "shop", [], expected_catalog_version=v1)
    assert store.catalog_version(T, "shop") == v2
    assert list(store.catalog(T, "shop").entities) == ["orders"]
    v3 = store.unselect_entities(T, "shop", ["orders"], expected_catalog_version=v2)
    assert v3 > v2 and store.catalog(T, "shop").entities == {}


def test_replace_entities_replaces_the_whole_selection(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    store.select_entities(T, "shop", [entity("orders"), entity("items", "order_items")])
    narrower = entity("Orders", "orders")
    narrower = Entity(narrower.name, "main", "orders", narrower.columns[:1], ("id",))
    version = store.replace_entities(T, "shop", [narrower, entity("customers", "customers")])
    snapshot = store.catalog(T, "shop")
    assert snapshot.version == version
    assert list(snapshot.entities) == ["customers", "orders"]
    assert snapshot.entity("orders") == narrower

    # Everything gone remotely: an empty selection is a valid result of a refresh.
    emptied = store.replace_entities(T, "shop", [])
    assert emptied > version and store.catalog(T, "shop").entities == {}

    # A bad entity refuses the whole replacement.
    store.replace_entities(T, "shop", [entity()])
    before = store.catalog(T, "shop")
    with pytest.raises(InvalidArgument, match="collide"):
        store.replace_entities(T, "shop", [entity("a"), entity("A", "other")])
    assert store.catalog(T, "shop") == before


def test_bump_catalog_version_keeps_the_selection(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    version = store.select_entities(T, "shop", [entity()])
    before = store.catalog(T, "shop").entities
    bumped = store.bump_catalog_version(T, "shop", actor="refresher", stage="production")
    assert bumped > version
    after = store.catalog(T, "shop")
    assert after.version == bumped and after.entities == before
    event = store.list_audit(T, limit=1)[0]
    assert (event.action, event.actor, event.stage) == ("catalog.bump", "refresher", "production")
    assert event.details == {"catalog_version": bumped}


@pytest.mark.parametrize(
    ("entities", "match"),
    [
        ([], "at least one entity"),
        ([entity("1orders")], "not a valid SQL identifier"),
        ([entity("order-items")], "not a valid SQL identifier"),
        ([entity("orders"), entity("ORDERS", "other")], "collide"),
        ([Entity("e", "main", "t", ())], "at least one column"),
        ([Entity("e", "", "t", entity().columns)], "schema and a table"),
        ([Entity("e", "main", "t", entity().columns * 2)], "repeats column"),
        ([Entity("e", "main", "t", entity().columns, ("nope",))], "primary key"),
        (
            [
                Entity(
                    "e",
                    "main",
                    "t",
                    entity().columns,
                    foreign_keys=(ForeignKey("fk", ("nope",), "main", "x", ("id",)),),
                )
            ],
            "foreign key 'fk'",
        ),
        ([replace(entity(), hidden_columns=("total",))], "hidden_columns"),
        ([replace(entity(), hidden_columns=("ssn", "ssn"))], "hidden_columns"),
        ([replace(entity(), hidden_columns=("",))], "hidden_columns"),
    ],
)
def test_invalid_entities_are_refused_whole(
    store: MetadataStore, entities: list[Entity], match: str
) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    version = store.catalog_version(T, "shop")
    with pytest.raises(InvalidArgument, match=match):
        store.select_entities(T, "shop", entities)
    assert store.catalog(T, "shop").entities == {}
    assert store.catalog_version(T, "shop") == version


def test_concurrent_selects_from_threads(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    store.create_connection(T, "other", "duckdb", STAGES)
    threads_n, per_thread = 8, 15
    versions: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        connection = "shop" if i % 2 else "other"
        for j in range(per_thread):
            v = store.select_entities(T, connection, [entity(f"e{i}_{j}")])
            assert store.catalog_version(T, connection) >= v
            assert store.catalog(T, connection).entity(f"e{i}_{j}") is not None
            with lock:
                versions.append(v)

    _run_threads(threads_n, work)
    assert len(versions) == len(set(versions)) == threads_n * per_thread
    total = len(store.catalog(T, "shop").entities) + len(store.catalog(T, "other").entities)
    assert total == threads_n * per_thread
    assert max(store.catalog_version(T, c) for c in ("shop", "other")) == max(versions)


# -- types ------------------------------------------------------------------------------

ARROW_TYPES = [
    pa.bool_(),
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint64(),
    pa.float32(),
    pa.float64(),
    pa.decimal128(10, 2),
    pa.decimal128(38, 10),
    pa.decimal128(5, -2),
    pa.decimal256(76, 20),
    pa.string(),
    pa.large_string(),
    pa.binary(),
    pa.large_binary(),
    pa.binary(16),
    pa.date32(),
    pa.date64(),
    pa.time32("s"),
    pa.time32("ms"),
    pa.time64("us"),
    pa.time64("ns"),
    pa.timestamp("s"),
    pa.timestamp("us"),
    pa.timestamp("ns", tz="UTC"),
    pa.timestamp("us", tz="America/New_York"),
    pa.timestamp("ms", tz="+05:30"),
    pa.duration("us"),
    pa.month_day_nano_interval(),
    pa.list_(pa.int32()),
    pa.large_list(pa.string()),
    pa.list_(pa.float64(), 3),
    pa.struct([("a", pa.int64()), ("b", pa.list_(pa.decimal128(12, 4)))]),
    pa.map_(pa.string(), pa.int64()),
    pa.dictionary(pa.int32(), pa.string()),
    pa.null(),
]


@pytest.mark.parametrize("arrow_type", ARROW_TYPES, ids=str)
def test_arrow_type_text_round_trip(arrow_type: pa.DataType) -> None:
    text = arrow_type_to_text(arrow_type)
    assert isinstance(text, str)
    assert arrow_type_from_text(text) == arrow_type


def test_columns_round_trip_through_the_store(backend: Backend) -> None:
    columns = (
        *(
            ColumnInfo(f"c{i}", f"src {t}", t, nullable=i % 2 == 0)
            for i, t in enumerate(ARROW_TYPES)
        ),
        ColumnInfo("geom", "GEOMETRY", None, nullable=True),
    )
    fks = (
        ForeignKey("fk_items", ("c2", "c1"), "sales", "items", ("order_id", "line_no")),
        ForeignKey("fk_single", ("c3",), "main", "products", ("id",)),
    )
    original = Entity("wide", "main", "wide_table", columns, ("c2", "c1"), fks)
    store = backend.open()
    store.create_connection(T, "shop", "duckdb", STAGES)
    store.select_entities(T, "shop", [original])
    store.close()
    loaded = backend.open().catalog(T, "shop").entity("wide")
    assert loaded == original
    assert loaded is not None
    assert loaded.primary_key == ("c2", "c1")  # composite keys keep their order
    unsupported = loaded.column("geom")
    assert unsupported is not None and unsupported.arrow_type is None
    assert not unsupported.supported
    for stored, expected in zip(loaded.columns, columns, strict=True):
        assert stored.arrow_type == expected.arrow_type
        assert stored.nullable is expected.nullable


# -- audit ------------------------------------------------------------------------------


def test_every_change_is_audited_in_its_transaction(backend: Backend) -> None:
    store = backend.open(clock=TickingClock())
    store.create_connection(
        T,
        "shop",
        "postgres",
        {"production": {"host": "db"}},
        {"production": "secret/shop/production"},
        actor="alice",
    )
    store.update_connection(
        T,
        "shop",
        stages={"production": {"host": "db2"}, "test": {"host": "t"}},
        expected_version=1,
        actor="bob",
    )
    v = store.select_entities(
        T, "shop", [entity(), entity("items")], actor="carol", stage="production"
    )
    store.unselect_entities(T, "shop", ["items"], actor="carol", stage="production")
    store.replace_entities(T, "shop", [entity("customers")], actor="refresher")
    store.bump_catalog_version(T, "shop")
    store.delete_connection(T, "shop", actor="alice")

    events = store.list_audit(T)
    assert [(e.action, e.actor) for e in events] == [
        ("connection.delete", "alice"),
        ("catalog.bump", "system"),
        ("catalog.replace", "refresher"),
        ("catalog.unselect", "carol"),
        ("catalog.select", "carol"),
        ("connection.update", "bob"),
        ("connection.create", "alice"),
    ]
    assert all(e.tenant == T and e.connection == "shop" for e in events)
    assert [e.at for e in events] == sorted((e.at for e in events), reverse=True)
    assert all(e.at.tzinfo is UTC and e.at > START for e in events)
    create, update, select = events[-1], events[-2], events[-3]
    assert create.stage == "production"
    assert dict(create.details) == {
        "kind": "postgres",
        "stages": "production",
        "secret_ref_stages": "production",
        "version": 1,
        "catalog_version": 1,
    }
    assert update.stage is None  # two stages changed: both named in the details
    assert update.details["stages_changed"] == "production,test"
    assert (update.details["previous_version"], update.details["version"]) == (1, 2)
    assert select.stage == "production"
    assert dict(select.details) == {"entities": "orders,items", "count": 2, "catalog_version": v}
    assert events[0].details == {"version": 2, "entities": 1}

    # Audit events are history: they outlive the connection they are about.
    assert len(store.list_audit(T, connection="shop")) == 7
    assert store.list_audit("other") == []


def test_failed_changes_leave_no_audit_event(store: MetadataStore) -> None:
    store.create_connection(T, "shop", "duckdb", STAGES)
    for call in (
        lambda: store.create_connection(T, "shop", "duckdb", STAGES),
        lambda: store.update_connection(T, "shop", stages=STAGES, expected_version=7),
        lambda: store.unselect_entities(T, "shop", ["ghost"]),
        lambda: store.select_entities(T, "shop", [entity()], expected_catalog_version=99),
        lambda: store.delete_connection(T, "shop", expected_version=3),
        lambda: store.select_entities(T, "shop", [entity()], actor=""),
    ):
        with pytest.raises((AlreadyExists, FailedPrecondition, NotFound, InvalidArgument)):
            call()
    assert [e.action for e in store.list_audit(T)] == ["connection.create"]


def test_record_and_list_audit(backend: Backend) -> None:
    store = backend.open()
    at = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    events = [
        AuditEvent(
            at + timedelta(minutes=i),
            T,
            f"user-{i}",
            "connection.test",
            f"c{i % 2}",
            "production",
            {"ok": i % 2 == 0, "attempt": i, "note": "é"},
        )
        for i in range(5)
    ]
    for event in events:
        store.record_audit(event)
    store.record_audit(AuditEvent(at, "other", "x", "connection.test"))

    assert store.list_audit(T) == events[::-1]
    assert store.list_audit(T, limit=2) == events[:2:-1][:2]
    assert store.list_audit(T, connection="c1") == [events[3], events[1]]
    assert store.list_audit(T, connection="ghost") == []
    loaded = store.list_audit(T)[0]
    assert type(loaded.details["ok"]) is bool and type(loaded.details["attempt"]) is int
    # Times in other zones are kept as the same instant, in UTC.
    local = datetime(2024, 6, 1, 12, 0, tzinfo=UTC).astimezone(
        timezone(timedelta(hours=5, minutes=30))
    )
    store.record_audit(AuditEvent(local, T, "z", "secret.rotate"))
    newest = store.list_audit(T, limit=1)[0]
    assert newest.at == local and newest.at.tzinfo is UTC
    for limit in (0, -1, 10_001):
        with pytest.raises(InvalidArgument, match="limit"):
            store.list_audit(T, limit=limit)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"details": {"password": "hunter2"}}, "looks like a secret"),
        ({"details": {"Client_Secret": "hunter2"}}, "looks like a secret"),
        ({"details": {"n": 1.5}}, "string, integer or boolean"),
        ({"details": {"n": None}}, "string, integer or boolean"),
        ({"action": "Connection Create"}, "dotted lower-case"),
        ({"actor": ""}, "actor"),
        ({"at": datetime(2024, 1, 1)}, "timezone-aware"),
        ({"tenant": ""}, "tenant"),
    ],
)
def test_invalid_audit_events_are_refused(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"at": START, "tenant": T, "actor": "a", "action": "x.y"}
    with pytest.raises(InvalidArgument, match=match) as raised:
        AuditEvent(**{**base, **kwargs})
    assert "hunter2" not in str(raised.value)


# -- no secret at rest ------------------------------------------------------------------


def test_a_password_never_reaches_the_store(backend: Backend) -> None:
    """The must-hold check: a planted password, handed only to paths that must refuse it,
    appears nowhere in what the store keeps (SQLite file and WAL; every PostgreSQL table
    and sequence of the schema), while what was legitimately stored is found there."""
    canary = f"canary-pw-{uuid.uuid4().hex}"
    store = backend.open()
    store.create_connection(
        T,
        "shop",
        "postgres",
        {"production": {"host": "db.internal", "user": "app"}},
        {"production": "secret/shop/production"},
        actor="alice",
    )
    tampered = AuditEvent(START, T, "alice", "connection.test", "shop", "production", {"ok": True})
    object.__setattr__(tampered, "details", {"password": canary})
    attempts: list[Callable[[], Any]] = [
        lambda: store.create_connection(
            T, "leak", "postgres", {"production": {"password": canary}}
        ),
        lambda: store.create_connection(
            T, "leak", "postgres", {"dev": {"host": "h", "sslpassword": canary}}
        ),
        lambda: store.update_connection(
            T,
            "shop",
            stages={"production": {"host": "db", "Password": canary}},
            expected_version=1,
        ),
        lambda: store.update_connection(
            T, "shop", stages={"production": {"client_secret": canary}}, expected_version=1
        ),
        lambda: store.record_audit(
            AuditEvent(
                START, T, "alice", "connection.test", "shop", "production", {"password": canary}
            )
        ),
        lambda: store.record_audit(tampered),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidArgument) as raised:
            attempt()
        assert canary not in str(raised.value) and canary not in repr(raised.value)

    # Legitimate changes around the attempts, so there is something to scan.
    store.update_connection(
        T,
        "shop",
        secret_refs={"production": "secret/shop/production/v2"},
        expected_version=1,
        actor="alice",
    )
    store.select_entities(T, "shop", [entity()], actor="alice", stage="production")
    store.record_audit(
        AuditEvent(START, T, "alice", "connection.test", "shop", "production", {"ok": True})
    )

    raw = backend.dump()
    assert b"secret/shop/production/v2" in raw and b"db.internal" in raw  # the scan sees
    assert canary.encode() not in raw
    assert canary.encode("utf-16-le") not in raw
    store.close()
    assert canary.encode() not in backend.dump()  # after checkpointing too


# -- lifecycle --------------------------------------------------------------------------


def test_persists_across_reopen(backend: Backend) -> None:
    store = backend.open()
    store.create_connection(T, "shop", "duckdb", STAGES, {"dev": "ref"})
    version = store.select_entities(T, "shop", [entity()])
    connection = store.get_connection(T, "shop")
    audit = store.list_audit(T)
    store.close()
    store = backend.open()
    assert store.get_connection(T, "shop") == connection
    assert store.catalog_version(T, "shop") == version
    assert store.catalog(T, "shop").entity("orders") == entity()
    assert store.list_audit(T) == audit


def test_migrations_are_idempotent_on_reopen(backend: Backend) -> None:
    versions = set()
    for _ in range(3):
        store = backend.open()
        versions.add(store.schema_version())
        store.close()
    assert versions == {backend.migrations[-1].version}
    with backend.raw() as conn:
        rows = conn.execute(
            f"SELECT version FROM {backend.prefix}schema_migrations ORDER BY version"
        ).fetchall()
    assert [r[0] for r in rows] == [m.version for m in backend.migrations]


def test_migrations_apply_in_order_once_and_all_or_nothing(backend: Backend) -> None:
    a, b = f"{backend.prefix}a", f"{backend.prefix}b"
    first = Migration(1, "one", (f"CREATE TABLE {a} (x INTEGER)",))
    second = Migration(
        2, "two", (f"ALTER TABLE {a} ADD COLUMN y TEXT", f"INSERT INTO {a} VALUES (1, 'y')")
    )
    bad = Migration(3, "bad", (f"CREATE TABLE {b} (x INTEGER)", "THIS IS NOT SQL"))
    with backend.raw() as conn:
        with pytest.raises(backend.syntax_error):
            backend.apply_migrations(conn, [first, bad])
        assert backend.tables(conn) == set()  # not even the table of applied migrations
        assert backend.apply_migrations(conn, [first]) == 1
        assert backend.apply_migrations(conn, [first, second]) == 2
        assert backend.apply_migrations(conn, [first, second]) == 2
        assert conn.execute(f"SELECT x, y FROM {a}").fetchall() == [(1, "y")]
        with pytest.raises(backend.syntax_error):
            backend.apply_migrations(conn, [first, second, bad])
        assert backend.tables(conn) == {"a", "schema_migrations"}
        with pytest.raises(FailedPrecondition, match="newer"):
            backend.apply_migrations(conn, [first])


# The first release's schema as its code wrote it: the table of applied migrations (which
# that code created itself) and its first migration, with one connection at version 1.
# `{s}` stands for the quoted schema name.
FIRST_RELEASE: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)",
        *sqlite.MIGRATIONS[0].statements,
        "INSERT INTO schema_migrations (version, description, applied_at) VALUES"
        " (1, 'connections, entities, catalog versions', '2024-01-01T00:00:00.000000+00:00')",
        "UPDATE sequences SET value = 1 WHERE name = 'catalog_version'",
        "INSERT INTO connections (tenant, name, kind, stages, secret_refs, version,"
        """ created_at, updated_at) VALUES ('acme', 'shop', 'duckdb',"""
        """ '{"dev":{"path":"/x.duckdb"}}', '{}', 1, '', '')""",
        "INSERT INTO catalog_versions VALUES (1, 1, '')",
    ),
    "postgres": (
        "CREATE SCHEMA {s}",
        "CREATE TABLE IF NOT EXISTS {s}.schema_migrations ("
        " version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
        " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        *postgres.MIGRATIONS[0].statements,
        "INSERT INTO {s}.schema_migrations (version, description)"
        " VALUES (1, 'connections, entities, catalog versions, audit events')",
        "INSERT INTO {s}.connections (tenant, name, kind, stages, secret_refs, version,"
        """ created_at, updated_at) VALUES ('acme', 'shop', 'duckdb',"""
        """ '{"dev":{"path":"/x.duckdb"}}', '{}', 1, now(), now())""",
        "INSERT INTO {s}.catalog_versions"
        " SELECT id, nextval('{s}.catalog_version_seq'), now() FROM {s}.connections",
    ),
}


def test_a_schema_of_the_first_release_is_migrated_forward(backend: Backend) -> None:
    with backend.raw() as conn:
        for statement in FIRST_RELEASE[backend.name]:
            conn.execute(statement.replace("{s}", f'"{backend.schema}"'))
    store = backend.open()
    assert store.schema_version() == backend.migrations[-1].version
    assert store.get_connection(T, "shop").stages["dev"]["path"] == "/x.duckdb"
    assert store.catalog_version(T, "shop") == 1
    assert store.list_audit(T) == []
    store.update_connection(T, "shop", stages={"dev": {"path": "/y"}}, expected_version=1)
    updated = store.catalog_version(T, "shop")
    assert updated > 1
    staged = replace(entity(), stage_tables={"production": ("p", "orders")})
    assert store.select_entities(T, "shop", [staged]) > updated
    assert store.catalog(T, "shop").entity("orders") == staged
    assert [e.action for e in store.list_audit(T)] == ["catalog.select", "connection.update"]


def test_close_is_idempotent_and_final(backend: Backend) -> None:
    store = backend.open()
    store.close()
    store.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        store.list_connections(T)


def test_open_metadata_store(backend: Backend) -> None:
    if backend.name == "sqlite":
        assert backend.path is not None
        opened = open_metadata_store(str(backend.path))
        assert isinstance(opened, SqliteMetadataStore)
    else:
        separator = "&" if "?" in backend.url else "?"
        opened = open_metadata_store(f"{backend.url}{separator}schema={backend.schema}")
        assert isinstance(opened, PostgresMetadataStore)
        assert opened.schema == backend.schema
    backend.opened.append(opened)
    opened.create_connection(T, "shop", "duckdb", STAGES)
    assert [c.name for c in backend.open().list_connections(T)] == ["shop"]


def test_open_metadata_store_refuses_other_urls() -> None:
    with pytest.raises(InvalidArgument, match="'mysql' is not supported"):
        open_metadata_store("mysql://root:pw@localhost/db")
    with pytest.raises(InvalidArgument):
        open_metadata_store("")
    assert split_schema("postgresql://u@h/db?sslmode=require&schema=meta") == (
        "postgresql://u@h/db?sslmode=require",
        "meta",
    )
    assert split_schema("postgres://h/db") == ("postgres://h/db", "fabric")


# -- PostgreSQL only ----------------------------------------------------------------------


def test_unreachable_postgres_is_unavailable_without_the_password() -> None:
    with pytest.raises(SourceUnavailable, match="metadata store") as raised:
        PostgresMetadataStore(
            "postgresql://fabric:canary-db-pw@127.0.0.1:9/meta?connect_timeout=1",
            timeout=1.0,
        )
    assert "canary-db-pw" not in str(raised.value)


def test_postgres_schema_name_is_checked() -> None:
    for bad in ("", "has space", "x;drop", "1abc", "x" * 64):
        with pytest.raises(InvalidArgument, match="metadata schema"):
            PostgresMetadataStore("postgresql://127.0.0.1:9/none", schema=bad)


@pytest.mark.postgres
def test_postgres_processes_starting_at_once_migrate_once(postgres_url: str) -> None:
    schema = _unique_schema()
    stores: list[PostgresMetadataStore] = []
    lock = threading.Lock()

    def start(_: int) -> None:
        opened = PostgresMetadataStore(postgres_url, schema=schema, pool_min=1, pool_max=1)
        with lock:
            stores.append(opened)

    try:
        _run_threads(6, start)
        assert {s.schema_version() for s in stores} == {postgres.MIGRATIONS[-1].version}
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            rows = conn.execute(
                sql.SQL("SELECT version FROM {} ORDER BY version").format(
                    sql.Identifier(schema, "schema_migrations")
                )
            ).fetchall()
        assert [r[0] for r in rows] == [m.version for m in postgres.MIGRATIONS]
    finally:
        for opened in stores:
            opened.close()
        _drop_schema(postgres_url, schema)


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll `condition` (bounded): notifications arrive on another thread."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


@dataclass
class WatchedStores:
    reader: PostgresMetadataStore  # keeps versions in memory
    writer: PostgresMetadataStore  # another process, as far as the reader can tell
    watch: CatalogVersionWatch


@pytest.fixture
def watched(postgres_url: str) -> Iterator[WatchedStores]:
    """Two stores on one schema holding connection t/c; the reader listens."""
    schema = _unique_schema()
    reader = PostgresMetadataStore(postgres_url, schema=schema)
    writer = PostgresMetadataStore(postgres_url, schema=schema, watch_versions=False)
    try:
        writer.create_connection(
            "t", "c", "postgres", {"*": {"host": "h", "database": "d", "user": "u"}}
        )
        assert reader.version_watch is None  # no listener until versions are asked for
        reader.catalog_version("t", "c")
        watch = reader.version_watch
        assert watch is not None and _until(lambda: watch.listening)
        assert writer.version_watch is None
        yield WatchedStores(reader, writer, watch)
    finally:
        reader.close()
        writer.close()
        _drop_schema(postgres_url, schema)


@pytest.mark.postgres
def test_postgres_catalog_versions_are_served_from_memory_and_follow_other_writers(
    watched: WatchedStores,
) -> None:
    """The query path reads catalog versions from memory while the store LISTENs; a change
    made by another store (another process) reaches it by notification, and its own
    changes are seen at once."""
    reader, writer, watch = watched.reader, watched.writer, watched.watch
    first = reader.catalog_version("t", "c")
    # Once the creation's own notification is in, a read is kept and served from memory.
    assert _until(lambda: reader.catalog_version("t", "c") == first and watch.held() == 1)
    assert reader.catalog_version("t", "c") == first
    # What the query path may read on the event loop: held versions only, never a query.
    assert reader.known_catalog_version("t", "c") == first
    assert reader.known_catalog_version("t", "other") is None
    assert writer.known_catalog_version("t", "c") is None  # no watch: it would need a trip

    writer.select_entities("t", "c", [entity()])
    moved = writer.catalog_version("t", "c")
    assert moved > first
    assert _until(lambda: reader.catalog_version("t", "c") == moved)

    reader.select_entities("t", "c", [entity("lines", "lines")])
    assert reader.catalog_version("t", "c") > moved  # its own change, at once

    writer.delete_connection("t", "c")
    assert _until(lambda: watch.held() == 0)
    with pytest.raises(NotFound):
        reader.catalog_version("t", "c")


@pytest.mark.postgres
def test_postgres_lost_version_listener_reads_through_until_it_is_back(
    watched: WatchedStores,
    postgres_url: str,
) -> None:
    reader, writer, watch = watched.reader, watched.writer, watched.watch
    reader.catalog_version("t", "c")
    lost_pid = watch.listener_pid
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [lost_pid])
    assert _until(lambda: watch.listener_pid != lost_pid)
    # Whether or not it is back yet, a change is never missed (nothing is held across
    # the loss, so this read goes to the database).
    writer.select_entities("t", "c", [entity()])
    assert reader.catalog_version("t", "c") == writer.catalog_version("t", "c")
    assert _until(lambda: watch.listening and watch.listener_pid not in (None, lost_pid))
    writer.select_entities("t", "c", [entity("lines", "lines")])
    assert _until(lambda: reader.catalog_version("t", "c") == writer.catalog_version("t", "c"))


# -- what each stage's tables hold ----------------------------------------------------------


def test_what_each_stage_configuration_holds_is_kept_per_table(store: MetadataStore) -> None:
    """Every physical table of an entity, per stage configuration, comes back exactly:
    all its columns (types, unsupported ones too), keys, and a table found gone."""
    store.create_connection(
        T, "shop", "postgres", {"development": {"host": "dev"}, "production": {"host": "prod"}}
    )
    fk = ForeignKey("to_customers", ("customer_id", "id"), "main", "customers", ("id", "k"))
    dev = PhysicalTable(
        "development",
        "main",
        "orders",
        (
            ColumnInfo("id", "INTEGER", pa.int32(), nullable=False),
            ColumnInfo("total", "DECIMAL(10,2)", pa.decimal128(10, 2)),
            ColumnInfo("customer_id", "INTEGER", pa.int32()),
            ColumnInfo("shape", "geometry", None),
        ),
        ("id",),
        (fk,),
    )
    prod = PhysicalTable("production", "p", "orders_p", (), exists=False)
    staged = replace(entity(), stage_tables={"production": ("p", "orders_p")}).with_physical(
        dev, prod
    )
    store.select_entities(T, "shop", [staged])
    stored = store.catalog(T, "shop").entity("orders")
    assert stored == staged
    assert stored is not None and stored.recorded("development", "development") == dev
    assert stored.for_stage("production", "production").absent
    assert store.replace_entities(T, "shop", [stored]) > 0
    assert store.catalog(T, "shop").entity("orders") == staged
    with pytest.raises(InvalidArgument, match="stage_physical"):
        store.select_entities(
            T, "shop", [replace(staged, stage_physical={("development", "x", "y"): dev})]
        )
