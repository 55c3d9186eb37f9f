"""`fabric connection|catalog|audit` through a running gateway (ConnectionService,
CatalogService) with the caller's token, `--local` only when asked; SQL from a file or
standard input; the output formats."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.e2e.conftest import make_shop

FABRIC = [sys.executable, "-m", "fabric.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FABRIC, *args],
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """`fabric serve` on an empty FABRIC_HOME; the CLI's environment and a DuckDB file."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")},
        "FABRIC_HOME": str(tmp_path / "home"),
        "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
        "FABRIC_METRICS_PORT": "0",
    }
    database = tmp_path / "shop.duckdb"
    make_shop(database)
    with (
        open(tmp_path / "serve.log", "w") as log,
        subprocess.Popen([*FABRIC, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT) as p,
    ):
        try:
            with grpc.insecure_channel(env["FABRIC_LISTEN"]) as channel:
                grpc.channel_ready_future(channel).result(timeout=30)
            yield env, database
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                assert p.wait(timeout=30) == 0
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)


def test_administration_goes_through_the_gateway_with_the_callers_token(
    gateway: tuple[dict[str, str], Path],
) -> None:
    env, database = gateway
    created = _run(
        env, "connection", "create", "shop", "--kind", "duckdb", "--set", f"path={database}"
    )
    assert created.returncode == 0, created.stderr
    assert "created connection 'shop' (duckdb) for stage '*', tested" in created.stdout
    # The gateway's store has it; offline on FABRIC_HOME sees the same store.
    assert _run(env, "connection", "list").stdout.startswith("shop\tduckdb\tstages: *")
    shown = _run(env, "connection", "show", "shop")
    assert f"*: path={database}" in shown.stdout
    tested = _run(env, "connection", "test", "shop")
    assert tested.returncode == 0 and "works in stage 'development'" in tested.stdout

    discovered = _run(env, "catalog", "discover", "shop")
    assert "main.orders [table] key(id)" in discovered.stdout
    selected = _run(env, "catalog", "select", "shop", "customers", "--columns", "name,country")
    assert selected.returncode == 0, selected.stderr
    assert "selected customers = main.customers key(id): id INTEGER, name VARCHAR" in (
        selected.stdout
    )
    assert _run(env, "catalog", "select", "shop", "orders").returncode == 0
    listed = _run(env, "catalog", "list", "shop")
    assert [line.split(" ")[0] for line in listed.stdout.splitlines()] == ["customers", "orders"]
    refreshed = _run(env, "catalog", "refresh", "shop")
    # a refresh that finds nothing changes nothing
    assert "nothing changed; catalog version 3" in refreshed.stdout, refreshed.stderr

    # An explicit token: the audit records its subject.
    minted = _run(env, "token", "--role", "admin", "--subject", "alice@example.com")
    deleted_other = _run(
        env,
        "connection",
        "create",
        "spare",
        "--kind",
        "duckdb",
        "--set",
        f"path={database}",
        "--token",
        minted.stdout.strip(),
    )
    assert deleted_other.returncode == 0, deleted_other.stderr
    audit = _run(env, "audit", "list")
    rows = [line.split("\t") for line in audit.stdout.splitlines()]
    actors = {(row[2], row[3]): row[1] for row in rows}
    assert actors[("connection.create", "spare")] == "alice@example.com"
    assert actors[("connection.create", "shop")].startswith("local:")  # the CLI's own token
    assert actors[("catalog.select", "shop")].startswith("local:")


def test_a_token_without_the_role_says_which_role_and_where_the_token_came_from(
    gateway: tuple[dict[str, str], Path],
) -> None:
    env, _database = gateway
    app = _run(env, "token", "--role", "app").stdout.strip()
    refused = _run({**env, "FABRIC_TOKEN": app}, "connection", "list")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "needs the 'admin' role" in refused.stderr
    assert "FABRIC_TOKEN" in refused.stderr and "fabric token --role" in refused.stderr
    preview = _run({**env, "FABRIC_TOKEN": app}, "preview", "shop", "orders")
    assert preview.returncode == 2 and "needs the 'developer' role" in preview.stderr


def test_local_works_without_a_gateway_and_is_needed_for_it(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FABRIC_")},
        "FABRIC_HOME": str(tmp_path),
        "FABRIC_LISTEN": f"127.0.0.1:{_free_port()}",
    }
    database = tmp_path / "shop.duckdb"
    make_shop(database)
    args = ("connection", "create", "shop", "--kind", "duckdb", "--set", f"path={database}")
    offline = _run(env, *args)
    assert offline.returncode == 2 and "--local" in offline.stderr
    local = _run(env, *args, "--local")
    assert local.returncode == 0, local.stderr
    audit = _run(env, "audit", "list", "--local")
    assert "\tlocal:" in audit.stdout and "connection.create" in audit.stdout


def test_sql_from_a_file_or_standard_input_and_every_format(
    gateway: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    env, database = gateway
    setup = [
        ("connection", "create", "shop", "--kind", "duckdb", "--set", f"path={database}"),
        ("catalog", "select", "shop", "orders"),
    ]
    for step in setup:
        assert _run(env, *step).returncode == 0
    sql = (
        "SELECT id, amount, placed_at, note IS NULL AS no_note\nFROM orders\n"
        "WHERE id <= 2 ORDER BY id"
    )
    script = tmp_path / "q.sql"
    script.write_text(sql + ";\n")
    from_file = _run(env, "query", "shop", "-f", str(script), "--format", "csv")
    from_stdin = _run(env, "query", "shop", "-", "--format", "csv", stdin=sql)
    from_stdin_flag = _run(env, "query", "shop", "-f", "-", "--format", "csv", stdin=sql)
    expected = [
        "id,amount,placed_at,no_note",
        "1,1.25,2024-01-01T00:01:00+00:00,false",
        "2,2.50,2024-01-01T00:02:00+00:00,false",
    ]
    for done in (from_file, from_stdin, from_stdin_flag):
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == expected
    as_json = _run(env, "query", "shop", "-f", str(script), "--format", "json")
    assert json.loads(as_json.stdout) == [
        {"id": 1, "amount": "1.25", "placed_at": "2024-01-01T00:01:00+00:00", "no_note": False},
        {"id": 2, "amount": "2.50", "placed_at": "2024-01-01T00:02:00+00:00", "no_note": False},
    ]
    lines = _run(env, "query", "shop", "-f", str(script), "--format", "jsonl")
    assert [json.loads(line) for line in lines.stdout.splitlines()] == json.loads(as_json.stdout)
    table = _run(env, "query", "shop", "-f", str(script))
    assert table.stdout.splitlines() == [
        " id | amount | placed_at                 | no_note",
        "----+--------+---------------------------+---------",
        " 1  | 1.25   | 2024-01-01T00:01:00+00:00 | false",
        " 2  | 2.50   | 2024-01-01T00:02:00+00:00 | false",
    ]
    vertical = _run(env, "query", "shop", "-f", str(script), "--format", "vertical")
    assert vertical.stdout.splitlines()[:5] == [
        "-[ RECORD 1 ]---",
        "id        | 1",
        "amount    | 1.25",
        "placed_at | 2024-01-01T00:01:00+00:00",
        "no_note   | false",
    ]
    assert "2 rows" in table.stderr
    both = _run(env, "query", "shop", "SELECT 1", "-f", str(script))
    assert both.returncode == 2 and "not both" in both.stderr
