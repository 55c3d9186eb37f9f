"""SqliteMetadataStore against real SQLite files (and `:memory:`)."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from fabric.catalog.model import (
    ALL_STAGES,
    ColumnInfo,
    ConnectionKind,
    Entity,
    ForeignKey,
)
from fabric.catalog.sqlite_store import (
    MIGRATIONS,
    Migration,
    SqliteMetadataStore,
    apply_migrations,
    arrow_type_from_text,
    arrow_type_to_text,
)
from fabric.catalog.store import MetadataStore
from fabric.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

T = "acme"
STAGES = {"development": {"path": "/data/dev.duckdb", "read_only": True, "threads": 4}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteMetadataStore]:
    with SqliteMetadataStore(tmp_path / "meta.sqlite") as s:
        yield s


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


def test_is_a_metadata_store(store: SqliteMetadataStore) -> None:
    typed: MetadataStore = store
    assert typed is store


# -- connections ------------------------------------------------------------------------


def test_connection_crud(store: SqliteMetadataStore) -> None:
    created = store.create_connection(
        T,
        "shop",
        ConnectionKind.POSTGRES,
        {"production": {"host": "db", "port": 5432}, ALL_STAGES: {"host": "localhost"}},
        {"production": "secret/shop/prod"},
    )
    assert created.tenant == T and created.name == "shop"
    assert created.kind is ConnectionKind.POSTGRES
    assert created.version == 1
    assert dict(created.stages["production"]) == {"host": "db", "port": 5432}
    assert created.settings_for("test") == {"host": "localhost"}
    assert created.secret_ref_for("production") == "secret/shop/prod"
    assert created.secret_ref_for("test") is None
    with pytest.raises(TypeError):
        created.stages["production"]["host"] = "x"  # type: ignore[index]

    assert store.get_connection(T, "shop") == created
    store.create_connection(T, "analytics", ConnectionKind.DUCKDB, STAGES)
    assert [c.name for c in store.list_connections(T)] == ["analytics", "shop"]
    assert store.list_connections("other") == []

    store.delete_connection(T, "shop")
    assert [c.name for c in store.list_connections(T)] == ["analytics"]
    with pytest.raises(NotFound, match="'shop'"):
        store.get_connection(T, "shop")


def test_setting_types_round_trip(store: SqliteMetadataStore) -> None:
    settings = {"s": "text", "i": 7, "f": 1.5, "b": False, "t": True}
    store.create_connection(T, "c", ConnectionKind.DUCKDB, {"dev": settings})
    stored = store.get_connection(T, "c").stages["dev"]
    assert dict(stored) == settings
    assert [type(stored[k]) for k in "sifbt"] == [str, int, float, bool, bool]


def test_duplicate_connection_is_already_exists(store: SqliteMetadataStore) -> None:
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    with pytest.raises(AlreadyExists, match="'shop' already exists"):
        store.create_connection(T, "shop", ConnectionKind.POSTGRES, STAGES)
    # Names are per tenant.
    store.create_connection("other", "shop", ConnectionKind.DUCKDB, STAGES)


def test_missing_connection_is_not_found(store: SqliteMetadataStore) -> None:
    for call in (
        lambda: store.get_connection(T, "nope"),
        lambda: store.delete_connection(T, "nope"),
        lambda: store.catalog(T, "nope"),
        lambda: store.catalog_version(T, "nope"),
        lambda: store.select_entities(T, "nope", [entity()]),
        lambda: store.unselect_entities(T, "nope", ["orders"]),
    ):
        with pytest.raises(NotFound, match="connection 'nope' not found in tenant 'acme'"):
            call()
    # Another tenant's connection is invisible.
    store.create_connection("other", "shared", ConnectionKind.DUCKDB, STAGES)
    with pytest.raises(NotFound):
        store.catalog_version(T, "shared")


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
    store: SqliteMetadataStore, name: str, kind: str, stages: dict[str, object], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        store.create_connection(T, name, kind, stages)  # type: ignore[arg-type]
    assert store.list_connections(T) == []


@pytest.mark.parametrize(
    "key", ["password", "PASSWORD", "Passwd", "pwd", "secret", "Token", "api_key", "PRIVATE_KEY"]
)
def test_secret_looking_settings_are_refused(
    store: SqliteMetadataStore, tmp_path: Path, key: str
) -> None:
    with pytest.raises(InvalidArgument, match="put secrets in the secret store") as raised:
        store.create_connection(
            T, "shop", ConnectionKind.POSTGRES, {"dev": {"host": "db", key: "hunter2"}}
        )
    assert "hunter2" not in str(raised.value)
    assert store.list_connections(T) == []
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"hunter2" not in raw


def test_non_secret_keys_that_mention_secrets_are_allowed(store: SqliteMetadataStore) -> None:
    settings = {"user": "app", "password_ref": "vault:x", "token_url": "https://idp", "keys": 2}
    store.create_connection(T, "c", ConnectionKind.POSTGRES, {"dev": settings})
    assert dict(store.get_connection(T, "c").stages["dev"]) == settings


# -- selection and catalog versions -----------------------------------------------------


def test_select_and_catalog(store: SqliteMetadataStore) -> None:
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
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


def test_reselect_replaces_by_name_ignoring_case(store: SqliteMetadataStore) -> None:
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    store.select_entities(T, "shop", [entity("Orders")])
    extra = ColumnInfo("note", "VARCHAR", pa.string())
    store.select_entities(T, "shop", [entity("ORDERS", "orders", extra)])
    snapshot = store.catalog(T, "shop")
    assert list(snapshot.entities) == ["orders"]
    replaced = snapshot.entity("orders")
    assert replaced is not None
    assert replaced.name == "ORDERS"
    assert [c.name for c in replaced.columns] == ["id", "total", "note"]


def test_versions_strictly_increase(store: SqliteMetadataStore) -> None:
    first = store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    assert first.version == 1
    assert store.catalog_version(T, "shop") == 1
    seen = [1]
    seen.append(store.select_entities(T, "shop", [entity()]))
    seen.append(store.select_entities(T, "shop", [entity()]))  # same content still bumps
    seen.append(store.unselect_entities(T, "shop", ["ORDERS"]))
    assert seen == sorted(set(seen))
    assert store.catalog_version(T, "shop") == seen[-1]

    # Delete and re-create: the new connection starts above everything the old one had.
    store.delete_connection(T, "shop")
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    recreated = store.catalog_version(T, "shop")
    assert recreated > seen[-1]
    assert store.catalog(T, "shop").entities == {}
    assert store.select_entities(T, "shop", [entity()]) > recreated

    # Other connections draw from the same counter: versions never repeat.
    store.create_connection(T, "other", ConnectionKind.DUCKDB, STAGES)
    assert store.catalog_version(T, "other") > store.catalog_version(T, "shop")


def test_versions_increase_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    with SqliteMetadataStore(path) as store:
        store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
        last = store.select_entities(T, "shop", [entity()])
        store.delete_connection(T, "shop")
    with SqliteMetadataStore(path) as store:
        store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
        assert store.catalog_version(T, "shop") > last


def test_delete_connection_removes_its_entities(store: SqliteMetadataStore) -> None:
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    store.select_entities(T, "shop", [entity()])
    store.delete_connection(T, "shop")
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    assert store.catalog(T, "shop").entities == {}
    with pytest.raises(NotFound):
        store.delete_connection(T, "missing")


def test_unselect_missing_names_changes_nothing(store: SqliteMetadataStore) -> None:
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    version = store.select_entities(T, "shop", [entity()])
    with pytest.raises(NotFound, match="'ghost'"):
        store.unselect_entities(T, "shop", ["orders", "ghost"])
    assert store.catalog_version(T, "shop") == version
    assert list(store.catalog(T, "shop").entities) == ["orders"]
    with pytest.raises(InvalidArgument):
        store.unselect_entities(T, "shop", [])


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
    ],
)
def test_invalid_entities_are_refused_whole(
    store: SqliteMetadataStore, entities: list[Entity], match: str
) -> None:
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    version = store.catalog_version(T, "shop")
    with pytest.raises(InvalidArgument, match=match):
        store.select_entities(T, "shop", entities)
    assert store.catalog(T, "shop").entities == {}
    assert store.catalog_version(T, "shop") == version


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


def test_columns_round_trip_through_the_file(tmp_path: Path) -> None:
    columns = (
        *(
            ColumnInfo(f"c{i}", f"src {t}", t, nullable=i % 2 == 0)
            for i, t in enumerate(ARROW_TYPES)
        ),
        ColumnInfo("geom", "GEOMETRY", None, nullable=True),
    )
    fks = (
        ForeignKey("fk_items", ("c1", "c2"), "sales", "items", ("order_id", "line_no")),
        ForeignKey("fk_single", ("c3",), "main", "products", ("id",)),
    )
    original = Entity("wide", "main", "wide_table", columns, ("c1", "c2"), fks)
    path = tmp_path / "meta.sqlite"
    with SqliteMetadataStore(path) as store:
        store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
        store.select_entities(T, "shop", [original])
    with SqliteMetadataStore(path) as store:
        loaded = store.catalog(T, "shop").entity("wide")
    assert loaded == original
    assert loaded is not None
    unsupported = loaded.column("geom")
    assert unsupported is not None and unsupported.arrow_type is None
    assert not unsupported.supported
    for stored, expected in zip(loaded.columns, columns, strict=True):
        assert stored.arrow_type == expected.arrow_type
        assert stored.nullable is expected.nullable


# -- files, migrations, lifecycle -------------------------------------------------------


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    with SqliteMetadataStore(path) as store:
        store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES, {"dev": "ref"})
        version = store.select_entities(T, "shop", [entity()])
        connection = store.get_connection(T, "shop")
    with SqliteMetadataStore(path) as store:
        assert store.get_connection(T, "shop") == connection
        assert store.catalog_version(T, "shop") == version
        assert store.catalog(T, "shop").entity("orders") == entity()


def test_migrations_are_idempotent_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    for _ in range(3):
        with SqliteMetadataStore(path) as store:
            assert store.schema_version() == MIGRATIONS[-1].version
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    finally:
        db.close()
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_migrations_apply_in_order_and_only_once(tmp_path: Path) -> None:
    first = Migration(1, "one", ("CREATE TABLE a (x INTEGER)",))
    second = Migration(
        2, "two", ("ALTER TABLE a ADD COLUMN y TEXT", "INSERT INTO a VALUES (1, 'y')")
    )
    db = _raw(tmp_path / "m.sqlite")
    try:
        assert apply_migrations(db, [first]) == 1
        assert apply_migrations(db, [first, second]) == 2
        assert apply_migrations(db, [first, second]) == 2
        assert db.execute("SELECT x, y FROM a").fetchall() == [(1, "y")]
        with pytest.raises(FailedPrecondition, match="newer"):
            apply_migrations(db, [first])
    finally:
        db.close()


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    good = Migration(1, "good", ("CREATE TABLE a (x INTEGER)",))
    bad = Migration(2, "bad", ("CREATE TABLE b (x INTEGER)", "THIS IS NOT SQL"))
    db = _raw(tmp_path / "m.sqlite")
    try:
        with pytest.raises(sqlite3.OperationalError):
            apply_migrations(db, [good, bad])
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == set()
        assert apply_migrations(db, [good]) == 1
    finally:
        db.close()


def test_file_is_private_in_wal_mode_with_parents_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "meta.sqlite"
    with SqliteMetadataStore(path) as store:
        assert store.path == str(path)
        store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
        for file in path.parent.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


def test_foreign_keys_are_enforced(store: SqliteMetadataStore) -> None:
    with store._locked() as db, pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO entities (connection_id, name_key, name, schema_name, table_name,"
            " columns, primary_key, foreign_keys, created_at, updated_at)"
            " VALUES (999, 'x', 'x', 's', 't', '[]', '[]', '[]', '', '')"
        )


def test_memory_store() -> None:
    with SqliteMetadataStore(":memory:") as store:
        store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
        assert store.select_entities(T, "shop", [entity()]) == 2


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    store = SqliteMetadataStore(tmp_path / "meta.sqlite")
    store.close()
    store.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        store.list_connections(T)


def test_concurrent_selects_from_threads(store: SqliteMetadataStore) -> None:
    store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
    store.create_connection(T, "other", ConnectionKind.DUCKDB, STAGES)
    threads_n, per_thread = 8, 25
    barrier = threading.Barrier(threads_n)
    versions: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        try:
            barrier.wait()
            connection = "shop" if i % 2 else "other"
            for j in range(per_thread):
                v = store.select_entities(T, connection, [entity(f"e{i}_{j}")])
                assert store.catalog_version(T, connection) >= v
                assert store.catalog(T, connection).entity(f"e{i}_{j}") is not None
                with lock:
                    versions.append(v)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(versions) == len(set(versions)) == threads_n * per_thread
    total = len(store.catalog(T, "shop").entities) + len(store.catalog(T, "other").entities)
    assert total == threads_n * per_thread
    assert max(store.catalog_version(T, c) for c in ("shop", "other")) == max(versions)
