"""What only the SQLite metadata store has: files, WAL, its migrations, `:memory:`.

The behaviour every metadata store shares (connections, versions, selection, audit, no
secret at rest) is tested once for all stores in tests/integration/test_metadata_stores.py,
which runs its SQLite half without any server.
"""

from __future__ import annotations

import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from fabric.catalog.metadata.contract import MetadataStore
from fabric.catalog.metadata.sqlite import MIGRATIONS, SqliteMetadataStore, apply_migrations
from fabric.catalog.serialization import Migration
from fabric.errors import FailedPrecondition
from fabric.model import ColumnInfo, ConnectionKind, Entity

T = "acme"
STAGES = {"development": {"path": "/data/dev.duckdb", "read_only": True, "threads": 4}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteMetadataStore]:
    with SqliteMetadataStore(tmp_path / "meta.sqlite") as s:
        yield s


def entity(name: str = "orders") -> Entity:
    return Entity(
        name=name,
        schema="main",
        table=name,
        columns=(ColumnInfo("id", "INTEGER", pa.int32(), nullable=False),),
        primary_key=("id",),
    )


def test_is_a_metadata_store(store: SqliteMetadataStore) -> None:
    typed: MetadataStore = store
    assert typed is store


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


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


def test_a_file_of_the_previous_release_is_migrated_forward(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    db = _raw(path)
    try:
        assert apply_migrations(db, MIGRATIONS[:1]) == 1
        db.execute(
            "INSERT INTO connections (tenant, name, kind, stages, secret_refs, version,"
            " created_at, updated_at) VALUES (?, 'shop', 'duckdb', ?, '{}', 1, '', '')",
            (T, '{"dev": {"path": "/x.duckdb"}}'),
        )
        db.execute("INSERT INTO catalog_versions VALUES (1, 1, '')")
    finally:
        db.close()
    with SqliteMetadataStore(path) as store:
        assert store.schema_version() == MIGRATIONS[-1].version
        assert store.get_connection(T, "shop").stages["dev"]["path"] == "/x.duckdb"
        assert store.list_audit(T) == []
        store.update_connection(T, "shop", stages={"dev": {"path": "/y"}}, expected_version=1)
        assert [e.action for e in store.list_audit(T)] == ["connection.update"]


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
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        db.close()


def test_foreign_keys_are_enforced(store: SqliteMetadataStore) -> None:
    with store._driver.reading() as session, pytest.raises(sqlite3.IntegrityError):
        session.run(
            "INSERT INTO entities (connection_id, name_key, name, schema_name, table_name,"
            " columns, primary_key, foreign_keys, created_at, updated_at)"
            " VALUES (999, 'x', 'x', 's', 't', '[]', '[]', '[]', '', '')"
        )


def test_memory_store() -> None:
    with SqliteMetadataStore(":memory:") as store:
        store.create_connection(T, "shop", ConnectionKind.DUCKDB, STAGES)
        assert store.select_entities(T, "shop", [entity()]) == 2
        assert [e.action for e in store.list_audit(T)] == ["catalog.select", "connection.create"]
