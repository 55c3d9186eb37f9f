"""Hostile queries through a real gateway to a PostgreSQL of its own, whose statement log
(`log_statement=all`) shows what reached it: resource bombs, NUL bytes and over-long
names are refused before anything is sent; a padded result stops at the byte cap and
PostgreSQL stops with it; names bind as PostgreSQL binds them, and a name PostgreSQL
would bind to a hidden column is refused before anything is sent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fabric.api.auth import local_admin_context
from fabric.api.background import BackgroundGateway
from fabric.app.gateway import assemble_gateway
from fabric.app.parts import catalog_manager
from fabric.catalog.metadata.sqlite import SqliteMetadataStore
from fabric.client import FabricClient
from fabric.config import Settings
from fabric.errors import InvalidArgument
from fabric.model import SettingValue
from fabric.query.engine import QueryEngine
from tests.support.pg_instance import PgInstance, private_postgres

pytestmark = pytest.mark.postgres

PASSWORD = "unused-with-trust-" + secrets.token_hex(4)
KELVIN = "\u212a"


@dataclass
class Site:
    instance: PgInstance
    log: Path
    gateway: BackgroundGateway
    engine: QueryEngine

    def direct(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.instance.url()) as conn:
            return conn.execute(sql.encode()).fetchall()

    def logged(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_logged(self, marker: str, within: float = 20.0) -> str:
        """The log once it shows `marker` (a statement that did run), so every statement
        sent before it is in the log too."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            text = self.logged()
            if marker in text:
                return text
            time.sleep(0.02)  # polling the server's log file with a deadline
        pytest.fail(f"{marker!r} never reached the PostgreSQL log")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("hostile_pg")
    log = home / "postgres.log"
    with private_postgres(
        PASSWORD, settings={"log_statement": "all"}, log=log, auth="trust"
    ) as instance:
        with psycopg.connect(instance.url(), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA lab")
            conn.execute(
                "CREATE TABLE lab.facts (id int PRIMARY KEY, label text);"
                "INSERT INTO lab.facts SELECT i, 'label ' || i FROM generate_series(1, 2000) i"
            )
            conn.execute(
                f'CREATE TABLE lab.readings (id int PRIMARY KEY, k int, "{KELVIN}" int);'
                "INSERT INTO lab.readings VALUES (1, 10, 20)"
            )
        store = SqliteMetadataStore(home / "metadata.sqlite")
        manager = catalog_manager(store)
        settings: dict[str, SettingValue] = {
            "host": "127.0.0.1",
            "port": instance.port,
            "database": "postgres",
            "user": instance.user,
        }
        manager.create_connection("default", "pg", "postgres", {"*": settings})
        manager.select("default", "pg", "development", "lab.facts")
        manager.select("default", "pg", "development", "lab.readings")
        manager.create_connection("default", "pg_k_only", "postgres", {"*": settings})
        manager.select("default", "pg_k_only", "development", "lab.readings", ["id", "k"])
        # facts.label hidden: scope tricks try to reach it through names
        manager.create_connection("default", "pg_hidden", "postgres", {"*": settings})
        manager.select("default", "pg_hidden", "development", "lab.facts", ["id"])
        manager.select("default", "pg_hidden", "development", "lab.readings", ["id", "k"])

        engine = QueryEngine(store, Settings(home=home, metrics_port=0))
        gateway = BackgroundGateway(
            assemble_gateway(engine, context_provider=local_admin_context)
        ).start()
        try:
            yield Site(instance, log, gateway, engine)
        finally:
            gateway.stop()
            store.close()


# (sql, parameters, what the refusal says, whether MARK stands in a value the message
# must never repeat)
HOSTILE = {
    "padded-cast": (
        "SELECT CAST(label AS char(10000000)) AS MARK FROM facts",
        {},
        "must be between 1 and 65535",
        False,
    ),
    "nul-in-a-literal": (
        "SELECT id FROM facts WHERE label = 'MARK\x00'",
        {},
        "NUL character (U+0000) at position 50",
        True,
    ),
    "nul-in-a-quoted-name": (
        'SELECT id AS "MARK\x00" FROM facts',
        {},
        "NUL character (U+0000) at position 28",
        False,
    ),
    "nul-in-a-parameter": (
        "SELECT id FROM facts WHERE label = :v",
        {"v": "MARK\x00"},
        "parameter 'v' contains a NUL",
        True,
    ),
    "uncut-aggregate": (
        "SELECT string_agg(label, 'MARK') AS s FROM facts",
        {},
        "string_agg must be bounded",
        True,
    ),
    "aggregate-over-a-window": (
        "SELECT left(string_agg(label, 'MARK') OVER (ORDER BY id), 10) AS s FROM facts",
        {},
        "not allowed as a window function",
        True,
    ),
    "replace-growing": (
        "SELECT replace(label, 'l', label) AS MARK FROM facts",
        {},
        "as string literals",
        False,
    ),
    "long-alias": (f"SELECT id AS MARK{'x' * 60} FROM facts", {}, "73 bytes long", False),
    "long-window-name": (
        f"SELECT sum(id) OVER MARK{'w' * 60} AS s FROM facts "
        f"WINDOW MARK{'w' * 60} AS (ORDER BY id)",
        {},
        "73 bytes long",
        False,
    ),
    "kelvin-for-k": (f"SELECT {KELVIN} AS MARK FROM readings", {}, "is not selected", False),
}


@pytest.mark.parametrize(("sql", "params", "says", "value"), HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_query_is_refused_and_never_reaches_postgresql(
    site: Site, sql: str, params: dict[str, str], says: str, value: bool
) -> None:
    marker = f"m{secrets.token_hex(6)}"
    # The Kelvin sign is tried where only the ASCII k is selected.
    connection = "pg_k_only" if KELVIN in sql else "pg"
    with FabricClient(site.gateway.address, timeout=30) as client:
        with pytest.raises(InvalidArgument) as refused:
            client.query(
                connection,
                sql.replace("MARK", marker),
                {name: v.replace("MARK", marker) for name, v in params.items()},
            )
        assert says in refused.value.message
        if value:
            assert marker not in refused.value.message
        sentinel = f"s{secrets.token_hex(6)}"
        client.query("pg", f"SELECT id FROM facts WHERE label = '{sentinel}'")
    log = site.wait_logged(sentinel)
    assert marker not in log


def test_a_padded_result_stops_at_the_byte_cap_and_postgresql_stops_with_it(
    site: Site,
) -> None:
    cap = 4 << 20
    marker = f"m{secrets.token_hex(6)}"
    sql = (
        f"SELECT id, CAST(label AS char(65535)) AS padded FROM facts "
        f"WHERE label <> '{marker}' AND id > :after ORDER BY id"
    )
    with FabricClient(site.gateway.address, timeout=60) as client:
        result = client.execute("pg", sql, {"after": 0}, max_bytes=cap)
        unbound = client.execute("pg", sql.replace(":after", "0"), max_bytes=cap)
    for each in (result, unbound):  # the streamed path (parameters) and COPY (none)
        assert each.summary.truncated and 0 < each.table.num_rows < 2000
        assert each.table.nbytes <= cap
        assert each.table.column("id").to_pylist() == list(range(1, each.table.num_rows + 1))
        assert len(each.table.column("padded")[0].as_py()) == 65535
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = site.direct(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            f"AND query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        )[0][0]
        if running == 0:
            break
        time.sleep(0.02)  # polling the server's activity with a deadline
    assert running == 0, "PostgreSQL still runs a query the gateway stopped reading"
    truncated = site.engine.metrics.registry.get_sample_value(
        "fabric_results_truncated_total", {"reason": "bytes"}
    )
    assert truncated is not None and truncated >= 2


def test_names_bind_as_postgresql_binds_them(site: Site) -> None:
    with FabricClient(site.gateway.address, timeout=30) as client:
        for sql in ("SELECT K FROM readings", f"SELECT {KELVIN} FROM readings"):
            fabric = client.query("pg", sql)
            direct = site.direct(sql.replace("readings", "lab.readings"))
            assert [tuple(row.values()) for row in fabric.to_pylist()] == direct, sql
        assert client.query("pg", f"SELECT {KELVIN} FROM readings").column_names == [KELVIN]
        longest = "n" * 63
        assert client.query("pg", f"SELECT id AS {longest} FROM facts LIMIT 1").column_names == [
            longest
        ]


# Where PostgreSQL binds the name `label` to the hidden facts.label (innermost scope first,
# then outward): each is refused, with the message an unknown name gets, and nothing runs.
SCOPE_TRICKS = {
    "subquery-over-an-outer-alias": (
        "SELECT (SELECT max(label) FROM facts WHERE id > 0) AS h "
        "FROM (SELECT k AS label FROM readings) AS s WHERE 'MARK' <> ''"
    ),
    "correlated-exists": (
        "SELECT id FROM facts WHERE EXISTS (SELECT 1 FROM readings WHERE label = 'MARK')"
    ),
    "group-by-an-alias-named-like-it": (
        "SELECT max(id) AS label FROM facts WHERE 'MARK' <> '' GROUP BY label"
    ),
    "order-by-expression-over-it": (
        "SELECT id AS x FROM facts WHERE 'MARK' <> '' ORDER BY length(label)"
    ),
}


@pytest.mark.parametrize("sql", SCOPE_TRICKS.values(), ids=SCOPE_TRICKS.keys())
def test_a_name_postgresql_binds_to_a_hidden_column_never_reaches_it(site: Site, sql: str) -> None:
    marker = f"m{secrets.token_hex(6)}"
    with FabricClient(site.gateway.address, timeout=30) as client:
        with pytest.raises(InvalidArgument) as refused:
            client.query("pg_hidden", sql.replace("MARK", marker))
        assert "is not selected" in refused.value.message
        assert marker not in refused.value.message
        sentinel = f"s{secrets.token_hex(6)}"
        client.query("pg", f"SELECT id FROM facts WHERE label = '{sentinel}'")
    assert marker not in site.wait_logged(sentinel)
    # PostgreSQL itself binds the name to the hidden column (the query runs there)
    site.direct(
        sql.replace("MARK", marker)
        .replace("facts", "lab.facts")
        .replace("readings", "lab.readings")
    )
