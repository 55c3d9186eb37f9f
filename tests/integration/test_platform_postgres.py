"""The platform API against real PostgreSQL servers: discovery with composite keys,
drift after a remote schema change, and passwords through a password-protected server."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from fabric.errors import QueryRejected
from fabric.v1 import platform_pb2 as pb
from tests.e2e.test_platform_api import (
    Platform,
    rpc_error,
    stage_config,
    start_platform,
    state,
    stop_platform,
)
from tests.support.leaks import files_containing
from tests.support.pg_instance import PgInstance, private_postgres

pytestmark = pytest.mark.postgres

PASSWORD = "Pg-Platform-Canary-5e71"


def _settings(url: str) -> dict[str, Any]:
    info = psycopg.conninfo.conninfo_to_dict(url)
    return {
        "host": info.get("host", "127.0.0.1"),
        "port": int(info.get("port") or 5432),
        "database": info["dbname"],
        "user": info.get("user", "postgres"),
    }


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    schema = f"fabric_pf_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"""
            CREATE TABLE {schema}.parent (a int, b text, c int, PRIMARY KEY (b, a));
            CREATE TABLE {schema}.child (
                id int PRIMARY KEY, pb text, pa int, note text,
                CONSTRAINT child_parent FOREIGN KEY (pb, pa) REFERENCES {schema}.parent (b, a));
            CREATE TABLE {schema}.facts (id int PRIMARY KEY, keep_col int, drop_col int,
                                         retype_col int);
            CREATE TABLE {schema}.doomed (id int PRIMARY KEY);
            INSERT INTO {schema}.facts SELECT i, i, i * 2, i * 3 FROM generate_series(1, 4) i;
            INSERT INTO {schema}.doomed VALUES (1);
        """)
    try:
        yield schema
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def platform(tmp_path: Path, postgres_url: str) -> Iterator[Platform]:
    running = start_platform(tmp_path)
    settings = {k: v for k, v in _settings(postgres_url).items()}
    running.call(
        running.connections.CreateConnection,
        pb.CreateConnectionRequest(
            name="pg", kind="postgres", verify=True, stages=[stage_config("*", **settings)]
        ),
    )
    try:
        yield running
    finally:
        stop_platform(running)


def test_discovery_keeps_composite_keys_whole_and_ordered(
    platform: Platform, pg_schema: str
) -> None:
    p = platform
    found = p.call(p.catalog.Discover, pb.DiscoverRequest(connection="pg", schemas=[pg_schema]))
    tables = {t.name: t for t in found.tables}
    assert set(tables) == {"parent", "child", "facts", "doomed"}
    # Key order, not column order: the key is (b, a) though a comes first in the table.
    assert list(tables["parent"].primary_key) == ["b", "a"]
    [fk] = tables["child"].foreign_keys
    assert (
        fk.name,
        list(fk.columns),
        fk.referenced_schema,
        fk.referenced_table,
        list(fk.referenced_columns),
    ) == ("child_parent", ["pb", "pa"], pg_schema, "parent", ["b", "a"])
    assert (
        list(p.call(p.catalog.ListEntities, pb.ListEntitiesRequest(connection="pg")).entities) == []
    )
    # Selected, the composite foreign key stays whole; without one of its columns it goes.
    whole = p.call(
        p.catalog.Select,
        pb.SelectRequest(
            connection="pg",
            tables=[
                pb.TableSelection(table=f"{pg_schema}.child"),
                pb.TableSelection(table=f"{pg_schema}.parent"),
            ],
        ),
    ).entities
    assert [list(f.columns) for f in whole[0].foreign_keys] == [["pb", "pa"]]
    assert list(whole[1].primary_key) == ["b", "a"]
    partial = p.call(
        p.catalog.Select,
        pb.SelectRequest(
            connection="pg",
            tables=[
                pb.TableSelection(
                    table=f"{pg_schema}.child", entity_name="child_lite", columns=["pb", "note"]
                )
            ],
        ),
    ).entities[0]
    assert [c.name for c in partial.columns] == ["id", "pb", "note"]
    assert list(partial.foreign_keys) == []


def test_drift_is_reported_and_the_runtime_follows(
    platform: Platform, pg_schema: str, postgres_url: str
) -> None:
    p = platform
    p.call(
        p.catalog.Select,
        pb.SelectRequest(
            connection="pg",
            tables=[
                pb.TableSelection(table=f"{pg_schema}.facts"),
                pb.TableSelection(table=f"{pg_schema}.doomed"),
            ],
        ),
    )
    uses_dropped = "SELECT id, drop_col FROM facts ORDER BY id"
    other = "SELECT id, keep_col, retype_col FROM facts ORDER BY id"
    with p.client() as client:
        assert client.execute("pg", uses_dropped, cache_ttl=600).table.num_rows == 4
        first = client.execute("pg", other, cache_ttl=600)
        assert client.execute("pg", other, cache_ttl=600).summary.from_cache
        assert first.table.column("keep_col").to_pylist() == [1, 2, 3, 4]

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"""
            ALTER TABLE {pg_schema}.facts DROP COLUMN drop_col;
            ALTER TABLE {pg_schema}.facts ALTER COLUMN retype_col TYPE text;
            ALTER TABLE {pg_schema}.facts ADD COLUMN added_col date;
            UPDATE {pg_schema}.facts SET keep_col = keep_col * 10;
            DROP TABLE {pg_schema}.doomed;
        """)
    report = p.call(p.catalog.Refresh, pb.RefreshRequest(connection="pg"))
    drift = {(d.kind, d.entity, d.column): d for d in report.drift}
    assert set(drift) == {
        ("column_dropped", "facts", "drop_col"),
        ("type_changed", "facts", "retype_col"),
        ("new_column", "facts", "added_col"),
        ("table_gone", "doomed", ""),
    }
    retyped = drift[("type_changed", "facts", "retype_col")]
    assert (retyped.old_type, retyped.new_type) == ("integer", "text")
    assert [e.name for e in report.entities] == ["facts"]
    assert [c.name for c in report.entities[0].columns] == ["id", "keep_col", "retype_col"]
    assert report.catalog_version > report.previous_catalog_version

    with p.client() as client:
        with pytest.raises(QueryRejected, match="drop_col"):
            client.execute("pg", uses_dropped, cache_ttl=600)
        with pytest.raises(QueryRejected, match="doomed"):
            client.execute("pg", "SELECT id FROM doomed")
        after = client.execute("pg", other, cache_ttl=600)
    # Not the cached result of before: fresh rows, with the new type.
    assert after.summary.from_cache is False
    assert after.table.column("keep_col").to_pylist() == [10, 20, 30, 40]
    assert after.table.column("retype_col").to_pylist() == ["3", "6", "9", "12"]
    actions = [
        e.action
        for e in p.call(p.connections.ListAudit, pb.ListAuditRequest(connection="pg")).events
    ]
    assert actions[:2] == ["catalog.refresh", "catalog.replace"]


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PgInstance]:
    with private_postgres(PASSWORD) as instance:
        with psycopg.connect(instance.url(), autocommit=True) as conn:
            conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text)")
            conn.execute("INSERT INTO accounts VALUES (1, 'ann'), (2, 'bob')")
        yield instance


def test_password_is_write_only_and_a_wrong_one_changes_nothing(
    private_pg: PgInstance, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "Wrong-Guess-0b9d"
    p = start_platform(tmp_path)
    try:
        settings: dict[str, str | int] = {
            "host": "127.0.0.1",
            "port": private_pg.port,
            "database": "postgres",
            "user": private_pg.user,
        }
        before = state(p)
        error = rpc_error(
            p.connections.CreateConnection,
            pb.CreateConnectionRequest(
                name="vault",
                kind="postgres",
                verify=True,
                stages=[stage_config("*", wrong, **settings)],
            ),
            timeout=60,
        )
        # the login cannot succeed by retrying: FAILED_PRECONDITION, not UNAVAILABLE
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "authentication failed" in (error.details() or "")
        assert "was not stored" in (error.details() or "")
        assert wrong not in (error.details() or "")
        assert state(p) == before

        created = p.call(
            p.connections.CreateConnection,
            pb.CreateConnectionRequest(
                name="vault",
                kind="postgres",
                verify=True,
                stages=[stage_config("*", PASSWORD, **settings)],
            ),
        )
        assert created.stages[0].has_password
        p.call(p.connections.TestConnection, pb.TestConnectionRequest(name="vault"))
        p.call(
            p.catalog.Select,
            pb.SelectRequest(
                connection="vault", tables=[pb.TableSelection(table="public.accounts")]
            ),
        )
        with p.client() as client:
            rows = client.query("vault", "SELECT owner FROM accounts ORDER BY id")
        assert rows.to_pylist() == [{"owner": "ann"}, {"owner": "bob"}]

        # A wrong new password with verify is refused; the old one keeps working.
        before = state(p)
        error = rpc_error(
            p.connections.UpdateConnection,
            pb.UpdateConnectionRequest(
                name="vault", verify=True, stages=[stage_config("*", wrong)]
            ),
            timeout=60,
        )
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "authentication failed" in (error.details() or "")
        assert state(p) == before
        p.call(p.connections.TestConnection, pb.TestConnectionRequest(name="vault"))

        listed = p.call(p.connections.ListConnections, pb.ListConnectionsRequest())
        assert listed.connections[0].stages[0].has_password
        for secret in (PASSWORD, wrong):
            assert all(secret.encode() not in r.SerializeToString() for r in p.responses)
            assert secret not in caplog.text
            assert files_containing(tmp_path, secret) == []
        p.call(p.connections.DeleteConnection, pb.DeleteConnectionRequest(name="vault"))
        assert p.secrets.refs() == []
    finally:
        stop_platform(p)
